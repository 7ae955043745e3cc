"""Property-based tests (hypothesis) on dy/dt = A y, whose solution exp((t - t0) A) y0 and whose
gradients are known exactly.

Drawn: the solver (explicit Runge–Kutta, fixed-step or adaptive, and reversible), the tolerances,
the span's direction, the save grid (strictly monotone inside the span, with or without its ends,
possibly empty or with two times one ulp apart; or None: every step saved), the state's shape (a
vector, a batch, a tuple of tensors), the dtype and the sensealg. Properties:

(a) the solve succeeds, or refuses the combination with a `TypeError`/`ValueError` that names
    the sensealg and the solver;
(b) the saved states agree with the matrix exponential within a bound derived from the
    tolerances (adaptive) or from dt^order (fixed steps);
(c) DirectAdjoint's gradients (of a fixed random linear functional of `sol.y`, with respect to
    y0 and A as a parameter) agree with the analytic gradient, and every other sensealg's agree
    with DirectAdjoint's, within bounds derived the same way.

Every test is seeded (`derandomize=True`, or a fixed `@seed`): it draws the same examples on every
run, and each example seeds its own tensors from a drawn integer. The default budget keeps the file to ~30 s on two
cores; the `slow` variants (`pytest -m slow`) draw ten times as many examples.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, seed, settings
from hypothesis import strategies as st

import pyode

# A small stable matrix: eigenvalues -0.51 ± 1.04i and -0.78 (a damped rotation coupled to a
# decay). It acts on the last axis, dy/dt = y Aᵀ; a tuple state splits that axis into (2,) and
# (1,), which makes a coupled linear system with the same exact solution.
A_ENTRIES = ((-0.5, 1.0, 0.0), (-1.0, -0.5, 0.3), (0.0, -0.3, -0.8))
A64 = torch.tensor(A_ENTRIES, dtype=torch.float64)
NORM_A = float(torch.linalg.matrix_norm(A64, 2))  # 1.19
# The symmetric part (A + Aᵀ)/2 has eigenvalues -0.8, -0.5, -0.5, so ‖exp(sA)‖₂ ≤ e^(-0.5 s) ≤ 1
# forward in time and ‖exp(-sA)‖₂ ≤ e^(0.8 s) backward: how much an error made along the way
# can grow by the end (`_growth`).
BACKWARD_RATE = 0.8

ADAPTIVE = (pyode.Heun(), pyode.BS3(), pyode.DP5(), pyode.Tsit5(), pyode.DP8())
FIXED = (pyode.Euler(), pyode.Midpoint(), pyode.RK4())
REVERSIBLE = (pyode.Reversible(pyode.Tsit5()), pyode.ReversibleHeun())
# The implicit solvers are drawn by their own tests (this problem is not stiff: it checks their
# accuracy and gradients, not their stability), so the draws above stay what they were.
IMPLICIT = (
    pyode.Rosenbrock23(),
    pyode.Rodas5P(),
    pyode.Kvaerno3(),
    pyode.Kvaerno5(),
    pyode.KenCarp4(),
    pyode.AutoSwitch(pyode.Tsit5(), pyode.Rodas5P()),
)
SENSEALGS = (
    pyode.DirectAdjoint(),
    pyode.BacksolveAdjoint(),
    pyode.BacksolveAdjoint(seminorm=False),
    pyode.InterpolatingAdjoint(),
    pyode.InterpolatingAdjoint(checkpointing=False),
    pyode.QuadratureAdjoint(),
    pyode.GaussAdjoint(),
    pyode.ReversibleAdjoint(),
)
# What pyode refuses, by name (see pyode/sensitivity/README.md): ReversibleAdjoint inverts the
# steps of a reversible solver only; Interpolating, Quadrature and Gauss read dense output,
# which reversible solvers do not have. Everything else must work.
NEEDS_REVERSIBLE = (pyode.ReversibleAdjoint,)
NEEDS_DENSE = (pyode.InterpolatingAdjoint, pyode.QuadratureAdjoint, pyode.GaussAdjoint)

# The bounds below are derived up to a constant; the constants were measured. With `RECORDED`
# set to a list, `_within` records (error, base, round-off) instead of asserting; the properties
# were run that way over 3,000 (solution) and 2,000 (gradient) draws of `cases()` without
# derandomize, on two versions of pyode. The largest error / base seen, in float64: 2.0 for the
# solution (BS3 near rtol 1e-3; Heun 0.5, the others below 0.25), 0.41 with fixed steps (Euler),
# 2.1 for the gradients (DirectAdjoint's dL/dA with BS3; the adjoints against DirectAdjoint
# 0.85). In float32, 2.2 of base + round-off (DP8's solution), and ReversibleAdjoint agrees with
# DirectAdjoint to 0.6 eps per step. Each constant is about five times what was seen
# or more, so the bounds leave room for other draws and machines, while a wrong coefficient, a
# dropped term or a lost gradient (errors of order 1, or of order dt instead of dt^p) still fails.
C_SOLUTION = 10.0
C_FIXED = 2.0
C_GRADIENT = 10.0
C_ROUNDOFF = 5.0


@dataclass(frozen=True)
class Case:
    """One drawn configuration. `dt` is set for fixed-step solvers only; `saveat` is None to
    save every step; `batch` is None for an unbatched state."""

    solver: pyode.AbstractSolver
    dt: float | None
    rtol: float
    atol: float
    span: tuple[float, float]
    saveat: tuple[float, ...] | None
    saveat_as_tensor: bool
    tuple_state: bool
    batch: int | None
    dtype: torch.dtype
    seed: int

    @property
    def t0(self) -> float:
        return self.span[0]

    @property
    def length(self) -> float:
        return abs(self.span[1] - self.span[0])


def _refused(sensealg, solver) -> bool:
    reversible = isinstance(solver, pyode.AbstractReversibleSolver)
    return (isinstance(sensealg, NEEDS_REVERSIBLE) and not reversible) or (
        isinstance(sensealg, NEEDS_DENSE) and reversible
    )


@st.composite
def cases(draw: st.DrawFn, sensealg=None, implicit: bool = False) -> Case:
    """A configuration; for a sensealg, mostly with a solver it supports, one in five refused.
    With `implicit`, an implicit solver (all of which every sensealg drawn with them supports)."""
    solvers = IMPLICIT if implicit else ADAPTIVE + FIXED + REVERSIBLE
    if sensealg is not None and not implicit:
        refused = draw(st.integers(0, 4)) == 0
        solvers = tuple(s for s in solvers if _refused(sensealg, s) == refused) or solvers
    solver = draw(st.sampled_from(solvers))
    dtype = torch.float32 if draw(st.integers(0, 4)) == 0 else torch.float64
    length = draw(st.floats(0.25, 2.0))
    span = (0.0, length) if draw(st.booleans()) else (length, 0.0)
    dt = None
    if solver in FIXED:
        # 4 to 200 steps over the span, and dt need not divide it (the last step is shortened).
        dt = length / draw(st.floats(4.0, 200.0))
    # float32 cannot resolve a relative tolerance much below its 1.2e-7 round-off. Second-order
    # methods take ~tol^(-1/2) steps (10k at 1e-8, 1.2 s a solve), so they stop at 1e-6.
    low = -6 if dtype == torch.float32 or solver.order <= 2 else -8
    rtol = 10 ** draw(st.floats(low, -3))
    atol = 10 ** draw(st.floats(low, -3))
    saveat = None
    if draw(st.integers(0, 4)) > 0:
        inside = draw(st.lists(st.floats(0.0, length, exclude_min=True, exclude_max=True), max_size=6, unique=True))
        grid = sorted(inside)
        if draw(st.booleans()):
            grid = [0.0, *grid]
        if draw(st.booleans()):
            grid = [*grid, length]
        if grid and grid[0] < length and draw(st.booleans()):
            # Two save times one ulp apart.
            grid = sorted({*grid, math.nextafter(grid[0], length)})
        saveat = tuple(grid) if span[0] == 0.0 else tuple(length - s for s in grid)
        # length - s may round two distinct times onto one: keep the grid strictly monotone.
        saveat = tuple(dict.fromkeys(saveat))
    return Case(
        solver=solver,
        dt=dt,
        rtol=rtol,
        atol=atol,
        span=span,
        saveat=saveat,
        saveat_as_tensor=saveat is not None and draw(st.booleans()),
        tuple_state=draw(st.booleans()),
        batch=draw(st.one_of(st.none(), st.integers(1, 4))),
        dtype=dtype,
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def _initial(case: Case) -> torch.Tensor:
    """y0 in float64, shape (3,) or (batch, 3)."""
    g = torch.Generator().manual_seed(case.seed)
    return torch.randn((3,) if case.batch is None else (case.batch, 3), generator=g, dtype=torch.float64)


def _state(y: torch.Tensor, case: Case) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The state as the solve takes it: in the case's dtype, a tuple of leaves when asked."""
    y = y.to(case.dtype)
    if case.tuple_state:
        return (y[..., :2].clone().requires_grad_(), y[..., 2:].clone().requires_grad_())
    return y.clone().requires_grad_()


