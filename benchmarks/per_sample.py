"""Per-sample step sizes on heterogeneous batches: pyode's joint solve, pyode's per-sample solve
(`batch_axis=0`) and torchode (per-sample by design), measured in one run.

    python benchmarks/per_sample.py                 # under a minute on 2 cores
    python benchmarks/per_sample.py --repeats 3 --problems van_der_pol

Two batches of 256 elements whose stiffness spans two decades: Van der Pol oscillators with mu
log-spaced over [0.1, 10], and linear spirals y' = s·A·y with speeds s log-spaced over [0.1, 10].
Every library uses Dormand–Prince 5(4) in float64 with the same rtol (atol = rtol / 100), 20
shared save times, and gradients by autograd through the solver (pyode's DirectAdjoint,
torchode's AutoDiffAdjoint with its IntegralController).

Columns: `calls` is the number of (batched) evaluations of f, what the wall time pays for;
`evals/el` the evaluations per element while it was still integrating, averaged over the batch
(the joint solve evaluates every element on every call; torchode's per element is 2 + 6 per
attempted step); `err` the largest error of any element at any save time against a DP8 solve
at rtol 1e-12; `ms` the median wall time over interleaved repeats, and `x ps` a time divided by
pyode per-sample's in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

import pyode

BATCH = 256
SAVES = 20
T1 = 10.0


def van_der_pol(batch: int) -> tuple[Callable, torch.Tensor, torch.Tensor]:
    mu = torch.logspace(-1, 1, batch, dtype=torch.float64).requires_grad_()

    def f(t, y):
        x, v = y[..., 0], y[..., 1]
        return torch.stack((v, mu * (1 - x * x) * v - x), dim=-1)

    return f, torch.tensor([2.0, 0.0], dtype=torch.float64).repeat(batch, 1), mu


def spiral(batch: int) -> tuple[Callable, torch.Tensor, torch.Tensor]:
    speed = torch.logspace(-1, 1, batch, dtype=torch.float64).requires_grad_()
    a = torch.tensor([[-0.1, -1.0], [1.0, -0.1]], dtype=torch.float64)

    def f(t, y):
        return speed.unsqueeze(-1) * (y @ a.T)

    return f, torch.tensor([2.0, 0.0], dtype=torch.float64).repeat(batch, 1), speed


PROBLEMS = {"van_der_pol": van_der_pol, "spiral": spiral}
LIBS = ("joint", "per-sample", "torchode")


def reference(problem: str) -> torch.Tensor:
    """The solution at the save times (T, B, 2), to about 1e-10."""
    f, y0, _ = PROBLEMS[problem](BATCH)
    ts = torch.linspace(0.0, T1, SAVES, dtype=torch.float64)
    with torch.no_grad():
        return pyode.solve(
            pyode.ODEProblem(f, y0, (0.0, T1)), pyode.DP8(), saveat=ts, rtol=1e-12, atol=1e-14, batch_axis=0
        ).y


def runner(lib: str, problem: str, rtol: float, backward: bool) -> Callable[[], tuple[int, float, torch.Tensor]]:
    """A closure running one solve (and backward) that returns (batched calls, evaluations per
    element averaged over the batch, the solution (T, B, 2))."""
    f, y0, param = PROBLEMS[problem](BATCH)
    y0 = y0.requires_grad_(backward)
    ts = torch.linspace(0.0, T1, SAVES, dtype=torch.float64)
    atol = rtol / 100
    calls = 0

    def counted(t, y):
        nonlocal calls
        calls += 1
        return f(t, y)

    if lib == "torchode":
        import torchode as to

        term = to.ODETerm(counted)
        adjoint = to.AutoDiffAdjoint(to.Dopri5(term=term), to.IntegralController(atol=atol, rtol=rtol, term=term))
        t_eval = ts.expand(BATCH, -1)

        def solve():
            sol = adjoint.solve(to.InitialValueProblem(y0=y0, t_eval=t_eval))
            return sol.ys.transpose(0, 1), float((2 + 6 * sol.stats["n_steps"]).double().mean())

    else:
        prob = pyode.ODEProblem(counted, y0, (0.0, T1))
        axis = 0 if lib == "per-sample" else None

        def solve():
            sol = pyode.solve(prob, pyode.DP5(), saveat=ts, rtol=rtol, atol=atol, batch_axis=axis)
            own = sol.stats.per_element.nfe.double().mean() if axis is not None else sol.stats.nfe
            return sol.y, float(own)

    def run() -> tuple[int, float, torch.Tensor]:
        nonlocal calls
        calls = 0
        if backward:
            param.grad = y0.grad = None
            ys, own = solve()
            ys.pow(2).mean().backward()
        else:
            with torch.no_grad():
                ys, own = solve()
        return calls, own, ys.detach()

    return run


def measure(
    problem: str, rtol: float, backward: bool, repeats: int, exact: torch.Tensor
) -> dict[str, tuple[float, int, float, float]]:
    runs = {lib: runner(lib, problem, rtol, backward) for lib in LIBS}
    counts = {}
    for lib, run in runs.items():  # warm-up, the counts and the error
        calls, own, ys = run()
        counts[lib] = (calls, own, float((ys - exact).abs().max()))
    times: dict[str, list[float]] = {lib: [] for lib in LIBS}
    for _ in range(repeats):
        for lib, run in runs.items():  # interleaved: drift in the machine's speed hits all alike
            start = time.perf_counter()
            run()
            times[lib].append(time.perf_counter() - start)
    return {lib: (statistics.median(times[lib]), *counts[lib]) for lib in LIBS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="*", default=list(PROBLEMS), choices=list(PROBLEMS))
    parser.add_argument("--rtols", nargs="*", type=float, default=[1e-3, 1e-6])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; float64, DP5/dopri5, batch {BATCH}, "
        f"{SAVES} save times; median of {args.repeats}"
    )
    header = f"{'problem':<12} {'rtol':>6} {'pass':<8}"
    for lib in LIBS:
        header += f" | {lib + ' ms':>15} {'calls':>5} {'evals/el':>8} {'err':>7}"
        header += f" {'x ps':>5}" if lib != "per-sample" else ""
    print(header)
    print("-" * len(header))
    for problem in args.problems:
        exact = reference(problem)
        for rtol in args.rtols:
            for backward in (False, True):
                result = measure(problem, rtol, backward, args.repeats, exact)
                base = result["per-sample"][0]
                row = f"{problem:<12} {rtol:>6.0e} {'fwd+bwd' if backward else 'fwd':<8}"
                for lib in LIBS:
                    ms, calls, own, err = result[lib]
                    row += f" | {ms * 1e3:>15.1f} {calls:>5} {own:>8.1f} {err:>7.1e}"
                    row += f" {ms / base:>5.2f}" if lib != "per-sample" else ""
                print(row, flush=True)


if __name__ == "__main__":
    main()
