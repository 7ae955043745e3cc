"""Forward and forward+backward time of neural ODEs: pyode against torchdiffeq and torchode,
measured in one run and reported as ratios, with NFE as the noise-free figure.

    python benchmarks/core.py                  # all problems, ~2 minutes on 2 cores
    python benchmarks/core.py --problems small --repeats 20

Every library solves the same problem with Dormand–Prince 5(4) in float64 at the same rtol
(atol = rtol / 100), saving at the same times; gradients flow by autograd through the solver
(pyode's DirectAdjoint, torchdiffeq's odeint, torchode's AutoDiffAdjoint). Times are medians
over interleaved repeats; "x pyode" is a library's time divided by pyode's.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

import pyode


@dataclass
class Problem:
    name: str
    state: int
    batch: int
    widths: tuple[int, ...]
    saves: int = 20
    t1: float = 10.0


PROBLEMS = {
    "small": Problem("small", state=2, batch=16, widths=(64, 64)),
    "wide-params": Problem("wide-params", state=4, batch=16, widths=(512, 512)),
    "wide-state": Problem("wide-state", state=64, batch=128, widths=(224, 224)),
}


class Field(nn.Module):
    """A tanh MLP vector field that counts its calls; `scale` multiplies the initial parameters
    (above 1: livelier dynamics, like a trained model)."""

    def __init__(self, state: int, widths: tuple[int, ...], scale: float = 1.0):
        super().__init__()
        sizes = (state, *widths, state)
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)
        if scale != 1.0:
            with torch.no_grad():
                for p in self.net.parameters():
                    p.mul_(scale)
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        return self.net(y)


def runner(
    lib: str, field: Field, y0: torch.Tensor, ts: torch.Tensor, rtol: float, backward: bool
) -> Callable[[], int]:
    """A closure that runs one solve (and backward) and returns the number of f evaluations."""
    atol = rtol / 100

    if lib == "pyode":
        solver = pyode.DP5()

        def solve():
            return pyode.solve(pyode.ODEProblem(field, y0, (ts[0], ts[-1])), solver, saveat=ts, rtol=rtol, atol=atol).y

    elif lib == "torchdiffeq":
        import torchdiffeq

        def solve():
            return torchdiffeq.odeint(field, y0, ts, rtol=rtol, atol=atol, method="dopri5")

    elif lib == "torchode":
        import torchode as to

        term = to.ODETerm(field)
        method = to.Dopri5(term=term)
        controller = to.IntegralController(atol=atol, rtol=rtol, term=term)
        adjoint = to.AutoDiffAdjoint(method, controller)
        t_eval = ts.expand(y0.shape[0], -1)

        def solve():
            return adjoint.solve(to.InitialValueProblem(y0=y0, t_eval=t_eval)).ys

    else:
        raise ValueError(lib)

    def run() -> int:
        field.calls = 0
        if backward:
            field.zero_grad(set_to_none=True)
            ys = solve()
            ys.pow(2).mean().backward()
        else:
            with torch.no_grad():
                solve()
        return field.calls

    return run


def available(lib: str) -> bool:
    try:
        __import__(lib)
    except ImportError:
        return False
    return True


def measure(
    problem: Problem, rtol: float, backward: bool, libs: list[str], repeats: int
) -> dict[str, tuple[float, int]]:
    torch.manual_seed(0)
    field = Field(problem.state, problem.widths).double()
    y0 = torch.randn(problem.batch, problem.state, dtype=torch.float64)
    ts = torch.linspace(0.0, problem.t1, problem.saves, dtype=torch.float64)
    runs = {lib: runner(lib, field, y0, ts, rtol, backward) for lib in libs}
    times: dict[str, list[float]] = {lib: [] for lib in libs}
    nfe: dict[str, int] = {}
    for lib, run in runs.items():  # warm-up
        nfe[lib] = run()
    for _ in range(repeats):
        for lib, run in runs.items():
            start = time.perf_counter()
            run()
            times[lib].append(time.perf_counter() - start)
    return {lib: (statistics.median(times[lib]), nfe[lib]) for lib in libs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="*", default=list(PROBLEMS), choices=list(PROBLEMS))
    parser.add_argument("--rtols", nargs="*", type=float, default=[1e-3, 1e-6])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    libs = ["pyode"] + [lib for lib in ("torchdiffeq", "torchode") if available(lib)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; float64, dopri5; median of {args.repeats}")
    header = f"{'problem':<12} {'params':>7} {'rtol':>6} {'pass':<8}"
    for lib in libs:
        header += f" | {lib + ' ms':>15} {'NFE':>5}" + (f" {'x pyode':>7}" if lib != "pyode" else "")
    print(header)
    print("-" * len(header))
    for name in args.problems:
        problem = PROBLEMS[name]
        params = sum(p.numel() for p in Field(problem.state, problem.widths).parameters())
        for rtol in args.rtols:
            for backward in (False, True):
                result = measure(problem, rtol, backward, libs, args.repeats)
                base = result["pyode"][0]
                row = f"{name:<12} {params:>7} {rtol:>6.0e} {'fwd+bwd' if backward else 'fwd':<8}"
                for lib in libs:
                    ms, nfe = result[lib]
                    row += f" | {ms * 1e3:>15.2f} {nfe:>5}" + (f" {ms / base:>7.2f}" if lib != "pyode" else "")
                print(row, flush=True)


if __name__ == "__main__":
    main()
