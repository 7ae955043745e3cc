"""Gradient methods side by side: pyode's adjoints against each other and torchdiffeq's
`odeint_adjoint` (with and without its seminorm), in one run.

    python benchmarks/adjoints.py                # three problems, about 2 minutes on 2 cores
    python benchmarks/adjoints.py --problems large-params --repeats 5

For each method: forward and backward evaluations of f (counted by the vector field itself, so
the same figure for every library: VJPs, quadrature nodes and recomputed forward solves all
count), pyode's accepted/rejected backward steps, median fwd+bwd time, and the relative error of
the gradient (all parameters and y0) against DirectAdjoint with DP8 at rtol 1e-12.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch
from core import Field  # the same vector field as the core benchmark

import pyode


@dataclass
class Problem:
    name: str
    state: int
    batch: int
    widths: tuple[int, ...]
    saves: int
    t1: float
    description: str


PROBLEMS = {
    "large-params": Problem("large-params", 4, 16, (512, 512), 2, 5.0, "~267k parameters, state 4, batch 16"),
    "time-series": Problem("time-series", 2, 16, (64, 64), 20, 5.0, "small state, 4.5k parameters, 20 save points"),
    "wide-state": Problem("wide-state", 64, 128, (224, 224), 2, 5.0, "state 64, batch 128, 79k parameters"),
}


METHODS = {
    "Direct": pyode.DirectAdjoint(),
    "Backsolve (full)": pyode.BacksolveAdjoint(seminorm=False),
    "Backsolve (seminorm)": pyode.BacksolveAdjoint(seminorm=True),
    "Interpolating (seminorm)": pyode.InterpolatingAdjoint(),
    "Quadrature (GQ)": pyode.QuadratureAdjoint(),
    "Gauss": pyode.GaussAdjoint(),
    "torchdiffeq adjoint": None,
    "torchdiffeq adjoint+seminorm": "seminorm",
}


def run(method: str, field: Field, y0, ts, rtol: float):
    """One forward+backward pass; returns (gradient, forward NFE, backward NFE, stats)."""
    field.zero_grad(set_to_none=True)
    y0 = y0.detach().requires_grad_(True)
    field.calls = 0
    stats = None
    if method.startswith("torchdiffeq"):
        import torchdiffeq

        options = dict(norm="seminorm") if METHODS[method] == "seminorm" else None
        ys = torchdiffeq.odeint_adjoint(
            field, y0, ts, rtol=rtol, atol=rtol / 100, method="dopri5", adjoint_options=options
        )
        sol = None
    else:
        sensealg = METHODS.get(method, pyode.DirectAdjoint())
        solver = pyode.DP8() if method == "reference" else pyode.DP5()
        sol = pyode.solve(
            pyode.ODEProblem(field, y0, (ts[0], ts[-1])),
            solver,
            saveat=ts,
            rtol=rtol,
            atol=rtol / 100,
            sensealg=sensealg,
        )
        ys = sol.y
    forward = field.calls
    ys.pow(2).mean().backward()
    backward = field.calls - forward
    if sol is not None:
        stats = sol.adjoint_stats
    grad = torch.cat([y0.grad.reshape(-1)] + [p.grad.reshape(-1) for p in field.parameters()])
    return grad, forward, backward, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="*", default=list(PROBLEMS), choices=list(PROBLEMS))
    parser.add_argument("--rtol", type=float, default=1e-6)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    try:
        import torchdiffeq  # noqa: F401
    except ImportError:
        for name in [m for m in METHODS if m.startswith("torchdiffeq")]:
            del METHODS[name]

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; float64, dopri5, rtol {args.rtol:g}, atol rtol/100"
    )
    for name in args.problems:
        problem = PROBLEMS[name]
        torch.manual_seed(0)
        field = Field(problem.state, problem.widths, scale=1.5).double()
        y0 = torch.randn(problem.batch, problem.state, dtype=torch.float64)
        ts = torch.linspace(0.0, problem.t1, problem.saves, dtype=torch.float64)
        params = sum(p.numel() for p in field.parameters())
        reference, *_ = run("reference", field, y0, ts, 1e-12)
        print(f"\n{name}: {problem.description} ({params} parameters)")
        header = f"{'method':<30} {'fwd NFE':>7} {'bwd NFE':>7} {'bwd acc/rej':>11} {'quad':>5} {'fwd+bwd ms':>10} {'grad error':>10}"
        print(header)
        print("-" * len(header))
        base_bwd = None
        for method in METHODS:
            grad, fwd, bwd, stats = run(method, field, y0, ts, args.rtol)
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                run(method, field, y0, ts, args.rtol)
                times.append(time.perf_counter() - start)
            error = ((grad - reference).abs().max() / reference.abs().max()).item()
            steps = f"{stats.naccept}/{stats.nreject}" if stats is not None else "-"
            quad = str(stats.nquad) if stats is not None and stats.nquad else "-"
            if method == "Backsolve (full)":
                base_bwd = bwd
            note = (
                f"  ({100 * (1 - bwd / base_bwd):+.0f}% bwd NFE vs full)"
                if method == "Backsolve (seminorm)" and base_bwd
                else ""
            )
            print(
                f"{method:<30} {fwd:>7} {bwd:>7} {steps:>11} {quad:>5} {statistics.median(times) * 1e3:>10.1f} {error:>10.1e}{note}",
                flush=True,
            )


if __name__ == "__main__":
    main()
