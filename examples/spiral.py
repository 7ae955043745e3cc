"""Fit a neural ODE to the cubic spiral dz/dt = A z³, A = [[-0.1, 2], [-2, -0.1]].

The classic neural-ODE demo: a small MLP vector field learns the dynamics from short windows of
one trajectory. Prints loss, function evaluations (NFE) and time per epoch, then the fit of the
whole trajectory; saves a plot if matplotlib is installed.

    python examples/spiral.py            # about 20 s of training on 2 CPU cores
    python examples/spiral.py --epochs 5 --plot ""    # a quick look, no plot
    python examples/spiral.py --compare  # vanilla vs R_E vs R_E + R_S (Pal et al. 2021) vs local R_E
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import pyode

A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]])


def spiral(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return (z**3) @ A.to(z.dtype)


class VectorField(nn.Module):
    """dz/dt = MLP(z³): the cube is the only hint of the true structure."""

    def __init__(self, width: int = 50):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, width), nn.Tanh(), nn.Linear(width, 2))
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.1)
                nn.init.zeros_(m.bias)

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(z**3)


def fit(args, truth: torch.Tensor, ts: torch.Tensor, regularize: str, verbose: bool, sensealg: str = "") -> dict:
    """Train one model; returns its figures. `regularize` is "", "error", "error+stiffness" or
    "local" (LocalRegularization's R_E); `sensealg` names a pyode gradient method ("" for the
    default, DirectAdjoint)."""
    torch.manual_seed(args.seed)
    field = VectorField()
    optimizer = torch.optim.RMSprop(field.parameters(), lr=1e-3)
    solver = pyode.Tsit5()
    window = ts[: args.batch_time]
    regularization = None
    sensealg = getattr(pyode, sensealg)() if sensealg else None
    if regularize == "local":
        regularization = pyode.LocalRegularization(stiffness=False)
    elif regularize:
        regularization = pyode.Regularization(stiffness="sum" if "stiffness" in regularize else None)
    if verbose:
        print(f"{'epoch':>5} {'loss':>9} {'NFE/solve':>9} {'time (s)':>8}")
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        epoch_start, losses, nfe = time.perf_counter(), [], 0
        for _ in range(args.iters_per_epoch):
            starts = torch.randint(0, len(ts) - args.batch_time, (args.batch_size,))
            batch_z0 = truth[starts]  # (batch, 2)
            batch_truth = torch.stack([truth[starts + i] for i in range(args.batch_time)])  # (time, batch, 2)
            prob = pyode.ODEProblem(field, batch_z0, (window[0], window[-1]))
            sol = pyode.solve(
                prob,
                solver,
                saveat=window,
                rtol=args.rtol,
                atol=args.atol,
                regularize=regularization or False,
                sensealg=sensealg,
            )
            loss = (sol.y - batch_truth).abs().mean()
            total = loss
            if sol.error_estimate is not None:
                weight = args.local_weight if regularize == "local" else args.error_weight
                total = total + weight * sol.error_estimate
            if sol.stiffness_estimate is not None:
                total = total + args.stiffness_weight * sol.stiffness_estimate
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            losses.append(loss.item())
            nfe += sol.stats.nfe
        if verbose:
            print(
                f"{epoch:>5} {sum(losses) / len(losses):>9.4f} {nfe / args.iters_per_epoch:>9.1f} "
                f"{time.perf_counter() - epoch_start:>8.2f}"
            )
    train_time = time.perf_counter() - start
    with torch.no_grad():
        z0 = truth[:1]
        fit = pyode.solve(pyode.ODEProblem(field, z0, (0.0, 25.0)), solver, saveat=ts, rtol=args.rtol, atol=args.atol)
    return {
        "field": field,
        "fit": fit,
        "window_loss": sum(losses) / len(losses),
        "full_loss": (fit.y[:, 0] - truth).abs().mean().item(),
        "train_time": train_time,
        "nfe": fit.stats.nfe,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--iters-per-epoch", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--batch-time", type=int, default=10, help="save points per training window")
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--atol", type=float, default=1e-6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--regularize", choices=["", "error", "error+stiffness", "local"], default="")
    parser.add_argument("--sensealg", default="", help="a pyode gradient method, e.g. GaussAdjoint (default Direct)")
    parser.add_argument("--local-weight", type=float, default=100.0, help="weight of the local R_E in the loss")
    parser.add_argument("--error-weight", type=float, default=1.0, help="weight of R_E in the loss")
    parser.add_argument("--stiffness-weight", type=float, default=0.001, help="weight of R_S in the loss")
    parser.add_argument("--compare", action="store_true", help="train vanilla, R_E and R_E + R_S models and tabulate")
    parser.add_argument("--plot", default="spiral.png", help="where to save the plot ('' for none)")
    args = parser.parse_args()

    ts = torch.linspace(0.0, 25.0, 1000)
    z0 = torch.tensor([[2.0, 0.0]])
    truth = pyode.solve(pyode.ODEProblem(spiral, z0, (0.0, 25.0)), pyode.Tsit5(), saveat=ts, rtol=1e-7, atol=1e-9).y[
        :, 0
    ]
    print(
        f"pyode {pyode.__version__}: fitting the cubic spiral with {sum(p.numel() for p in VectorField().parameters())} parameters"
    )

    if args.compare:
        print(f"{'model':<18} {'window loss':>11} {'trajectory error':>16} {'train s':>8} {'prediction NFE':>14}")
        variants = (
            ("", "", "vanilla"),
            ("error", "", "R_E"),
            ("error+stiffness", "", "R_E + R_S"),
            ("", "GaussAdjoint", "vanilla, Gauss"),
            ("local", "GaussAdjoint", "local R_E, Gauss"),
        )
        for variant, sensealg, name in variants:
            r = fit(args, truth, ts, variant, verbose=False, sensealg=sensealg)
            print(
                f"{name:<18} {r['window_loss']:>11.4f} {r['full_loss']:>16.4f} {r['train_time']:>8.1f} {r['nfe']:>14}",
                flush=True,
            )
        return

    r = fit(args, truth, ts, args.regularize, verbose=True, sensealg=args.sensealg)
    fit_sol, full_loss = r["fit"], r["full_loss"]
    print(
        f"training: {r['train_time']:.1f} s; whole trajectory: mean |error| {full_loss:.4f}, prediction NFE {r['nfe']}"
    )

    if args.plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib is not installed; skipping the plot (pip install matplotlib)")
            return
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        for k, name in enumerate(("x", "y")):
            ax1.plot(ts, truth[:, k], label=f"{name} true")
            ax1.plot(ts, fit_sol.y[:, 0, k], "--", label=f"{name} learned")
        ax1.set_xlabel("t")
        ax1.legend()
        ax2.plot(truth[:, 0], truth[:, 1], label="true")
        ax2.plot(fit_sol.y[:, 0, 0], fit_sol.y[:, 0, 1], "--", label="learned")
        ax2.set_aspect("equal")
        ax2.legend()
        fig.suptitle(f"cubic spiral: mean |error| {full_loss:.3f}")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
        print(f"saved {args.plot}")


if __name__ == "__main__":
    main()
