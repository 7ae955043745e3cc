"""Step counts of Dormand–Prince 5(4): pyode's step control against torchdiffeq's dopri5, with the
ingredients of the step control (error estimate, controller, initial step, safety) varied one at a
time, and the accuracy each buys (issue 13).

    python benchmarks/step_counts.py                       # all problems and variants, ~2 minutes on 2 cores
    python benchmarks/step_counts.py --variants tdq PI-plain pyode-PI   # ~20 s
    python benchmarks/step_counts.py --trace vdp 1e-6      # the first attempted steps, per variant

Problems: the three neural ODEs of core.py (scale 1, t in [0, 10], 20 save times) and the three of
adjoints.py (scale 1.5, t in [0, 5]), built exactly as those benchmarks build them (seed 0, their
`Field`); and four classic problems (Van der Pol mu=1 on [0, 10], a damped forced Duffing
oscillator on [0, 20], Lotka–Volterra on [0, 10], the Arenstorf orbit over one period). Every solve
is float64 at rtol 1e-3 and 1e-6 with atol = rtol/100 (as core.py and adjoints.py use), saving at
the problem's save times; the forward pass only, under no_grad.

Columns: NFE (evaluations of f, counted by the vector field itself), accepted and rejected steps
(torchdiffeq's through its step callbacks), and `err`, the error of the final state against a
reference (pyode DP8, rtol 1e-12, atol 1e-14): max |y - y_ref| / max |y_ref| over the final state.
`err/tdq` divides it by torchdiffeq's error on the same problem and tolerance. Everything is
deterministic (fixed seeds, float64, NFE rather than time).

The summary gives per variant the totals over the issue's set (core.py + adjoints.py problems,
both tolerances) and over all problems, with the geometric mean and the largest of err/tdq.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from fractions import Fraction as F
from typing import Callable

import torch
from adjoints import PROBLEMS as ADJOINT_PROBLEMS
from core import PROBLEMS as CORE_PROBLEMS
from core import Field
from torch import nn

import pyode
from pyode.step_control import initial_step

# --------------------------------------------------------------------------------------------
# Problems


class Counted(nn.Module):
    """f(t, y) counting its calls, with torchdiffeq's step callbacks counting its steps."""

    def __init__(self, f: Callable):
        super().__init__()
        self.f = f
        self.calls = self.accepted = self.rejected = 0
        self.steps: list[tuple[float, float, bool]] = []  # (t, h, accepted), for --trace

    def forward(self, t, y):
        self.calls += 1
        return self.f(t, y)

    def callback_accept_step(self, t0, y0, dt):
        self.accepted += 1
        self.steps.append((float(t0), float(dt), True))

    def callback_reject_step(self, t0, y0, dt):
        self.rejected += 1
        self.steps.append((float(t0), float(dt), False))


@dataclass
class Case:
    name: str
    build: Callable[[], tuple[Callable, torch.Tensor, torch.Tensor]]  # () -> (f, y0, save times)
    neural: bool  # one of the set (core.py / adjoints.py)


def _neural(problem, scale: float) -> Callable:
    def build():
        torch.manual_seed(0)  # as core.measure and adjoints.main do
        net = Field(problem.state, problem.widths, scale=scale).double()
        y0 = torch.randn(problem.batch, problem.state, dtype=torch.float64)
        ts = torch.linspace(0.0, problem.t1, problem.saves, dtype=torch.float64)
        return (lambda t, y: net.net(y)), y0, ts

    return build


def _classic(f: Callable, y0: list[float], t1: float) -> Callable:
    def build():
        return f, torch.tensor(y0, dtype=torch.float64), torch.tensor([0.0, t1], dtype=torch.float64)

    return build


def van_der_pol(t, y, mu=1.0):
    x, v = y[0], y[1]
    return torch.stack((v, mu * (1 - x * x) * v - x))


