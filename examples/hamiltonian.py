"""A Hamiltonian neural network (Greydanus et al. 2019) learns the pendulum H = p²/2 + (1 - cos q)
from trajectories, trained with the backsolve adjoint: the seminorm against the full norm
(Kidger, Chen & Lyons 2021 report 43% fewer backward evaluations on their Hamiltonian task).

    python examples/hamiltonian.py           # about a minute on 2 CPU cores

The vector field is (∂H/∂p, -∂H/∂q) of a learned H, so evaluating it takes a gradient and its
vector-Jacobian product a second derivative. Prints the test loss and the backward-pass
evaluations of each, from the same initialisation and data, for three backward norms: the
seminorm; pyode's full norm (the largest RMS over [z], [a], [a_θ]); and torchdiffeq's full norm,
the papers' baseline, in which every parameter tensor is a group of its own.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import pyode


def pendulum(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    q, p = y[..., 0], y[..., 1]
    return torch.stack((p, -torch.sin(q)), dim=-1)


class HamiltonianField(nn.Module):
    def __init__(self, width: int = 64):
        super().__init__()
        self.H = nn.Sequential(nn.Linear(2, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        differentiate = torch.is_grad_enabled()  # build the graph of dH only when it is needed
        with torch.enable_grad():
            y_ = y if y.requires_grad else y.detach().requires_grad_(True)
            (dH,) = torch.autograd.grad(self.H(y_).sum(), y_, create_graph=differentiate)
        return torch.stack((dH[..., 1], -dH[..., 0]), dim=-1)


def trajectories(n: int, ts: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    y0 = torch.stack(
        (torch.rand(n, generator=generator) * 3 - 1.5, torch.rand(n, generator=generator) * 2 - 1), dim=-1
    ).double()
    ys = pyode.solve(
        pyode.ODEProblem(pendulum, y0, (0.0, float(ts[-1]))), pyode.DP8(), saveat=ts, rtol=1e-10, atol=1e-12
    ).y
    return y0, ys


def per_tensor_norm(sizes: list[int]):
    """torchdiffeq's full norm on the adjoint state [z, a, a_θ]: the largest RMS over z, a and
    each parameter tensor's block of a_θ."""

    def norm(state):
        z, a, a_theta = state
        return torch.stack(
            [pyode.rms_norm(z), pyode.rms_norm(a)] + [pyode.rms_norm(b) for b in a_theta.split(sizes)]
        ).max()

    return norm


def train(variant: str, args, data) -> dict:
    (y0, ys), (y0_test, ys_test), ts = data
    torch.manual_seed(args.seed)
    field = HamiltonianField().double()
    optimizer = torch.optim.Adam(field.parameters(), lr=args.lr)
    if variant == "per-tensor":
        sensealg = pyode.BacksolveAdjoint(internalnorm=per_tensor_norm([p.numel() for p in field.parameters()]))
    else:
        sensealg = pyode.BacksolveAdjoint(seminorm=variant == "seminorm")
    backward_nfe = backward_steps = 0
    start = time.perf_counter()
    for _ in range(args.iters):
        batch = torch.randint(0, len(y0), (args.batch_size,))
        prob = pyode.ODEProblem(field, y0[batch], (0.0, float(ts[-1])))
        sol = pyode.solve(prob, pyode.DP5(), saveat=ts, rtol=args.rtol, atol=args.rtol / 100, sensealg=sensealg)
        loss = (sol.y - ys[:, batch]).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        backward_nfe += sol.adjoint_stats.nfe
        backward_steps += sol.adjoint_stats.naccept + sol.adjoint_stats.nreject
    train_time = time.perf_counter() - start
    with torch.no_grad():
        test = pyode.solve(
            pyode.ODEProblem(field, y0_test, (0.0, float(ts[-1]))), pyode.DP5(), saveat=ts, rtol=1e-8, atol=1e-10
        )
    return {
        "test_loss": (test.y - ys_test).pow(2).mean().item(),
        "backward_nfe": backward_nfe,
        "backward_steps": backward_steps,
        "train_time": train_time,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--rtol", type=float, default=1e-6)
    parser.add_argument(
        "--saves", type=int, default=1, help="save points in (0, 3]; few let the error test set the steps"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default="hamiltonian.png", help="where to save the plot ('' for none)")
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(args.seed)
    ts = torch.linspace(0.0, 3.0, args.saves + 1, dtype=torch.float64)[1:]
    data = (trajectories(256, ts, generator), trajectories(64, ts, generator), ts)
    n_params = sum(p.numel() for p in HamiltonianField().parameters())
    print(
        f"pendulum HNN ({n_params} parameters), {args.iters} iterations of batch {args.batch_size}, BacksolveAdjoint, rtol {args.rtol:g}"
    )
    print(f"{'backward norm':<28} {'test loss':>10} {'backward NFE':>12} {'backward steps':>14} {'train s':>8}")
    results = {}
    names = {
        "per-tensor": "full, per tensor (torchdiffeq)",
        "full": "full, [z] [a] [a_θ] (pyode)",
        "seminorm": "seminorm",
    }
    for variant in ("per-tensor", "full", "seminorm"):
        r = results[variant] = train(variant, args, data)
        print(
            f"{names[variant]:<28} {r['test_loss']:>10.2e} {r['backward_nfe']:>12} {r['backward_steps']:>14} {r['train_time']:>8.1f}",
            flush=True,
        )
    for baseline in ("per-tensor", "full"):
        saved = 1 - results["seminorm"]["backward_nfe"] / results[baseline]["backward_nfe"]
        print(f"the seminorm saved {100 * saved:.0f}% of the backward evaluations against {names[baseline]}")
    if args.plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib is not installed; skipping the plot")
            return
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.barh([names[v] for v in results], [r["backward_nfe"] for r in results.values()])
        ax.set_xlabel("backward evaluations of f, summed over training")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
        print(f"saved {args.plot}")


if __name__ == "__main__":
    main()