def _joined(y: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """A state (or stacked states) with the tuple's parts put back together on the last axis."""
    return torch.cat(y, dim=-1) if isinstance(y, tuple) else y


def _field(a: torch.Tensor):
    def f(t, y):
        if isinstance(y, tuple):
            x, v = y
            return x @ a[:2, :2].T + v @ a[:2, 2:].T, x @ a[2:, :2].T + v @ a[2:, 2:].T
        return y @ a.T

    return f


class _LongestStep(pyode.Observer):
    def __init__(self):
        self.h = 0.0

    def accepted(self, step):
        self.h = max(self.h, abs(step.h))


def _interpolant_norm(solver) -> float:
    """‖W‖₂ of the solver's free interpolant weights (0 for cubic Hermite, whose coefficients
    are a few units: its rounding is inside the per-step term)."""
    weights = getattr(solver, "interpolant", None)
    return 0.0 if weights is None else float(torch.linalg.vector_norm(weights.cast(torch.float64, torch.device("cpu"))))


def _solve(case: Case, sensealg=None, observers=()):
    """Solve the case; returns the solution and the leaves (y0 as passed, A)."""
    a = A64.to(case.dtype).clone().requires_grad_()
    y0 = _state(_initial(case), case)
    saveat = case.saveat
    if saveat is not None and case.saveat_as_tensor:
        saveat = torch.tensor(saveat, dtype=torch.float64)
    prob = pyode.ODEProblem(_field(a), y0, case.span, params=[a])
    kwargs = dict(rtol=case.rtol, atol=case.atol) if case.dt is None else dict(dt=case.dt)
    sol = pyode.solve(prob, case.solver, saveat=saveat, sensealg=sensealg, observers=list(observers), **kwargs)
    return sol, y0, a


def _exact(y0: torch.Tensor, a: torch.Tensor, ts: torch.Tensor, t0: float) -> torch.Tensor:
    """y(t_k) = exp((t_k - t0) A) y0 along the last axis, stacked on dim 0 (float64)."""
    flows = torch.linalg.matrix_exp((ts.double() - t0)[:, None, None] * a)
    return torch.einsum("kij,...j->k...i", flows, y0)


def _steps(sol) -> int:
    return sol.stats.naccept + sol.stats.nreject


def _growth(case: Case) -> float:
    """The most an error made at one time can grow by a later one (see BACKWARD_RATE)."""
    return 1.0 if case.span[1] > case.span[0] else math.exp(BACKWARD_RATE * case.length)


def _y_max(case: Case) -> float:
    """A bound on every entry of y over the whole span: _growth × the largest ‖y0‖₂ in the batch."""
    return _growth(case) * float(torch.linalg.vector_norm(_initial(case), dim=-1).max())


def _fixed_factor(case: Case) -> float:
    """(‖A‖ dt)^p: the local error of a p-th order method on a linear problem is
    (‖A‖h)^(p+1)/(p+1)!·|y|, and |t - t0|/h steps add up to (‖A‖h)^p·‖A‖|t - t0|·|y|."""
    return (NORM_A * case.dt) ** case.solver.order


RECORDED: list | None = None


def _within(what: str, case: Case, err, base, roundoff, c: float, extra: float = 0.0) -> None:
    """Assert err ≤ c·base + C_ROUNDOFF·roundoff + extra, elementwise. When `RECORDED` is a
    list, record instead: that is how the constants were measured (see C_SOLUTION)."""
    err, base, roundoff = (torch.as_tensor(x, dtype=torch.float64) for x in (err, base, roundoff))
    if RECORDED is not None:
        RECORDED.append((what, case, err, base, roundoff, extra))
        return
    # A save time such as 5e-324 (drawn) gives values below the dtype's smallest normal number,
    # which underflow: no accuracy is owed below it.
    bound = c * base + C_ROUNDOFF * roundoff + extra + torch.finfo(case.dtype).tiny
    assert bool((err <= bound).all()), f"{what}: error {err.tolist()} above the bound {bound.tolist()} for {case}"


# ---------------------------------------------------------------------------------------------
# (a) + (b): the solution


def _check_solution(case: Case) -> None:
    longest = _LongestStep()
    sol, _, _ = _solve(case, observers=[longest])
    assert sol.retcode is pyode.ReturnCode.Success
    if case.saveat is not None:
        assert sol.t.tolist() == list(case.saveat)
    else:
        assert sol.t[0].item() == case.span[0] and sol.t[-1].item() == case.span[1]
    ys = _joined(sol.y).detach().double()
    expected = _exact(_initial(case), A64, sol.t, case.t0)
    assert ys.shape == expected.shape
    err = (ys - expected).abs().flatten(1).amax(1)  # the largest error at each save time
    y_max, growth = _y_max(case), _growth(case)
    elapsed = (sol.t.double() - case.t0).abs()
    if case.dt is None:
        # An adaptive step's local error is held below atol + rtol·|y| (per unit of the error
        # norm), and every adaptive method here propagates its higher-order solution (local
        # extrapolation): the true local error is a power above 1 of that estimate, so the step
        # count grows more slowly than the per-step error falls, and the global error, the
        # local errors carried by the flow (by at most `_growth`), is O(tol·(1 + ‖A‖|t - t0|)).
        base = growth * (case.atol + case.rtol * y_max) * (1 + NORM_A * elapsed)
    else:
        # Fixed steps: see `_fixed_factor`; the 1 + covers the cubic Hermite interpolant at save
        # points, whose error h⁴‖A‖⁴|y|/384 is below (‖A‖h)^p·|y| for p ≤ 4 and ‖A‖h ≤ 1.
        base = growth * _fixed_factor(case) * (1 + NORM_A * elapsed) * y_max
    # Round-off: about one eps·|y| per step, in the state's dtype, carried by the flow. A save
    # point inside a step also carries the interpolant's amplification of its stages' rounding
    # (each about eps·‖A‖|y|): h·Σ_j w_pj δk_j, of typical size h·‖W‖₂·eps·‖A‖|y|. DOP853's
    # interpolant (DP8) has ‖W‖₂ ≈ 1900, so in float32 its save points between steps are good to
    # about 1e-4 whatever the tolerance (measured: 9e-5 at rtol 1e-6, where its step ends are
    # good to 1.4e-6).
    interpolated = case.saveat is not None and case.dt is None
    amplified = longest.h * _interpolant_norm(case.solver) * NORM_A if interpolated else 0.0
    roundoff = growth * torch.finfo(case.dtype).eps * y_max * (_steps(sol) + 1 + amplified)
    _within("solution", case, err, base, roundoff, C_FIXED if case.dt else C_SOLUTION)


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(case=cases())
def test_solution_matches_the_matrix_exponential(case):
    _check_solution(case)


@pytest.mark.slow
@settings(max_examples=1000, deadline=None, derandomize=True, database=None)
@given(case=cases())
def test_solution_matches_the_matrix_exponential_many(case):
    _check_solution(case)


# ---------------------------------------------------------------------------------------------
# (a) + (c): gradients


def _functional(case: Case, shape: torch.Size) -> torch.Tensor:
    """W for L = Σ W ⊙ y(t_k): fixed random weights in the shape of the joined `sol.y`."""
    g = torch.Generator().manual_seed(case.seed + 1)
    return torch.randn(shape, generator=g, dtype=torch.float64)


def _gradients(case: Case, sensealg):
    """dL/dy0 (joined, float64), dL/dA (float64), the save times and the solution."""
    sol, y0, a = _solve(case, sensealg)
    ys = _joined(sol.y)
    loss = (_functional(case, ys.shape).to(ys.dtype) * ys).sum()
    leaves = (*y0, a) if case.tuple_state else (y0, a)
    # A save grid of t0 alone does not depend on A.
    grads = torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)
    return _joined(tuple(grads[:-1])).double(), grads[-1].double(), sol.t, sol