def duffing(t, y):
    """Damped forced Duffing oscillator x'' + 0.2 x' + x + x^3 = 0.3 cos(1.2 t) (not chaotic)."""
    x, v = y[0], y[1]
    return torch.stack((v, -0.2 * v - x - x**3 + 0.3 * torch.cos(torch.as_tensor(1.2 * t, dtype=y.dtype))))


def lotka_volterra(t, y):
    x, z = y[0], y[1]
    return torch.stack((1.5 * x - x * z, -3.0 * z + x * z))


_MU = 0.012277471


def arenstorf(t, y):
    """Hairer, Nørsett & Wanner, Solving ODEs I, §II.0: a periodic restricted three-body orbit."""
    y1, y2, v1, v2 = y[0], y[1], y[2], y[3]
    d1 = ((y1 + _MU) ** 2 + y2**2) ** 1.5
    d2 = ((y1 - 1 + _MU) ** 2 + y2**2) ** 1.5
    a1 = y1 + 2 * v2 - (1 - _MU) * (y1 + _MU) / d1 - _MU * (y1 - 1 + _MU) / d2
    a2 = y2 - 2 * v1 - (1 - _MU) * y2 / d1 - _MU * y2 / d2
    return torch.stack((v1, v2, a1, a2))


CASES = {
    **{f"core/{n}": Case(f"core/{n}", _neural(p, 1.0), True) for n, p in CORE_PROBLEMS.items()},
    **{f"adj/{n}": Case(f"adj/{n}", _neural(p, 1.5), True) for n, p in ADJOINT_PROBLEMS.items()},
    "vdp": Case("vdp", _classic(van_der_pol, [2.0, 0.0], 10.0), False),
    "duffing": Case("duffing", _classic(duffing, [1.0, 0.0], 20.0), False),
    "lotka-volterra": Case("lotka-volterra", _classic(lotka_volterra, [1.0, 1.0], 10.0), False),
    "arenstorf": Case(
        "arenstorf",
        _classic(arenstorf, [0.994, 0.0, 0.0, -2.00158510637908252240537862224], 17.0652165601579625588917206249),
        False,
    ),
}

# --------------------------------------------------------------------------------------------
# Variants: the pieces of step control, each a choice that pyode's public API can express.


def _shampine_dp5() -> type:
    """DP5 with torchdiffeq's (Shampine's) embedded weights instead of Dormand and Prince's."""
    base = pyode.DP5.tableau

    @dataclass(frozen=True)
    class DP5Shampine(pyode.DP5):
        tableau = pyode.ButcherTableau.from_rows(
            c=list(base.c),
            a=[list(row[:i]) for i, row in enumerate(base.a)],
            b=list(base.b),
            b_embedded=[F(1951, 21600), 0, F(22642, 50085), F(451, 720), F(-12231, 42400), F(649, 6300), F(1, 60)],
        )

    return DP5Shampine


DP5Shampine = _shampine_dp5()


@dataclass(frozen=True)
class PIFresh(pyode.PIController):
    """PIController whose first step sees E_prev = 1 rather than Hairer's 1e-4 (which multiplies
    the step after the first accepted one by 1e-4^0.04 = 0.69)."""

    def init(self, error_order: int):
        return self.gains(error_order), 1.0, None


@dataclass(frozen=True)
class PIKeep(pyode.PIController):
    """PIController that, like torchdiffeq, never shrinks the step after an accepted step (the
    factor after E < 1 is floored at 1 instead of factor_min)."""

    def factor(self, ratio, prev_ratio, gains, accepted):
        f = super().factor(ratio, prev_ratio, gains, accepted)
        return max(f, 1.0) if accepted and ratio < 1.0 else f


@dataclass
class Variant:
    name: str
    description: str
    solver: pyode.AbstractExplicitRK | None = None  # None: torchdiffeq
    controller: pyode.AbstractController | None = None
    h0_order: int | None = None  # initial step with exponent 1/(h0_order + 1); None: pyode's own
    candidate: bool = False  # the proposed default, marked * in the totals


