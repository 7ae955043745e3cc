"""AutoAdjoint against every method it chooses from: is its choice the fastest method whose
memory fits the budget?

    python benchmarks/auto_adjoint.py              # core.py's three problems, ~2 minutes on 2 cores
    python benchmarks/auto_adjoint.py --sweep      # GaussAdjoint vs InterpolatingAdjoint by params/state

The problems are benchmarks/core.py's (state × batch, MLP widths, 20 save points over [0, 10]),
with the field's initial parameters scaled ×1.5 as in benchmarks/adjoints.py so the dynamics are
not trivial; DP5 in float64 at rtol 1e-6, atol 1e-8. For each method: median fwd+bwd time over
interleaved repeats, and the memory held between forward and backward: the bytes of the tensors
autograd saved (each storage once, counted with `saved_tensors_hooks`), or on CUDA the peak of
`torch.cuda.max_memory_allocated` above the start. Then AutoAdjoint under several budgets: what it
chose, its time (the probe included), and the fastest method that fits that budget.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Callable

import torch
from core import PROBLEMS, Field, Problem  # the same problems and vector field as the core benchmark

import pyode
from pyode.sensitivity.auto import SavedBytes

# The methods AutoAdjoint chooses from, plus GQ for reference (never chosen: its accuracy follows
# its node count, not the tolerance).
METHODS = {
    "Direct": pyode.DirectAdjoint(),
    "Interpolating": pyode.InterpolatingAdjoint(seminorm=True),
    "Gauss": pyode.GaussAdjoint(),
    "Quadrature (GQ)": pyode.QuadratureAdjoint(),
}
CHOSEN_NAMES = {
    pyode.DirectAdjoint: "Direct",
    pyode.InterpolatingAdjoint: "Interpolating",
    pyode.GaussAdjoint: "Gauss",
    pyode.QuadratureAdjoint: "Quadrature (GQ)",
}
MiB = 2.0**20


def size(nbytes: float) -> str:
    return "default" if nbytes is None else "inf" if math.isinf(nbytes) else f"{nbytes / MiB:g} MiB"


class Case:
    """One problem set up for repeated forward+backward passes."""

    def __init__(self, problem: Problem, device: torch.device, rtol: float = 1e-6, scale: float = 1.5):
        torch.manual_seed(0)
        self.field = Field(problem.state, problem.widths, scale=scale).double().to(device)
        self.y0 = torch.randn(problem.batch, problem.state, dtype=torch.float64, device=device)
        self.ts = torch.linspace(0.0, problem.t1, problem.saves, dtype=torch.float64)
        self.rtol = rtol
        self.device = device
        self.params = sum(p.numel() for p in self.field.parameters())

    def run(self, sensealg) -> pyode.Solution:
        """One forward+backward pass; returns the solution."""
        self.field.zero_grad(set_to_none=True)
        prob = pyode.ODEProblem(self.field, self.y0, (0.0, float(self.ts[-1])))
        sol = pyode.solve(prob, pyode.DP5(), saveat=self.ts, rtol=self.rtol, atol=self.rtol / 100, sensealg=sensealg)
        sol.y.pow(2).mean().backward()
        return sol

    def held(self, sensealg) -> float:
        """Memory held between forward and backward (CPU: saved tensors; CUDA: peak allocated)."""
        prob = pyode.ODEProblem(self.field, self.y0, (0.0, float(self.ts[-1])))
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            start = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            self.run(sensealg)
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - start
        saved = SavedBytes()
        with saved.hooks():
            sol = pyode.solve(
                prob, pyode.DP5(), saveat=self.ts, rtol=self.rtol, atol=self.rtol / 100, sensealg=sensealg
            )
            held = saved.total()
        del sol
        return held


def median_times(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of each run, interleaved so that drifts in machine load hit all alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():  # warm-up
        run()
    for _ in range(repeats):
        for name, run in runs.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            run()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def compare(problem: Problem, budgets: list[float | None], repeats: int, device: torch.device) -> None:
    case = Case(problem, device)
    state = problem.state * problem.batch
    print(
        f"\n{problem.name}: state {problem.state} × batch {problem.batch} = {state}, {case.params:,} parameters "
        f"({case.params / state:.1f} per state entry), {problem.saves} save points"
    )
    held = {name: case.held(alg) for name, alg in METHODS.items()}
    autos = {f"Auto({size(b)})": pyode.AutoAdjoint(memory_budget=b) for b in budgets}
    runs = {name: (lambda alg=alg: case.run(alg)) for name, alg in {**METHODS, **autos}.items()}
    times = median_times(runs, repeats)
    print(f"{'method':<18} {'fwd+bwd ms':>10} {'held MiB':>9}")
    for name in METHODS:
        print(f"{name:<18} {times[name] * 1e3:>10.1f} {held[name] / MiB:>9.2f}")
    print(f"\n{'budget':<10} {'AutoAdjoint chose':<18} {'ms':>7} {'fastest that fits':<18} {'ms':>7}  verdict")
    for (label, auto), budget in zip(autos.items(), budgets):
        sol = case.run(auto)
        chosen = CHOSEN_NAMES.get(type(sol.sensealg.chosen), repr(sol.sensealg.chosen))
        limit = sol.sensealg.estimate.budget if sol.sensealg.estimate is not None else math.inf
        # What each method holds must fit; GQ is left out of "fastest" (AutoAdjoint never picks it).
        fitting = {n: times[n] for n in ("Direct", "Interpolating", "Gauss") if held[n] <= limit or n == "Gauss"}
        best = min(fitting, key=fitting.get)
        slower = times[label] / times[best] - 1
        verdict = "yes" if chosen == best else ("within noise" if slower < 0.1 else f"no ({slower:+.0%})")
        print(
            f"{size(budget):<10} {chosen:<18} {times[label] * 1e3:>7.1f} {best:<18} {times[best] * 1e3:>7.1f}  {verdict}"
        )
        print(f"{'':<10} reason: {sol.sensealg.reason}")


def sweep(repeats: int, device: torch.device) -> None:
    """GaussAdjoint against InterpolatingAdjoint(seminorm) as the parameters per state entry and
    the save points per step vary: the measurement behind AutoAdjoint's PARAMS_PER_STATE and
    STEPS_PER_INTERVAL."""
    print(f"{'saves':>5} {'state x batch':>13} {'widths':>6} {'params':>8} {'params/state':>12} {'steps':>5} ", end="")
    print(f"{'Gauss ms':>9} {'Interp ms':>9} {'Interp/Gauss':>12}")
    shapes = [(16, 32, 16), (16, 32, 64), (16, 32, 96), (16, 32, 256), (64, 128, 64), (64, 128, 224)]
    for saves in (2, 5, 20):
        for state, batch, width in shapes:
            problem = Problem("sweep", state=state, batch=batch, widths=(width, width), saves=saves)
            case = Case(problem, device)
            runs = {
                "Gauss": lambda case=case: case.run(METHODS["Gauss"]),
                "Interp": lambda case=case: case.run(METHODS["Interpolating"]),
            }
            times = median_times(runs, repeats)
            steps = case.run(METHODS["Gauss"]).stats.naccept
            print(
                f"{saves:>5} {f'{state} x {batch}':>13} {width:>6} {case.params:>8,} "
                f"{case.params / (state * batch):>12.1f} {steps:>5} {times['Gauss'] * 1e3:>9.1f} "
                f"{times['Interp'] * 1e3:>9.1f} {times['Interp'] / times['Gauss']:>12.2f}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="*", default=list(PROBLEMS), choices=list(PROBLEMS))
    parser.add_argument("--budgets-mib", nargs="*", type=float, default=[64.0, 8.0, 0.5])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sweep", action="store_true", help="GaussAdjoint vs InterpolatingAdjoint by params/state")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device}; float64, DP5, rtol 1e-6, atol 1e-8")
    if args.sweep:
        sweep(args.repeats, device)
        return
    budgets: list[float | None] = [None, *(b * MiB for b in args.budgets_mib)]
    for name in args.problems:
        compare(PROBLEMS[name], budgets, args.repeats, device)


if __name__ == "__main__":
    main()
