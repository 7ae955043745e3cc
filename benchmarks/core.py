"""Forward and forward+backward time of neural ODEs: pyode (eager, compiled, per-sample step
sizes) against torchdiffeq, torchode and diffrax, measured in one run and reported as ratios to
torchdiffeq, with NFE as the noise-free figure.

    python benchmarks/core.py                  # all problems, ~4 minutes on 2 cores
    python benchmarks/core.py --problems small --repeats 20

Every library solves the same problem with Dormand–Prince 5(4) in float64 at the same rtol
(atol = rtol / 100), saving at the same times; gradients flow by autograd through the solver
(pyode's DirectAdjoint, torchdiffeq's odeint, torchode's AutoDiffAdjoint, diffrax's default
RecursiveCheckpointAdjoint under jax.jit). Columns:

- `pyode`: the eager solve; `compiled`: `solve(..., compile=True)` after its warm-up (the cold
  compile time is printed below the table); `per-sample`: `solve(..., batch_axis=0)`, every
  element with its own step size (NFE: batched evaluations of f).
- `torchode`: per-sample step sizes too (its only mode); `diffrax`: jitted, when installed (the
  `bench` extra; NFE estimated as 6 per attempted step + 2).

Times are medians over interleaved repeats; "/tdq" is a column's time divided by torchdiffeq's.
"""

from __future__ import annotations

import argparse
import inspect
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

PER_SAMPLE = "batch_axis" in inspect.signature(pyode.solve).parameters


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


class Uncounted(nn.Module):
    """The same network without the call counter: a compiled f must not mutate Python state
    (the count would be a guard on its value, a recompilation per step); pyode counts itself."""

    def __init__(self, field: Field):
        super().__init__()
        self.net = field.net

    def forward(self, t, y):
        return self.net(y)


LIBS = ("torchdiffeq", "pyode", "compiled", "per-sample", "torchode", "diffrax")


def runner(
    lib: str, field: Field, y0: torch.Tensor, ts: torch.Tensor, rtol: float, backward: bool
) -> Callable[[], int]:
    """A closure that runs one solve (and backward) and returns the number of f evaluations."""
    atol = rtol / 100
    if lib == "diffrax":
        return _diffrax_runner(field, y0, ts, rtol, backward)

    if lib in ("pyode", "compiled", "per-sample"):
        solver = pyode.DP5()
        kwargs = {"compile": True} if lib == "compiled" else {"batch_axis": 0} if lib == "per-sample" else {}
        f = Uncounted(field)

        def solve():
            sol = pyode.solve(
                pyode.ODEProblem(f, y0, (ts[0], ts[-1])), solver, saveat=ts, rtol=rtol, atol=atol, **kwargs
            )
            field.calls = sol.stats.nfe
            return sol.y

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