DP = pyode.DP5()
DPS = DP5Shampine()
VARIANTS = {
    v.name: v
    for v in [
        Variant("tdq", "torchdiffeq dopri5 (Shampine estimate, I control, h0 exponent 1/5)"),
        Variant(
            "pyode-PI",
            "pyode default: DP5, PIController() (integral start-up to E = 0.5)",
            DP,
            pyode.PIController(),
            None,
            True,
        ),
        Variant(
            "PI-plain", "DP5, PIController(startup=None): the default before", DP, pyode.PIController(startup=None)
        ),
        Variant("pyode-I", "DP5, IController()", DP, pyode.IController()),
        # one change at a time from the default
        Variant("PI+h0/5", "DP5, PIController(), initial step exponent 1/5", DP, pyode.PIController(startup=None), 4),
        Variant(
            "PI+shampine", "DP5 Shampine estimate, PIController(startup=None)", DPS, pyode.PIController(startup=None)
        ),
        Variant("PI-fresh", "DP5, PIController with E_prev=1 at the start", DP, PIFresh(startup=None)),
        Variant("PI-keep", "DP5, PIController never shrinking after acceptance", DP, PIKeep(startup=None)),
        Variant("PI-s0.95", "DP5, PIController(safety=0.95)", DP, pyode.PIController(safety=0.95, startup=None)),
        Variant("PI-b2=0.02", "DP5, PIController(beta2=0.02)", DP, pyode.PIController(beta2=0.02, startup=None)),
        Variant(
            "PI-b2=0",
            "DP5, PIController(beta2=0) (I gain, but may shrink after accept)",
            DP,
            pyode.PIController(beta2=0.0, startup=None),
        ),
        # torchdiffeq rebuilt from pyode parts, one piece at a time
        Variant("I+h0/5", "DP5, IController(), initial step exponent 1/5", DP, pyode.IController(), 4),
        Variant("I+shampine", "DP5 Shampine estimate, IController()", DPS, pyode.IController()),
        Variant(
            "I+shampine+h0/5", "torchdiffeq's rule in pyode: Shampine, I, h0 exponent 1/5", DPS, pyode.IController(), 4
        ),
        # the start-up phase: I rule until E >= until (or a rejection), then PI
        Variant("PI-start0.3", "DP5, PIController(startup=0.3)", DP, pyode.PIController(startup=0.3)),
        Variant("PI-start1", "DP5, PIController(startup=1.0): I rule until E = 1", DP, pyode.PIController(startup=1.0)),
        Variant("PI+shampine-start", "DP5 Shampine estimate, PIController()", DPS, pyode.PIController()),
    ]
}

# --------------------------------------------------------------------------------------------
# Running


@dataclass
class Result:
    nfe: int
    accepted: int
    rejected: int
    final: torch.Tensor
    steps: list[tuple[float, float, bool]]


class _Trace(pyode.Observer):
    def __init__(self, steps: list):
        self.steps = steps

    def attempt(self, t, y, h):
        self.steps.append((t, h, True))

    def rejected(self, t, y, h, ratio):
        self.steps[-1] = (t, h, False)


def run(variant: Variant, f: Callable, y0: torch.Tensor, ts: torch.Tensor, rtol: float) -> Result:
    atol = rtol / 100
    g = Counted(f)
    with torch.no_grad():
        if variant.solver is None:
            import torchdiffeq

            y = torchdiffeq.odeint(g, y0, ts, rtol=rtol, atol=atol, method="dopri5")[-1]
            return Result(g.calls, g.accepted, g.rejected, y, g.steps)
        dt = None
        if variant.h0_order is not None:
            t0 = float(ts[0])
            f0 = f(ts[0], y0)  # pyode evaluates its own k1; the probe f(t0 + h0, ...) is counted
            dt = initial_step(g, t0, y0, f0, 1.0, variant.h0_order, rtol, atol, pyode.rms_norm)
        steps: list = []
        sol = pyode.solve(
            pyode.ODEProblem(g, y0, (ts[0], ts[-1])),
            variant.solver,
            saveat=ts,
            rtol=rtol,
            atol=atol,
            controller=variant.controller,
            dt=dt,
            observers=[_Trace(steps)],
        )
        return Result(g.calls, sol.stats.naccept, sol.stats.nreject, sol.y[-1], steps)


