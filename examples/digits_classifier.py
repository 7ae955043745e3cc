"""A neural-ODE classifier on scikit-learn's bundled 8x8 digits (no download): vanilla training
against the solver-heuristic regularizers (Pal et al. 2021) and STEER (Ghosh et al. 2020).

    python examples/digits_classifier.py          # about a minute on 2 CPU cores
    python examples/digits_classifier.py --epochs 5

Model: a linear encoder 64 -> 32, an ODE block dh/dt = MLP(h) over [0, 1] (Tsit5), a linear
classifier 32 -> 10. Prints test accuracy, training time and the NFE of predicting the whole
test set (one batched solve), for each way of training.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import pyode
from pyode.nn import NeuralODE


class Dynamics(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, 64), nn.Tanh(), nn.Linear(64, width))

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class Classifier(nn.Module):
    def __init__(self, regularize: bool, steer: float, rtol: float):
        super().__init__()
        self.encode = nn.Linear(64, 32)
        regularization = pyode.Regularization() if regularize else False
        self.ode = NeuralODE(Dynamics(), (0.0, 1.0), regularize=regularization, steer=steer, rtol=rtol, atol=rtol / 10)
        self.classify = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, pyode.Solution]:
        sol = self.ode(torch.tanh(self.encode(x)))
        return self.classify(sol.y[-1]), sol


def load(seed: int):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    split = int(0.8 * len(x))
    return (x[:split], y[:split]), (x[split:], y[split:])


def train(variant: str, args, data) -> dict:
    (x_train, y_train), (x_test, y_test) = data
    torch.manual_seed(args.seed)
    model = Classifier(regularize=variant == "regularized", steer=0.5 if variant == "STEER" else 0.0, rtol=args.rtol)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    start = time.perf_counter()
    for _ in range(args.epochs):
        model.train()
        for batch in torch.randperm(len(x_train)).split(args.batch_size):
            logits, sol = model(x_train[batch])
            loss = nn.functional.cross_entropy(logits, y_train[batch])
            if variant == "regularized":
                loss = loss + args.error_weight * sol.error_estimate + args.stiffness_weight * sol.stiffness_estimate
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    train_time = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        logits, sol = model(x_test)
    accuracy = (logits.argmax(-1) == y_test).float().mean().item()
    return {"accuracy": accuracy, "train_time": train_time, "nfe": sol.stats.nfe}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--rtol", type=float, default=1e-4)
    parser.add_argument("--error-weight", type=float, default=1.0)
    parser.add_argument("--stiffness-weight", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default="digits.png", help="where to save the plot ('' for none)")
    args = parser.parse_args()
    try:
        data = load(args.seed)
    except ImportError:
        print("this example needs scikit-learn for its bundled digits: pip install scikit-learn")
        return
    print(f"digits: {len(data[0][0])} training and {len(data[1][0])} test images; {args.epochs} epochs of Adam")
    print(f"{'training':<12} {'test accuracy':>13} {'train s':>8} {'prediction NFE':>14}")
    results = {}
    for variant in ("vanilla", "regularized", "STEER"):
        r = results[variant] = train(variant, args, data)
        print(f"{variant:<12} {r['accuracy']:>13.3f} {r['train_time']:>8.1f} {r['nfe']:>14}", flush=True)
    if args.plot:
        save_plot(results, args.plot)


def save_plot(results: dict, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed; skipping the plot")
        return
    names = list(results)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3))
    ax1.bar(names, [results[n]["accuracy"] for n in names])
    ax1.set_ylim(0.9, 1.0)
    ax1.set_title("test accuracy")
    ax2.bar(names, [results[n]["nfe"] for n in names])
    ax2.set_title("prediction NFE")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
