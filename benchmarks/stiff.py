"""Work–precision of pyode's implicit solvers on classic stiff problems, against scipy's Radau,
BDF and LSODA and diffrax's Kvaerno5, and a batch of 256 independent stiff systems solved as one.

    python benchmarks/stiff.py              # rtol 1e-3 ... 1e-9, full spans, ~10 minutes on 2 cores
    python benchmarks/stiff.py --quick      # rtol 1e-3 and 1e-5, shorter spans, < 2 minutes
    python benchmarks/stiff.py --problems hires --solvers Rodas5P Radau

Problems (float64 throughout; atol = rtol · `atol_scale`, stated per problem in its table's title):

- Robertson's chemical kinetics (Hairer & Wanner II, §IV.1), k = (0.04, 3e7, 1e4), y0 = (1, 0, 0),
  t in [0, 1e5] (quick: [0, 1e3]), saved at 30 log-spaced times from 1e-5; atol_scale 1e-6.
- Van der Pol, y1' = y2, y2' = μ(1 - y1²) y2 - y1, μ = 1e3, y0 = (2, 0), t in [0, 3000], about
  two relaxation periods as in MATLAB's vdp1000 (quick: [0, 1000]), 30 uniform save times;
  atol_scale 1e-3.
- HIRES (Schäfer 1975; Hairer & Wanner II, §IV.10), 8 species, t in [0, 321.8122], 30 uniform
  save times (quick: the same); atol_scale 1e-4, the test set's choice.

Error: max over the save times and components of |y - y_ref| / (|y_ref| + atol_scale), the
relative error with the tolerance's own floor, against scipy's Radau at rtol 1e-13 (1e-12 for
Van der Pol; quick: 1e-10). Save times are reached by each solver's dense output, as users get
them (scipy: `dense_output`, diffrax: `SaveAt(ts=...)`, pyode: `saveat=`). NFE: evaluations of f
(pyode's `stats.nfe`, which includes Newton iterations; scipy's nfev); NJAC: Jacobians (pyode's
`njac`, by forward-mode autodiff, or finite differences with `--jacobian fd`; scipy's njev of the
analytic Jacobian every scipy method is given); steps: accepted steps (diffrax: its NFE is not
counted, "-"). Times are the minimum over `--repeats` runs for solves under 0.5 s (one run above),
after a warm-up solve, with torch on one thread (`--threads`; scipy and diffrax use one core,
and small batched LAPACK calls can stall for milliseconds on a busy machine with more); diffrax
is jitted with rtol and atol as traced arguments, so one compilation per problem, not timed.
"/Radau" is the time divided by scipy Radau's at the same rtol. A solver whose solve exceeds
`--budget` seconds (8; quick 1) skips the tighter tolerances on that problem; `--max-steps`
caps each solve (50 000; quick 5000), and a solve that fails says so in its row.

The batch problem: HIRES with each of its 12 rate constants multiplied by exp(0.2·N(0, 1)), per
system, 256 systems (quick: 32) at rtol 1e-6. pyode (Rodas5P, Kvaerno5, KenCarp4; quick: Rodas5P;
at most 3000 steps) solves the (B, 8) state in one call with
`independent_batch=True` (B LU factorizations of 8×8, one shared step size), with the other
Jacobian mode for Rodas5P as an extra row; scipy solves the systems one by one. Errors against
Radau at rtol 1e-10 on the first 8 systems.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

import pyode

# --------------------------------------------------------------------------------------------
# Problems: one right-hand side on components, shared by torch, numpy and jax.


def robertson(y: tuple, k=(0.04, 3e7, 1e4)) -> list:
    y1, y2, y3 = y
    k1, k2, k3 = k
    return [-k1 * y1 + k3 * y2 * y3, k1 * y1 - k3 * y2 * y3 - k2 * y2**2, k2 * y2**2]


def robertson_jac(t: float, y: np.ndarray, k=(0.04, 3e7, 1e4)) -> np.ndarray:
    _, y2, y3 = y
    k1, k2, k3 = k
    return np.array([[-k1, k3 * y3, k3 * y2], [k1, -k3 * y3 - 2 * k2 * y2, -k3 * y2], [0.0, 2 * k2 * y2, 0.0]])


MU = 1e3


def van_der_pol(y: tuple) -> list:
    y1, y2 = y
    return [y2, MU * (1 - y1**2) * y2 - y1]


def van_der_pol_jac(t: float, y: np.ndarray) -> np.ndarray:
    y1, y2 = y
    return np.array([[0.0, 1.0], [-2 * MU * y1 * y2 - 1, MU * (1 - y1**2)]])


# HIRES's rate constants, in order of first appearance.
HIRES_K = (1.71, 0.43, 8.32, 0.0007, 8.75, 10.03, 0.035, 1.12, 1.745, 280.0, 0.69, 1.81)


def hires(y: tuple, k=HIRES_K) -> list:
    y1, y2, y3, y4, y5, y6, y7, y8 = y
    a, b, c, d, e, g, h, i, j, m, n, p = k
    return [
        -a * y1 + b * y2 + c * y3 + d,
        a * y1 - e * y2,
        -g * y3 + b * y4 + h * y5,
        c * y2 + a * y3 - i * y4,
        -j * y5 + b * y6 + b * y7,
        -m * y6 * y8 + n * y4 + a * y5 - b * y6 + n * y7,
        m * y6 * y8 - p * y7,
        -m * y6 * y8 + p * y7,
    ]


def hires_jac(t: float, y: np.ndarray, k=HIRES_K) -> np.ndarray:
    a, b, c, _, e, g, h, i, j, m, n, p = k
    y6, y8 = y[5], y[7]
    J = np.zeros((8, 8))
    J[0, :3] = (-a, b, c)
    J[1, :2] = (a, -e)
    J[2, 2:5] = (-g, b, h)
    J[3, 1:4] = (c, a, -i)
    J[4, 4:7] = (-j, b, b)
    J[5, 3:8] = (n, a, -b - m * y8, n, -m * y6)
    J[6, 5:8] = (m * y8, -p, m * y6)
    J[7, 5:8] = (-m * y8, p, -m * y6)
    return J


HIRES_Y0 = (1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0057)


@dataclass
class Problem:
    name: str
    rhs: Callable  # components -> list of components
    jac: Callable  # numpy (t, y) -> (n, n), for scipy
    y0: tuple
    t1: float
    ts: np.ndarray  # save times
    atol_scale: float  # atol = rtol · atol_scale; also the error's floor
    ref_rtol: float


def problems(quick: bool) -> dict[str, Problem]:
    """The three problems; `quick` shortens Robertson's and Van der Pol's spans and loosens the
    reference to rtol 1e-10 (enough for rtol ≥ 1e-7)."""
    rob_t1, vdp_t1 = (1e3, 1000.0) if quick else (1e5, 3000.0)
    ref = (lambda full: 1e-10) if quick else (lambda full: full)
    return {
        "robertson": Problem(
            "robertson",
            robertson,
            robertson_jac,
            (1.0, 0.0, 0.0),
            rob_t1,
            np.logspace(-5, math.log10(rob_t1), 30),
            1e-6,
            ref(1e-13),
        ),
        "vdp": Problem(
            "vdp", van_der_pol, van_der_pol_jac, (2.0, 0.0), vdp_t1, np.linspace(0, vdp_t1, 31)[1:], 1e-3, ref(1e-12)
        ),
        "hires": Problem(
            "hires", hires, hires_jac, HIRES_Y0, 321.8122, np.linspace(0, 321.8122, 31)[1:], 1e-4, ref(1e-13)
        ),
    }


def torch_field(rhs: Callable, k=None) -> Callable:
    """f(t, y) on tensors of shape (..., n); `k`, if given, is a tuple of rate tensors of shape (B,),
    one rate per system of a (B, n) state."""
    if k is None:
        return lambda t, y: torch.stack(rhs(y.unbind(-1)), -1)
    return lambda t, y: torch.stack(rhs(y.unbind(-1), k), -1)


# --------------------------------------------------------------------------------------------
# Runners: each returns (ys at the save times as numpy (T, n), figures dict).


def reference(problem: Problem, k=None) -> np.ndarray:
    from scipy.integrate import solve_ivp

    args = () if k is None else (k,)
    sol = solve_ivp(
        lambda t, y, *a: np.array(problem.rhs(y, *a)),
        (0.0, problem.t1),
        problem.y0,
        method="Radau",
        t_eval=problem.ts,
        rtol=problem.ref_rtol,
        atol=problem.ref_rtol * problem.atol_scale,
        jac=problem.jac,
        args=args,
    )
    assert sol.success, sol.message
    return sol.y.T


def pyode_solvers(autodiff: bool = True) -> dict[str, Callable[[], pyode.AbstractSolver]]:
    solvers = {
        name: functools.partial(getattr(pyode, name), autodiff=autodiff)
        for name in ("Rosenbrock23", "Rodas5P", "Kvaerno3", "Kvaerno5", "KenCarp4")
    }
    if hasattr(pyode, "AutoSwitch"):  # being added
        solvers["AutoSwitch"] = lambda: pyode.AutoSwitch(pyode.Tsit5(), pyode.Rodas5P(autodiff=autodiff))
    return solvers


# Low-order methods stop at these tolerances: beyond them they take tens of thousands of steps.
LOOSEST_ONLY = {"Rosenbrock23": 1e-5, "Kvaerno3": 1e-7}
SCIPY = ("Radau", "BDF", "LSODA")
BATCH_MAX_STEPS = 3000  # the batch needs ~500 steps; a stalled solve stops here


def pyode_runner(
    problem: Problem, name: str, rtol: float, autodiff: bool, max_steps: int
) -> Callable[[], tuple[np.ndarray, dict]]:
    solver = pyode_solvers(autodiff)[name]()
    prob = pyode.ODEProblem(torch_field(problem.rhs), torch.tensor(problem.y0, dtype=torch.float64), (0.0, problem.t1))
    ts = torch.tensor(problem.ts, dtype=torch.float64)

    def run():
        with torch.no_grad():
            sol = pyode.solve(
                prob, solver, rtol=rtol, atol=rtol * problem.atol_scale, saveat=ts, max_steps=max_steps, throw=False
            )
        s = sol.stats
        ok = sol.retcode.successful
        return sol.y.numpy(), {"nfe": s.nfe, "njac": s.njac, "steps": s.naccept, "ok": ok, "retcode": sol.retcode.name}

    return run


def scipy_runner(problem: Problem, method: str, rtol: float, k=None) -> Callable[[], tuple[np.ndarray, dict]]:
    """Steps scipy's solver class directly (as solve_ivp does) to count its accepted steps."""
    from scipy.integrate import BDF, LSODA, Radau

    cls = {"Radau": Radau, "BDF": BDF, "LSODA": LSODA}[method]
    rhs = problem.rhs if k is None else (lambda y: problem.rhs(y, k))
    jac = problem.jac if k is None else (lambda t, y: problem.jac(t, y, k))

    def run():
        solver = cls(
            lambda t, y: np.array(rhs(y)),
            0.0,
            np.array(problem.y0),
            problem.t1,
            rtol=rtol,
            atol=rtol * problem.atol_scale,
            jac=jac,
        )
        ys, i, steps, ts = [], 0, 0, problem.ts
        while solver.status == "running":
            solver.step()
            steps += 1
            if solver.status == "failed":
                break
            j = np.searchsorted(ts, solver.t, side="right")
            if j > i:
                ys.append(solver.dense_output()(ts[i:j]).T)
                i = j
        ok = solver.status == "finished" and i == len(ts)
        y = np.concatenate(ys) if ys else np.zeros((0, len(problem.y0)))
        return y, {"nfe": solver.nfev, "njac": solver.njev, "steps": steps, "ok": ok, "retcode": solver.status}

    return run