def reference(f: Callable, y0: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        sol = pyode.solve(pyode.ODEProblem(f, y0, (ts[0], ts[-1])), pyode.DP8(), saveat=ts, rtol=1e-12, atol=1e-14)
    return sol.y[-1]


def error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y - ref).abs().max() / ref.abs().max()).item()


def _geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--rtols", nargs="*", type=float, default=[1e-3, 1e-6])
    parser.add_argument("--trace", nargs=2, metavar=("PROBLEM", "RTOL"), help="print the first attempted steps")
    parser.add_argument("--steps", type=int, default=8, help="steps shown by --trace")
    args = parser.parse_args()
    variants = [VARIANTS[v] for v in (["tdq"] + [v for v in args.variants if v != "tdq"])]

    if args.trace:
        f, y0, ts = CASES[args.trace[0]].build()
        rtol = float(args.trace[1])
        print(f"{args.trace[0]} rtol {rtol:g}: first {args.steps} attempts as h (x = rejected)")
        for v in variants:
            r = run(v, f, y0, ts, rtol)
            shown = " ".join(f"{h:.3g}{'' if ok else 'x'}" for _, h, ok in r.steps[: args.steps])
            print(f"{v.name:<24} NFE {r.nfe:>4} {r.accepted:>3}/{r.rejected:<2} | {shown}")
        return

    print(
        f"torch {torch.__version__}; float64, Dormand–Prince 5(4), atol = rtol/100; err: final state vs DP8 rtol 1e-12"
    )
    for v in variants:
        print(f"  {v.name:<24} {v.description}")
    # totals[variant][set] = [nfe, acc, rej, [err ratios]]
    totals = {v.name: {s: [0, 0, 0, []] for s in ("issue", "all")} for v in variants}
    errs: dict[str, list[float]] = {v.name: [] for v in variants}
    for name in args.problems:
        case = CASES[name]
        f, y0, ts = case.build()
        ref = reference(f, y0, ts)
        for rtol in args.rtols:
            print(f"\n{name}  rtol {rtol:g}")
            print(f"  {'variant':<24} {'NFE':>5} {'acc':>4} {'rej':>4} {'err':>9} {'err/tdq':>7}")
            base = None
            for v in variants:
                r = run(v, f, y0, ts, rtol)
                e = error(r.final, ref)
                base = e if base is None else base
                ratio = e / base if base > 0 else math.nan
                errs[v.name].append(e)
                for s in ("issue", "all") if case.neural else ("all",):
                    t = totals[v.name][s]
                    t[0] += r.nfe
                    t[1] += r.accepted
                    t[2] += r.rejected
                    t[3].append(ratio)
                print(f"  {v.name:<24} {r.nfe:>5} {r.accepted:>4} {r.rejected:>4} {e:>9.2e} {ratio:>7.2f}", flush=True)

    print("\nTotals (issue set: core.py and adjoints.py problems; all: with the classic problems)")
    print("err/tdq: geometric mean and largest, over the problems and tolerances of the set")
    header = f"  {'variant':<24}"
    for s in ("issue", "all"):
        header += f" | {s + ' NFE':>9} {'acc':>5} {'rej':>4} {'gm':>5} {'max':>5}"
    print(header)
    print("  " + "-" * (len(header) - 2))
    for v in variants:
        row = f"  {v.name:<24}"
        for s in ("issue", "all"):
            nfe, acc, rej, ratios = totals[v.name][s]
            row += f" | {nfe:>9} {acc:>5} {rej:>4} {_geomean(ratios):>5.2f} {max(ratios, default=math.nan):>5.2f}"
        print(row + (" *" if v.candidate else ""))


if __name__ == "__main__":
    main()