def _analytic(case: Case, ts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """dL/dy0 and dL/dA through `torch.linalg.matrix_exp`, whose backward is the exact Fréchet
    derivative of the exponential (float64, to round-off)."""
    y0 = _initial(case).requires_grad_()
    a = A64.clone().requires_grad_()
    ys = _exact(y0, a, ts, case.t0)
    loss = (_functional(case, ys.shape) * ys).sum()
    return torch.autograd.grad(loss, (y0, a))


def _weight_norms(case: Case, ts: torch.Tensor) -> torch.Tensor:
    """‖W_k[b]‖₂ for each save time k and batch row b: shape (K, *batch)."""
    return torch.linalg.vector_norm(_functional(case, _exact(_initial(case), A64, ts, case.t0).shape), dim=-1)


def _scales(case: Case, ts: torch.Tensor) -> tuple[float, float]:
    """Cancellation-free bounds on each entry of dL/dy0 and of dL/dA.

    With Φ(s) = exp(sA): dL/dy0[b] = Σ_k Φ(t_k - t0)ᵀ W_k[b], at most _growth·Σ_k ‖W_k[b]‖; and
    the adjoint a_b(s) = Σ_{k: s before t_k} Φ(t_k - s)ᵀ W_k[b] gives dL/dA = Σ_b ∫ a_b(s) y_b(s)ᵀ ds,
    at most Σ_b Σ_k |t_k - t0|·_growth·‖W_k[b]‖·_y_max.
    """
    norms = _weight_norms(case, ts)
    elapsed = (ts.double() - case.t0).abs().reshape(-1, *[1] * (norms.dim() - 1))
    growth = _growth(case)
    per_row = norms.sum(0)
    return growth * float(per_row.max()), growth * float((norms * elapsed).sum()) * _y_max(case)


def _tolerance(case: Case) -> float:
    """The relative accuracy the solves promise (see `_check_solution`): tol per unit of the
    solution for an adaptive solve, (‖A‖dt)^p for fixed steps, carried over the span."""
    if case.dt is None:
        per_unit = case.rtol + case.atol / max(_y_max(case), 1.0)
    else:
        per_unit = _fixed_factor(case)
    return _growth(case) * per_unit * (1 + NORM_A * case.length)


def _quadrature_error(case: Case, sensealg, sol) -> float:
    """The Gauss–Legendre error in QuadratureAdjoint's dL/dA, which its C controls, not the
    tolerance. An n-point rule on an interval of length Δ errs by at most
    (n!)⁴/((2n+1)((2n)!)³)·Δ^(2n+1)·max|g^(2n)|; the integrand g = a yᵀ is a product of two
    solutions of linear ODEs whose matrices have norm ‖A‖, so |g^(m)| ≤ (2‖A‖)^m·Σ_b max|a_b||y_b|,
    bounded as in `_scales`. The node count is the documented
    n_k = ceil(C·NFE·Δ_k/span), clamped to [1, max_nodes], on each interval between save points."""
    if not isinstance(sensealg, pyode.QuadratureAdjoint):
        return 0.0
    times = [case.t0, *sol.t.tolist()]
    span = abs(times[-1] - case.t0) or 1.0
    total = 0.0
    for t_a, t_b in itertools.pairwise(times):
        delta = abs(t_b - t_a)
        n = min(max(math.ceil(sensealg.C * sol.stats.nfe * delta / span), 1), sensealg.max_nodes)
        c_n = math.factorial(n) ** 4 / ((2 * n + 1) * math.factorial(2 * n) ** 3)
        total += c_n * delta ** (2 * n + 1) * (2 * NORM_A) ** (2 * n)
    # Σ_b |a_b|·|y_b|, as in `_scales`.
    return total * _growth(case) * float(_weight_norms(case, sol.t).sum()) * _y_max(case)


def _check_gradients(case: Case, sensealg) -> None:
    if _refused(sensealg, case.solver):
        # (a): refused by name: the message names the sensealg and what it needs of the solver.
        with pytest.raises((TypeError, ValueError)) as info:
            _gradients(case, sensealg)
        message = str(info.value)
        assert type(sensealg).__name__ in message and "solver" in message, message
        return
    if not isinstance(sensealg, pyode.DirectAdjoint):
        # First, so that a failure of DirectAdjoint does not hide one of the sensealg drawn.
        got_y0, got_a, got_ts, sol = _gradients(case, sensealg)
    direct_y0, direct_a, ts, direct_sol = _gradients(case, pyode.DirectAdjoint())
    exact_y0, exact_a = _analytic(case, ts)
    scale_y0, scale_a = _scales(case, ts)
    tol = _tolerance(case)
    eps_steps = torch.finfo(case.dtype).eps * (_steps(direct_sol) + 1)
    # (c) DirectAdjoint differentiates the discrete solve. On a linear problem that solve is
    # linear in y0 and its error is smooth in A, so its derivative errs by O(tol) relative to
    # the gradient's cancellation-free size, as the solution does relative to |y|.
    err_y0, err_a = (direct_y0 - exact_y0).abs().max(), (direct_a - exact_a).abs().max()
    _within("Direct dL/dy0", case, err_y0, tol * scale_y0, eps_steps * scale_y0, C_GRADIENT)
    _within("Direct dL/dA", case, err_a, tol * scale_a, eps_steps * scale_a, C_GRADIENT)
    if isinstance(sensealg, pyode.DirectAdjoint):
        return
    # Every sensealg runs the same forward loop, so it saves at the same times.
    assert got_ts.tolist() == ts.tolist()
    name = type(sensealg).__name__
    err_y0, err_a = (got_y0 - direct_y0).abs().max(), (got_a - direct_a).abs().max()
    if isinstance(sensealg, pyode.ReversibleAdjoint):
        # The same discrete gradient as DirectAdjoint, reconstructed step by step: round-off only.
        # Reversible's inverse divides by its coupling 0.999 once a step, which amplifies by less
        # than 1.1 over the ≤ 100 steps Reversible(Tsit5()) takes here; ReversibleHeun's divides
        # by nothing.
        _within(f"{name} dL/dy0", case, err_y0, 0.0, eps_steps * scale_y0, C_GRADIENT)
        _within(f"{name} dL/dA", case, err_a, 0.0, eps_steps * scale_a, C_GRADIENT)
        return
    # An adjoint's backward solve has the forward tolerances (or dt), so it is as close to the
    # exact gradient as DirectAdjoint is: the two are within twice that bound. GQ adds the
    # error of its quadrature, which its C controls.
    quad = _quadrature_error(case, sensealg, sol)
    _within(f"{name} dL/dy0", case, err_y0, 2 * tol * scale_y0, 2 * eps_steps * scale_y0, C_GRADIENT)
    _within(f"{name} dL/dA", case, err_a, 2 * tol * scale_a, 2 * eps_steps * scale_a, C_GRADIENT, quad)


def _gradient_property(sensealg, examples: int) -> None:
    # A fixed seed per sensealg (derandomize would draw the same examples for each).
    @seed(SENSEALGS.index(sensealg))
    @settings(max_examples=examples, deadline=None, database=None)
    @given(case=cases(sensealg))
    def check(case):
        _check_gradients(case, sensealg)

    check()


@pytest.mark.parametrize("sensealg", SENSEALGS, ids=repr)
def test_adjoint_gradients_match_direct_and_the_analytic_gradient(sensealg):
    _gradient_property(sensealg, examples=12)


@pytest.mark.slow
@pytest.mark.parametrize("sensealg", SENSEALGS, ids=repr)
def test_adjoint_gradients_match_direct_and_the_analytic_gradient_many(sensealg):
    _gradient_property(sensealg, examples=120)


# ---------------------------------------------------------------------------------------------
# The implicit solvers: the same properties, with every sensealg that supports them. On this
# non-stiff problem even the methods that integrate z backward (unstable on stiff problems) are
# accurate, and the checkpointed quadrature adjoints read z from the forward solution.

IMPLICIT_SENSEALGS = (
    pyode.DirectAdjoint(),
    pyode.InterpolatingAdjoint(),
    pyode.InterpolatingAdjoint(checkpointing=False),
    pyode.GaussAdjoint(checkpointing=True),
    pyode.QuadratureAdjoint(checkpointing=True),
    pyode.GaussAdjoint(),
    pyode.BacksolveAdjoint(),
)


@settings(max_examples=24, deadline=None, derandomize=True, database=None)
@given(case=cases(implicit=True))
def test_implicit_solution_matches_the_matrix_exponential(case):
    _check_solution(case)


@pytest.mark.parametrize("sensealg", IMPLICIT_SENSEALGS, ids=repr)
def test_implicit_gradients_match_direct_and_the_analytic_gradient(sensealg):
    @seed(100 + IMPLICIT_SENSEALGS.index(sensealg))
    @settings(max_examples=5, deadline=None, database=None)
    @given(case=cases(sensealg, implicit=True))
    def check(case):
        _check_gradients(case, sensealg)

    check()