def _diffrax_runner(field: Field, y0: torch.Tensor, ts: torch.Tensor, rtol: float, backward: bool) -> Callable[[], int]:
    """The same network in jax (the torch weights copied), solved by diffrax's Dopri5 under
    jax.jit with its PID controller in integral mode (torchdiffeq's and pyode's I/PI family)."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import diffrax
    import jax.numpy as jnp

    layers = [
        (jnp.asarray(m.weight.detach().numpy()), jnp.asarray(m.bias.detach().numpy()))
        for m in field.net
        if isinstance(m, nn.Linear)
    ]

    def vector_field(t, y, params):
        for i, (w, b) in enumerate(params):
            y = y @ w.T + b
            if i < len(params) - 1:
                y = jnp.tanh(y)
        return y

    term = diffrax.ODETerm(vector_field)
    saveat = diffrax.SaveAt(ts=jnp.asarray(ts.numpy()))
    controller = diffrax.PIDController(rtol=rtol, atol=rtol / 100)
    x0 = jnp.asarray(y0.numpy())
    t0, t1 = float(ts[0]), float(ts[-1])

    def solve(params):
        sol = diffrax.diffeqsolve(
            term,
            diffrax.Dopri5(),
            t0,
            t1,
            None,
            x0,
            args=params,
            saveat=saveat,
            stepsize_controller=controller,
            max_steps=100_000,
        )
        return sol.ys, sol.stats["num_steps"]

    if backward:

        def loss(params):
            ys, steps = solve(params)
            return jnp.mean(ys**2), steps

        call = jax.jit(jax.value_and_grad(loss, has_aux=True))
    else:
        call = jax.jit(solve)

    def run() -> int:
        out = call(layers)
        jax.block_until_ready(out)
        steps = out[0][1] if backward else out[1]
        return 6 * int(steps) + 2

    return run


def available(lib: str) -> bool:
    if lib in ("pyode", "compiled"):
        return True
    if lib == "per-sample":
        return PER_SAMPLE
    try:
        __import__(lib)
    except ImportError:
        return False
    return True


def measure(
    problem: Problem, rtol: float, backward: bool, libs: list[str], repeats: int
) -> tuple[dict[str, tuple[float, int]], float | None]:
    """({lib: (median seconds, NFE)}, the compiled variant's first call in seconds)."""
    torch.manual_seed(0)
    field = Field(problem.state, problem.widths).double()
    y0 = torch.randn(problem.batch, problem.state, dtype=torch.float64)
    ts = torch.linspace(0.0, problem.t1, problem.saves, dtype=torch.float64)
    runs = {lib: runner(lib, field, y0, ts, rtol, backward) for lib in libs}
    times: dict[str, list[float]] = {lib: [] for lib in libs}
    nfe: dict[str, int] = {}
    cold = None
    for lib, run in runs.items():  # warm-up (the compiled step's compilation, jax's jit)
        start = time.perf_counter()
        nfe[lib] = run()
        if lib == "compiled":
            cold = time.perf_counter() - start
        run()
    for _ in range(repeats):
        for lib, run in runs.items():
            start = time.perf_counter()
            run()
            times[lib].append(time.perf_counter() - start)
    return {lib: (statistics.median(times[lib]), nfe[lib]) for lib in libs}, cold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="*", default=list(PROBLEMS), choices=list(PROBLEMS))
    parser.add_argument("--rtols", nargs="*", type=float, default=[1e-3, 1e-6])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--libs", nargs="*", default=list(LIBS), choices=list(LIBS))
    args = parser.parse_args()

    libs = [lib for lib in args.libs if available(lib)]
    if "torchdiffeq" not in libs:
        raise SystemExit("the ratios are to torchdiffeq: pip install torchdiffeq (the bench extra)")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; float64, dopri5; median of {args.repeats}")
    header = f"{'problem':<12} {'params':>7} {'rtol':>6} {'pass':<8}"
    for lib in libs:
        header += f" | {lib + ' ms':>14} {'NFE':>4}" + (f" {'/tdq':>5}" if lib != "torchdiffeq" else "")
    print(header)
    print("-" * len(header))
    colds = []
    for name in args.problems:
        problem = PROBLEMS[name]
        params = sum(p.numel() for p in Field(problem.state, problem.widths).parameters())
        for rtol in args.rtols:
            for backward in (False, True):
                result, cold = measure(problem, rtol, backward, libs, args.repeats)
                base = result["torchdiffeq"][0]
                row = f"{name:<12} {params:>7} {rtol:>6.0e} {'fwd+bwd' if backward else 'fwd':<8}"
                for lib in libs:
                    ms, nfe = result[lib]
                    row += f" | {ms * 1e3:>14.2f} {nfe:>4}" + (f" {ms / base:>5.2f}" if lib != "torchdiffeq" else "")
                print(row, flush=True)
                if cold is not None:
                    colds.append(f"{name} rtol {rtol:.0e} {'fwd+bwd' if backward else 'fwd'}: {cold:.1f} s")
    if colds:
        print("\ncompiled: first call (compilation, or torch's on-disk cache from an earlier run):")
        print("\n".join("  " + c for c in colds))


if __name__ == "__main__":
    main()