def diffrax_available() -> bool:
    try:
        import diffrax  # noqa: F401
        import jax  # noqa: F401
    except ImportError:
        return False
    return True


def diffrax_compiled(problem: Problem) -> Callable:
    """A jitted Kvaerno5 solve of the problem, (rtol, atol) -> (ys, accepted steps, success)."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import diffrax
    import jax.numpy as jnp

    term = diffrax.ODETerm(lambda t, y, args: jnp.stack(problem.rhs(tuple(y))))
    saveat = diffrax.SaveAt(ts=jnp.asarray(problem.ts))
    y0 = jnp.asarray(problem.y0)

    @jax.jit
    def solve(rtol, atol):
        sol = diffrax.diffeqsolve(
            term,
            diffrax.Kvaerno5(),
            0.0,
            problem.t1,
            None,
            y0,
            saveat=saveat,
            # diffrax's advice for implicit methods: PI coefficients 0.3, 0.3 (Söderlind).
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol, pcoeff=0.3, icoeff=0.3),
            max_steps=200_000,
            throw=False,
        )
        return sol.ys, sol.stats["num_accepted_steps"], sol.result == diffrax.RESULTS.successful

    return solve


def diffrax_runner(compiled: Callable, problem: Problem, rtol: float) -> Callable[[], tuple[np.ndarray, dict]]:
    import jax

    def run():
        ys, steps, ok = jax.block_until_ready(compiled(rtol, rtol * problem.atol_scale))
        ok = bool(ok)
        return np.asarray(ys), {
            "nfe": None,
            "njac": None,
            "steps": int(steps),
            "ok": ok,
            "retcode": "" if ok else "failed",
        }

    return run


def timed(run: Callable, repeats: int) -> tuple[np.ndarray, dict, float]:
    """Runs `run` once; again up to `repeats` times in all when it took under 0.5 s. Min time."""
    start = time.perf_counter()
    ys, figures = run()
    best = time.perf_counter() - start
    if best < 0.5:
        for _ in range(repeats - 1):
            start = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - start)
    return ys, figures, best


def error(ys: np.ndarray, ref: np.ndarray, floor: float) -> float:
    if ys.shape != ref.shape or not np.all(np.isfinite(ys)):
        return math.inf
    return float(np.max(np.abs(ys - ref) / (np.abs(ref) + floor)))


# --------------------------------------------------------------------------------------------
# Work–precision


_WARM: set[str] = set()


def work_precision(problem: Problem, rtols: list[float], solvers: list[str], args: argparse.Namespace) -> list[dict]:
    start = time.perf_counter()
    ref = reference(problem)
    print(
        f"\n{problem.name}: t in [0, {problem.t1:g}], atol = rtol·{problem.atol_scale:g}; "
        f"reference Radau rtol {problem.ref_rtol:g} ({time.perf_counter() - start:.1f} s)"
    )
    header = f"{'solver':<16} {'rtol':>6} {'error':>9} {'NFE':>7} {'NJAC':>6} {'steps':>6} {'time ms':>9} {'/Radau':>7}"
    print(header)
    print("-" * len(header))
    compiled = None
    if "Kvaerno5-diffrax" in solvers:
        start = time.perf_counter()
        compiled = diffrax_compiled(problem)
        compiled(rtols[0], rtols[0] * problem.atol_scale)
        print(f"(diffrax Kvaerno5: compiled in {time.perf_counter() - start:.1f} s)")
    # Warm-up: torch's first calls of each solver's step (kernel caches, jit-scripted helpers).
    for name in solvers:
        if name in pyode_solvers() and name not in _WARM:
            pyode_runner(problem, name, 1e-2, args.autodiff, args.max_steps)()
            _WARM.add(name)
    rows, skipped, radau = [], set(), {}
    ordered = [s for s in solvers if s == "Radau"] + [s for s in solvers if s != "Radau"]
    for rtol in rtols:
        for name in ordered:
            if name in skipped or rtol < LOOSEST_ONLY.get(name, 0.0):
                continue
            if name in SCIPY:
                run = scipy_runner(problem, name, rtol)
            elif name == "Kvaerno5-diffrax":
                run = diffrax_runner(compiled, problem, rtol)
            else:
                run = pyode_runner(problem, name, rtol, args.autodiff, args.max_steps)
            ys, fig, seconds = timed(run, args.repeats)
            if name == "Radau":
                radau[rtol] = seconds
            if seconds > args.budget:
                skipped.add(name)
            err = error(ys, ref, problem.atol_scale) if fig["ok"] else math.inf
            row = dict(problem=problem.name, solver=name, rtol=rtol, error=err, seconds=seconds, **fig)
            rows.append(row)
            ratio = f"{seconds / radau[rtol]:>7.2f}" if rtol in radau else f"{'-':>7}"
            nfe = "-" if fig["nfe"] is None else fig["nfe"]
            njac = "-" if fig["njac"] is None else fig["njac"]
            note = "" if fig["ok"] else f"  FAILED: {fig['retcode']}"
            print(
                f"{name:<16} {rtol:>6.0e} {err:>9.2e} {nfe:>7} {njac:>6} {fig['steps']:>6} {seconds * 1e3:>9.1f} {ratio}"
                f"{note}",
                flush=True,
            )
        print()
    if skipped:
        print(f"over the {args.budget:g} s budget, tighter tolerances skipped: {', '.join(sorted(skipped))}")
    return rows


# --------------------------------------------------------------------------------------------
# Batch of independent systems


def batch(n_systems: int, rtol: float, solvers: list[str], scipy_methods: list[str], args: argparse.Namespace) -> None:

    problem = dataclasses.replace(problems(quick=False)["hires"], ref_rtol=1e-10)
    gen = np.random.default_rng(0)
    ks = np.asarray(HIRES_K) * np.exp(0.2 * gen.standard_normal((n_systems, len(HIRES_K))))
    atol = rtol * problem.atol_scale
    n_ref = min(8, n_systems)
    refs = np.stack([reference(problem, tuple(ks[b])) for b in range(n_ref)], 1)  # (T, n_ref, 8)
    print(
        f"\nbatch: {n_systems} HIRES systems, each rate constant × exp(0.2·N(0,1)); rtol {rtol:g}, atol {atol:g}; "
        f"error over the first {n_ref} systems against Radau rtol 1e-10"
    )
    header = (
        f"{'solver':<30} {'error':>9} {'NFE':>8} {'NJAC':>7} {'steps':>7} {'total s':>8} {'ms/system':>9} {'/Radau':>7}"
    )
    print(header)
    print("-" * len(header))
    results = {}
    for method in scipy_methods:
        # One by one, the way scipy is used: every system its own solve.
        runs = [scipy_runner(problem, method, rtol, k=tuple(ks[b])) for b in range(n_systems)]

        def run_scipy(runs=runs):
            out = [run() for run in runs]
            figures = {key: sum(fig[key] for _, fig in out) for key in ("nfe", "njac", "steps")}
            return np.stack([ys for ys, _ in out], 1), figures

        results[f"scipy {method} (loop)"] = timed(run_scipy, 1)
    ts = torch.tensor(problem.ts)
    variants = [(name, args.autodiff) for name in solvers]
    if "Rodas5P" in solvers:
        variants.append(("Rodas5P", not args.autodiff))  # what the other Jacobian costs
    for name, autodiff in variants:
        solver = pyode_solvers(autodiff)[name]()

        def run_pyode(solver=solver, systems=n_systems):
            k = tuple(torch.tensor(ks[:systems, i]) for i in range(len(HIRES_K)))
            y0 = torch.tensor(HIRES_Y0, dtype=torch.float64).expand(systems, 8).clone()
            prob = pyode.ODEProblem(torch_field(hires, k), y0, (0.0, problem.t1), independent_batch=True)
            with torch.no_grad():
                sol = pyode.solve(prob, solver, rtol=rtol, atol=atol, saveat=ts, max_steps=BATCH_MAX_STEPS, throw=False)
            s = sol.stats
            failed = "" if sol.retcode.successful else f"FAILED: {sol.retcode.name} at t = {float(sol.t[-1]):.4g}"
            return sol.y.numpy(), {"nfe": s.nfe, "njac": s.njac, "steps": s.naccept, "failed": failed}

        run_pyode(systems=2)  # warm-up
        label = f"pyode {name}{'' if autodiff else ' fd-jac'} (batched)"
        results[label] = timed(run_pyode, args.repeats)
    base = results.get("scipy Radau (loop)", (None, None, None))[2]
    for label, (ys, fig, seconds) in results.items():
        err = error(ys[:, :n_ref], refs, problem.atol_scale)
        ratio = f"{seconds / base:>7.3f}" if base else f"{'-':>7}"
        print(
            f"{label:<30} {err:>9.2e} {fig['nfe']:>8} {fig['njac']:>7} {fig['steps']:>7} {seconds:>8.2f} "
            f"{seconds / n_systems * 1e3:>9.2f} {ratio}  {fig.get('failed', '')}".rstrip()
        )
    print("(pyode: NFE, NJAC and steps count batched calls, each for all systems; scipy: summed over systems)")


# --------------------------------------------------------------------------------------------
# Plot


def plot(rows: list[dict], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("matplotlib is not installed; no plot (pip install matplotlib)")
        return
    names = list(dict.fromkeys(r["problem"] for r in rows))
    fig, axes = plt.subplots(2, len(names), figsize=(5 * len(names), 8), squeeze=False)
    solvers = list(dict.fromkeys(r["solver"] for r in rows))
    styles = {s: ("--" if s in SCIPY or s.endswith("diffrax") else "-") for s in solvers}
    for col, name in enumerate(names):
        for solver in solvers:
            pts = [r for r in rows if r["problem"] == name and r["solver"] == solver and math.isfinite(r["error"])]
            if not pts:
                continue
            err = [max(r["error"], 1e-16) for r in pts]
            axes[0, col].loglog([r["seconds"] for r in pts], err, styles[solver], marker="o", ms=3, label=solver)
            with_nfe = [(r["nfe"], e) for r, e in zip(pts, err) if r["nfe"] is not None]
            if with_nfe:
                axes[1, col].loglog(*zip(*with_nfe), styles[solver], marker="o", ms=3, label=solver)
        axes[0, col].set_title(name)
        axes[0, col].set_xlabel("wall time (s)")
        axes[1, col].set_xlabel("NFE")
        axes[1, col].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        for row in range(2):
            axes[row, col].set_ylabel("error")
            axes[row, col].grid(True, which="major", alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("work–precision: pyode (solid) vs scipy, diffrax (dashed)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"\nsaved {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="rtol 1e-3 and 1e-5, shorter spans, 32 batch systems, Rodas5P only there"
    )
    parser.add_argument("--problems", nargs="*", default=["robertson", "vdp", "hires", "batch"])
    parser.add_argument(
        "--solvers", nargs="*", default=None, help="pyode solver names, Radau, BDF, LSODA, Kvaerno5-diffrax"
    )
    parser.add_argument("--rtols", nargs="*", type=float, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=float, default=None, help="seconds; a slower solve skips tighter tolerances")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (default 1: scipy and diffrax use one core)"
    )
    parser.add_argument("--max-steps", type=int, default=None, help="per solve (default 50 000; quick 5000)")
    parser.add_argument(
        "--jacobian", choices=["autodiff", "fd"], default="autodiff", help="pyode's Jacobians: autodiff=True or False"
    )
    parser.add_argument("--plot", default="benchmarks/stiff_work_precision.png", help="'' for no plot")
    args = parser.parse_args()

    rtols = args.rtols or ([1e-3, 1e-5] if args.quick else [10.0**-e for e in range(3, 10)])
    args.budget = args.budget or (1.0 if args.quick else 8.0)
    args.max_steps = args.max_steps or (5_000 if args.quick else 50_000)
    args.autodiff = args.jacobian == "autodiff"
    solvers = args.solvers or [*pyode_solvers(), *SCIPY, "Kvaerno5-diffrax"]
    if "Kvaerno5-diffrax" in solvers and not diffrax_available():
        solvers.remove("Kvaerno5-diffrax")
        print("diffrax or jax not importable: no diffrax rows")
    if "Radau" not in solvers:
        solvers.append("Radau")  # the ratios' baseline
    torch.set_num_threads(args.threads)
    print(f"pyode {pyode.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads); float64")
    start = time.perf_counter()
    rows = []
    for name, problem in problems(args.quick).items():
        if name in args.problems:
            rows += work_precision(problem, rtols, solvers, args)
    if "batch" in args.problems:
        n = args.batch_size or (32 if args.quick else 256)
        batched = [s for s in solvers if s in (("Rodas5P",) if args.quick else ("Rodas5P", "Kvaerno5", "KenCarp4"))]
        batch(n, 1e-6, batched, [m for m in ("Radau", "BDF") if m in solvers], args)
    if rows and args.plot:
        plot(rows, args.plot)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
