"""The implicit solvers: Rosenbrock23, Rodas5P, Kvaerno3, Kvaerno5 and KenCarp4.

Convergence orders on a smooth problem; the stiff benchmarks of `tests/stiff_problems.py`
(Robertson, Van der Pol, HIRES, Pollution) against scipy's Radau at rtol 1e-12; a non-stiff
solver failing where they succeed; the Jacobian options (independent batches, a user `jac`,
finite differences, running-integral channels); the IMEX split; gradients; float32; bad input.

Run `pytest -s` to see the step counts of the stiff problems (one line per solve). Measured
(torch 2.13, float64; error = `relative_error` with floor 1e5·atol, see `_STIFF_CASES`; every
ESDIRK step computes a fresh Jacobian):

| problem | solver | rtol | atol | steps (acc+rej) | nfe | njac | nlu | newton | error |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
| Robertson [0, 1e5] | Rodas5P | 1e-7 | 1e-14 | 199+4 | 1824 | 199 | 203 | 0 | 1.3e-6 |
| Robertson [0, 1e5] | Kvaerno5 | 1e-7 | 1e-14 | 121+0 | 2455 | 121 | 121 | 2332 | 6.3e-4 |
| Robertson [0, 1e5] | KenCarp4 | 1e-7 | 1e-14 | 149+1 | 2640 | 149 | 150 | 2489 | 9.7e-5 |
| Robertson [0, 1e5] | Kvaerno3 | 1e-6 | 1e-14 | 875+1 | 5560 | 875 | 876 | 4683 | 2.4e-4 |
| Robertson [0, 1e5] | Rosenbrock23 | 1e-5 | 1e-14 | 904+0 | 2714 | 904 | 904 | 0 | 1.4e-4 |
| Robertson [0, 1e11] | Rodas5P | 1e-7 | 1e-20 | 492+1 | 4437 | 492 | 493 | 0 | 9.1e-8 |
| Robertson [0, 1e11] | Kvaerno5 | 1e-7 | 1e-16 | 269+0 | 5363 | 269 | 269 | 5092 | 1.3e-3 |
| HIRES | Rodas5P | 1e-7 | 1e-12 | 484+3 | 4381 | 484 | 487 | 0 | 2.1e-8 |
| HIRES | Kvaerno5 | 1e-7 | 1e-12 | 213+16 | 4901 | 213 | 229 | 4686 | 1.4e-6 |
| HIRES | KenCarp4 | 1e-7 | 1e-12 | 232+12 | 4496 | 232 | 244 | 4262 | 1.6e-6 |
| HIRES | Kvaerno3 | 1e-6 | 1e-12 | 899+2 | 5906 | 899 | 901 | 5005 | 1.3e-5 |
| HIRES | Rosenbrock23 | 1e-5 | 1e-12 | 1021+0 | 3065 | 1021 | 1021 | 0 | 2.3e-4 |
| Pollution | Rodas5P | 1e-7 | 1e-14 | 198+3 | 1807 | 198 | 201 | 0 | 1.4e-8 |
| Pollution | Kvaerno5 | 1e-7 | 1e-14 | 133+3 | 2301 | 133 | 136 | 2166 | 2.9e-6 |
| Pollution | KenCarp4 | 1e-7 | 1e-14 | 134+3 | 2005 | 134 | 137 | 1869 | 1.5e-6 |
| Pollution | Kvaerno3 | 1e-6 | 1e-14 | 545+2 | 3308 | 545 | 547 | 2761 | 1.1e-6 |
| Pollution | Rosenbrock23 | 1e-5 | 1e-14 | 362+0 | 1088 | 362 | 362 | 0 | 1.9e-4 |
| VdP mu=1e3 | Rodas5P | 1e-7 | 1e-10 | 777+21 | 7162 | 777 | 798 | 0 | 7.9e-8 |
| VdP mu=1e3 | Kvaerno5 | 1e-7 | 1e-10 | 410+16 | 7937 | 410 | 426 | 7525 | 9.2e-6 |
| VdP mu=1e3 | KenCarp4 | 1e-7 | 1e-10 | 506+16 | 8025 | 506 | 522 | 7517 | 2.2e-6 |
| VdP mu=1e3 | Kvaerno3 | 1e-6 | 1e-10 | 2403+17 | 15064 | 2403 | 2420 | 12659 | 3.0e-6 |
| VdP mu=1e3 | Rosenbrock23 | 1e-5 | 1e-10 | 1301+22 | 3949 | 1301 | 1323 | 0 | 1.8e-4 |
| VdP mu=1e6 | Rodas5P | 1e-7 | 1e-10 | 1200+18 | 10945 | 1200 | 1218 | 0 | 1.9e-7 |
| VdP mu=1e6 | Kvaerno5 | 1e-7 | 1e-10 | 707+142 | 15868 | 707 | 849 | 15159 | 5.8e-5 |
| VdP mu=1e6 | KenCarp4 | 1e-7 | 1e-10 | 733+72 | 13566 | 733 | 805 | 12831 | 3.7e-5 |
| VdP mu=1e6 | Kvaerno3 | 1e-6 | 1e-10 | 3871+16 | 24856 | 3871 | 3887 | 20983 | 4.6e-6 |
| VdP mu=1e6 | Rosenbrock23 | 1e-5 | 1e-10 | 2783+26 | 8403 | 2783 | 2809 | 0 | 2.5e-4 |
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import pyode

from .. import stiff_problems as sp

F64 = torch.float64


def _slope(hs, errors) -> float:
    return float(np.polyfit(np.log(hs), np.log(errors), 1)[0])


def _report(label: str, sol, error: float | None = None) -> None:
    """One line per stiff solve, for `pytest -s`."""
    s = sol.stats
    tail = "" if error is None else f" error={error:.2e}"
    print(
        f"\n{label}: {sol.retcode.name} steps={s.naccept}+{s.nreject} nfe={s.nfe} njac={s.njac} "
        f"nlu={s.nlu} nnewton={s.nnewton}{tail}"
    )


def _problem(p: sp.StiffProblem, dtype=F64, **kwargs) -> pyode.ODEProblem:
    params = p.params
    return pyode.ODEProblem(lambda t, y: p.f(t, y, **params), p.y0_tensor(dtype), p.tspan, **kwargs)


# ---------------------------------------------------------------------------------------------
# The problems themselves


@pytest.mark.parametrize("name", ["hires", pytest.param("pollution", marks=pytest.mark.slow)])
def test_transcription_matches_the_published_solution(name):
    """Rate constants and equations as in the IVP test set: scipy's Radau on our f reaches the
    test set's reference at the end point. Radau at rtol 1e-12 lands within ~1e-13 relative
    (measured 1e-14); a single mistyped digit in a rate constant moves some component by far
    more than 1e-9."""
    problem = {"hires": sp.HIRES, "pollution": sp.POLLUTION}[name]
    t1, published = sp.PUBLISHED[name]
    assert problem.tspan[1] == t1 and problem.saveat[-1] == t1
    ours = sp.reference(problem)[-1]
    np.testing.assert_allclose(ours, published, rtol=1e-9, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("problem", [sp.ROBERTSON, sp.VAN_DER_POL_1E6], ids=lambda p: p.name)
def test_long_references_match_the_published_solution(problem):
    # Robertson over [0, 1e11]: measured 4.5e-13. VDPOL (mu = 1e6 here is the test set's μ = 1e3
    # in the unscaled form, see stiff_problems.py): measured 1.3e-14 on y1 and y2.
    t1, published = sp.PUBLISHED[problem.name]
    assert problem.tspan[1] == t1 and problem.saveat[-1] == t1
    np.testing.assert_allclose(sp.reference(problem)[-1], published, rtol=1e-9, atol=0)


@pytest.mark.parametrize(
    "problem",
    [sp.ROBERTSON, sp.VAN_DER_POL_1E3, sp.HIRES, sp.POLLUTION, sp.reaction_diffusion_problem(6, 1.0)],
    ids=lambda p: p.name,
)
def test_vector_fields_act_on_the_last_axis(problem):
    """The same f steps one system, a batch of them (independent_batch tests), and numpy
    arrays (scipy's references): all three must agree, entry for entry."""
    n = len(problem.y0)
    y = 0.5 + torch.rand(4, n, dtype=F64)
    batched = problem.f(0.3, y, **problem.params)
    assert batched.shape == (4, n)
    for b in range(4):
        one = problem.f(0.3, y[b], **problem.params)
        # to rounding: a matrix product may sum in another order (the Laplacian cancels)
        scale = 1e-13 * float(one.abs().max())
        torch.testing.assert_close(one, batched[b], rtol=1e-13, atol=scale)
        np.testing.assert_allclose(problem.f(0.3, y[b].numpy(), **problem.params), one.numpy(), rtol=1e-13, atol=scale)


# ---------------------------------------------------------------------------------------------
# Convergence orders with fixed steps


# (solver, order, dense order q, numbers of steps over [0, 3]). Step counts keep the errors in
# the asymptotic range and far above Newton's stopping error (rtol = atol = 1e-11 below; with
# fixed steps the tolerances only set Newton's test) and round-off: the smallest error is 1e-9.
ORDER_CASES = [
    pytest.param(pyode.Rosenbrock23(), 2, 2, [16, 24, 32, 48], id="Rosenbrock23"),
    pytest.param(pyode.Rodas5P(), 5, 4, [16, 24, 32, 48], id="Rodas5P"),
    pytest.param(pyode.Kvaerno3(), 3, 3, [24, 32, 48, 64], id="Kvaerno3"),
    pytest.param(pyode.Kvaerno5(), 5, 3, [16, 24, 32, 48], id="Kvaerno5"),
    pytest.param(pyode.KenCarp4(), 4, 3, [16, 24, 32, 48], id="KenCarp4"),
]


def _fixed_step_errors(solver, steps, T=3.0):
    """Errors at the end point, and the largest over 97 points between steps."""
    queries = np.linspace(0, T, 99)[1:-1] + 1e-3  # generic θ: never on a step boundary
    exact = np.stack([sp.manufactured_exact(t) for t in [*queries, T]])
    end, between = [], []
    for n in steps:
        prob = pyode.ODEProblem(sp.manufactured, torch.tensor(sp.manufactured_exact(0.0), dtype=F64), (0.0, T))
        sol = pyode.solve(prob, solver, dt=T / n, adaptive=False, saveat=[*queries, T], rtol=1e-11, atol=1e-11)
        assert sol.stats.naccept == n and sol.stats.nreject == 0
        errors = np.abs(sol.y.numpy() - exact).max(axis=-1)
        end.append(errors[-1])
        between.append(errors[:-1].max())
    return end, between


@pytest.mark.parametrize("solver, order, dense_order, steps", ORDER_CASES)
def test_fixed_step_order(solver, order, dense_order, steps):
    assert (solver.order, solver.dense_order) == (order, dense_order)
    hs = [3.0 / n for n in steps]
    end, between = _fixed_step_errors(solver, steps)
    assert abs(_slope(hs, end) - order) < 0.3, f"end-point errors {end}"
    # Between steps the interpolant of order q adds a local error O(h^(q+1)) to the global error
    # O(h^p), so interior points converge at min(p, q + 1) (as in tests/test_convergence.py):
    # Rosenbrock23 2, Rodas5P 5, Hermite (q = 3) 3 for Kvaerno3 and 4 for Kvaerno5, KenCarp4.
    # Measured: 2.00, 4.89, 2.94, 4.01, 3.99.
    assert abs(_slope(hs, between) - min(order, dense_order + 1)) < 0.3, f"interpolated errors {between}"


def test_adaptive_error_follows_tolerance():
    """Tolerance proportionality on the smooth problem: each hundredfold cut of rtol cuts the
    error (and the last is small); a solver that ignored rtol would fail the chain."""
    for solver in (pyode.Rodas5P(), pyode.Kvaerno5()):
        errors = []
        for rtol in (1e-4, 1e-6, 1e-8):
            prob = pyode.ODEProblem(sp.manufactured, torch.tensor(sp.manufactured_exact(0.0), dtype=F64), (0.0, 3.0))
            sol = pyode.solve(prob, solver, rtol=rtol, atol=rtol, saveat=[3.0])
            errors.append(float(np.abs(sol.y[-1].numpy() - sp.manufactured_exact(3.0)).max()))
        assert errors[0] > errors[1] > errors[2], (solver, errors)
        assert errors[2] < 1e-6, (solver, errors)


# ---------------------------------------------------------------------------------------------
# Stiff problems against scipy's Radau


_KVAERNO5_GLOBAL = (
    "Kvaerno5 misses 1e-5 at rtol 1e-7 here: 1.8e-5 on Robertson [0, 1e5], 2.2e-5 on VdP mu=1e6, 2.3e-4 on "
    "[0, 1e11] (it meets it on HIRES 1.9e-6, Pollution 3.3e-6, VdP mu=1e3 9.4e-6). Newton's tolerance was "
    "the cause at first (κ = 0.01 and a first iterate accepted at 10 tolerances: 6e-4 on Robertson); with "
    "κ = 1e-3 and the first correction itself below κ, what remains is the global error of a method steered "
    "by its embedded 4th-order stage, through an error filter that damps stiff components"
)

# (problem, atol, solver, rtol, bound on `relative_error` with floor 1e5·atol). The floor: a
# component below 1e5·atol is governed by atol (the error test allows it an error of about atol
# per step), so it is held to an absolute 1e-5·floor = atol rather than to a relative 1e-5.
# atol per problem: below every component of interest over the save points —
#   Robertson [0, 1e5]: y2 ≥ 7e-8, y3 ≥ 1.6e-11 at t = 1e-5: atol 1e-14 (floor 1e-9).
#   Robertson [0, 1e11]: y2 falls to 8e-14 and y1 to 2e-8: atol 1e-20 (floor 1e-15) for Rodas5P;
#     1e-16 for Kvaerno5 (floor 1e-11: y2 after t = 1e7 held to 1e-16 absolute).
#   HIRES: smallest component at the save points 5.9e-5: atol 1e-12 (floor 1e-7).
#   Pollution: y16 ≈ 4e-18 is held in absolute terms; y3 ≈ 4e-9, y10, y11 ≈ 1e-8 relative: atol 1e-14.
#   Van der Pol: the save points lie in the slow phases where |y| = O(1): atol 1e-10.
# Bounds: 1e-5 at rtol 1e-7 for the fifth-order methods (the lead's target: 100× rtol for the
# global error). The others at what they reach, with ~3x margin over the measured error:
#   KenCarp4 at rtol 1e-7: 3e-4 (3rd-order error estimate; measured 1.5e-6 to 9.7e-5, the most
#     on Robertson, where Newton's stopping error weighs as for Kvaerno5).
#   Kvaerno3 at rtol 1e-6: 1e-3 (2nd-order error estimate; measured 1.1e-6 to 2.4e-4; at 1e-7
#     it needs 5000+ steps on VdP and over 6000 on VdP mu=1e6).
#   Rosenbrock23 at rtol 1e-5: 1e-3 (a low-order method for loose tolerances, 6000+ steps on
#     HIRES at 1e-7; measured 1.3e-4 to 2.5e-4).
_STIFF_CASES = [
    pytest.param(sp.ROBERTSON_1E5, 1e-14, pyode.Rodas5P(), 1e-7, 1e-5, id="robertson_1e5-Rodas5P"),
    pytest.param(sp.HIRES, 1e-12, pyode.Kvaerno5(), 1e-7, 1e-5, id="hires-Kvaerno5"),
    *(
        pytest.param(problem, atol, solver, rtol, bound, id=f"{problem.name}-{type(solver).__name__}", marks=marks)
        for problem, atol, solver, rtol, bound, marks in (
            (
                sp.ROBERTSON_1E5,
                1e-14,
                pyode.Kvaerno5(),
                1e-7,
                1e-5,
                [pytest.mark.xfail(strict=True, reason=_KVAERNO5_GLOBAL)],
            ),
            (sp.HIRES, 1e-12, pyode.Rodas5P(), 1e-7, 1e-5, []),
            (sp.POLLUTION, 1e-14, pyode.Rodas5P(), 1e-7, 1e-5, []),
            (sp.POLLUTION, 1e-14, pyode.Kvaerno5(), 1e-7, 1e-5, []),
            (sp.VAN_DER_POL_1E3, 1e-10, pyode.Rodas5P(), 1e-7, 1e-5, []),
            (sp.VAN_DER_POL_1E3, 1e-10, pyode.Kvaerno5(), 1e-7, 1e-5, []),
            (sp.VAN_DER_POL_1E6, 1e-10, pyode.Rodas5P(), 1e-7, 1e-5, []),
            (
                sp.VAN_DER_POL_1E6,
                1e-10,
                pyode.Kvaerno5(),
                1e-7,
                1e-5,
                [pytest.mark.xfail(strict=True, reason=_KVAERNO5_GLOBAL)],
            ),
            (sp.ROBERTSON, 1e-20, pyode.Rodas5P(), 1e-7, 1e-5, []),
            (
                sp.ROBERTSON,
                1e-16,
                pyode.Kvaerno5(),
                1e-7,
                1e-5,
                [pytest.mark.xfail(strict=True, reason=_KVAERNO5_GLOBAL)],
            ),
            *(
                (problem, atol, solver, rtol, bound, [])
                for solver, rtol, bound in (
                    (pyode.KenCarp4(), 1e-7, 3e-4),
                    (pyode.Kvaerno3(), 1e-6, 1e-3),
                    (pyode.Rosenbrock23(), 1e-5, 1e-3),
                )
                for problem, atol in (
                    (sp.ROBERTSON_1E5, 1e-14),
                    (sp.HIRES, 1e-12),
                    (sp.POLLUTION, 1e-14),
                    (sp.VAN_DER_POL_1E3, 1e-10),
                    (sp.VAN_DER_POL_1E6, 1e-10),
                )
            ),
        )
        for marks in [[pytest.mark.slow, *marks]]
    ),
]


@pytest.mark.parametrize("problem, atol, solver, rtol, bound", _STIFF_CASES)
def test_stiff_problem_matches_radau(problem, atol, solver, rtol, bound):
    ref = sp.reference(problem)
    # max_steps bounds the runs that go wrong (20 000 steps would take a minute)
    sol = pyode.solve(
        _problem(problem),
        solver,
        rtol=rtol,
        atol=atol,
        saveat=list(problem.saveat),
        max_steps=6000,
        throw=False,
    )
    error = sp.relative_error(sol.y.numpy(), ref, 1e5 * atol) if sol.retcode.successful else math.inf
    _report(f"{problem.name} [0, {problem.tspan[1]:g}] {solver!r} rtol={rtol:g} atol={atol:g}", sol, error)
    assert sol.retcode is pyode.ReturnCode.Success
    assert error < bound


def test_nonstiff_solver_gives_up_where_rodas5p_succeeds():
    """Robertson is stiff: once y3 has grown, J has an eigenvalue λ ≈ -1e4·y3, and Tsit5's
    stability region holds its steps below ~3.5/|λ|, so 2000 steps end long before t = 1e5;
    Rodas5P needs ~200."""
    prob = _problem(sp.ROBERTSON_1E5)
    with pytest.raises(pyode.SolveError) as info:
        pyode.solve(prob, pyode.Tsit5(), rtol=1e-6, atol=1e-10, max_steps=2000, saveat=[1e5])
    assert info.value.retcode is pyode.ReturnCode.MaxIters
    assert info.value.t < 1e5
    sol = pyode.solve(prob, pyode.Rodas5P(), rtol=1e-6, atol=1e-10, saveat=list(sp.ROBERTSON_1E5.saveat))
    _report("robertson Rodas5P rtol=1e-6", sol)
    assert sol.stats.naccept + sol.stats.nreject < 500
    # and it is right: rtol 1e-6 on components above 1e5·atol = 1e-5 (y3 earlier is tiny)
    assert sp.relative_error(sol.y.numpy(), sp.reference(sp.ROBERTSON_1E5), 1e-5) < 1e-4


def test_kvaerno5_steps_on_robertson():
    """A regression test: Robertson over [0, 1], where Rodas5P and KenCarp4 need ~60 steps at
    rtol 1e-7. Kvaerno5 once took 1640, with 3 Jacobians (all from t ≈ 0, where y2 = y3 = 0 and
    J is nearly zero): Newton kept converging with the stale J as a fixed-point iteration, and
    the error filter M⁻¹·est built on it held h·|λ| ≈ 1 (h = 3.3e-4 at t = 0.02, error ratio
    0.44 on every step). With a Jacobian per step it takes 47."""
    prob = pyode.ODEProblem(lambda t, y: sp.robertson(t, y), sp.ROBERTSON.y0_tensor(), (0.0, 1.0))
    sol = pyode.solve(prob, pyode.Kvaerno5(), rtol=1e-7, atol=1e-14, max_steps=400, throw=False, saveat=[1.0])
    _report("robertson [0, 1] Kvaerno5", sol)
    assert sol.retcode is pyode.ReturnCode.Success
    assert sol.stats.naccept + sol.stats.nreject < 150
    assert sp.relative_error(sol.y.numpy(), sp.reference(ROBERTSON_1E2, saveat=(1.0,)), 1e-9) < 1e-5


def test_default_dtmin_on_a_long_span():
    """A regression test: the default dtmin was 16·eps·max(|t0|, |t1|, span), 3.6e-4 for
    [0, 1e11], so the first rejected step in Robertson's initial layer (h ~ 1e-4) ended the solve
    with DtLessThanMin after 12 steps. Checked against the test set's y(1e11) (rtol 1e-5: error
    measured 1.4e-5 relative on y1, y3; y2 = 8e-14 held to 1e-14 absolute)."""
    sol = pyode.solve(_problem(sp.ROBERTSON), pyode.Rodas5P(), rtol=1e-5, atol=1e-14, saveat=[1e11])
    _report("robertson [0, 1e11] Rodas5P, default dtmin", sol)
    published = np.array(sp.PUBLISHED["robertson"][1])
    assert sp.relative_error(sol.y[-1].numpy(), published, 1e-9) < 1e-3


# ---------------------------------------------------------------------------------------------
# independent_batch=True: B independent systems, block-diagonal Jacobian, batched LU

B = 16


def _varied(base: float | tuple, generator_seed: int, shape) -> torch.Tensor:
    g = torch.Generator().manual_seed(generator_seed)
    return torch.as_tensor(base, dtype=F64) * (0.7 + 0.6 * torch.rand(shape, generator=g, dtype=F64))


def _robertson_batch():
    k = _varied((0.04, 3e7, 1e4), 1, (B, 3))
    f = lambda t, y: sp.robertson(t, y, k[:, 0], k[:, 1], k[:, 2])  # noqa: E731
    y0 = sp.ROBERTSON.y0_tensor().expand(B, 3).clone()
    params = {"k1": k[:, 0], "k2": k[:, 1], "k3": k[:, 2]}
    return f, y0, (0.0, 10.0), [1e-3, 0.1, 1.0, 10.0], sp.ROBERTSON, params


def _hires_batch():
    k = _varied(280.0, 2, (B,))
    f = lambda t, y: sp.hires(t, y, k=k)  # noqa: E731
    # the initial states differ too: y1(0) in [0.7, 1.3]
    y0 = sp.HIRES.y0_tensor().expand(B, 8).clone()
    y0[:, 0] = _varied(1.0, 3, (B,))
    return f, y0, (0.0, 1.0), [0.25, 0.5, 1.0], sp.HIRES, {"k": k}


@pytest.mark.parametrize(
    "make, solver, atol",
    [
        pytest.param(_robertson_batch, pyode.Rodas5P(), 1e-14, id="robertson-Rodas5P"),
        pytest.param(_robertson_batch, pyode.Kvaerno5(), 1e-14, id="robertson-Kvaerno5"),
        pytest.param(_hires_batch, pyode.Kvaerno5(), 1e-12, id="hires-Kvaerno5", marks=pytest.mark.slow),
    ],
)
def test_independent_batch_equals_the_dense_jacobian(make, solver, atol):
    f, y0, tspan, saveat, problem, params = make()
    sols = {}
    for flag in (True, False):
        prob = pyode.ODEProblem(f, y0, tspan, independent_batch=flag)
        sols[flag] = pyode.solve(prob, solver, rtol=1e-7, atol=atol, saveat=saveat)
        _report(f"{problem.name} batch of {B} {solver!r} independent_batch={flag}", sols[flag])
    blocked, dense = sols[True], sols[False]
    # The same Jacobian entries (the off-diagonal blocks are exact zeros), factored per block
    # rather than as one (B·n)² matrix: the same steps and counts, and states equal to rounding
    # (a different LU pivoting order changes the last bits; Newton and the step controller
    # see differences ~1e-15 relative). Floor 1e-9 as in the stiff cases.
    for name in ("naccept", "nreject", "nfe", "njac", "nlu", "nnewton"):
        assert getattr(blocked.stats, name) == getattr(dense.stats, name), name
    assert sp.relative_error(blocked.y.numpy(), dense.y.numpy(), 1e5 * atol) < 1e-12
    # Each system against scipy (all B solved as one system): the joint solve takes one step
    # size for all, so it matches each system alone only to tolerance: 1e-5 as above.
    ref = sp.reference(problem.with_span(tspan[1], tuple(saveat)), y0=y0, **params)
    assert sp.relative_error(blocked.y.numpy(), ref, 1e5 * atol) < 1e-5


def test_independent_batch_user_jacobian():
    """With independent_batch, jac returns the B blocks (B, n, n); the solve equals the
    autodiff one to rounding, and a dense (B·n, B·n) matrix is refused by name."""
    f, y0, tspan, saveat, _, params = _robertson_batch()
    k1, k2, k3 = params["k1"], params["k2"], params["k3"]

    def jac(t, y):
        return _robertson_jacobian(y, k1, k2, k3)

    auto = pyode.solve(
        pyode.ODEProblem(f, y0, tspan, independent_batch=True), pyode.Rodas5P(), rtol=1e-7, atol=1e-14, saveat=saveat
    )
    user = pyode.solve(
        pyode.ODEProblem(f, y0, tspan, independent_batch=True, jac=jac),
        pyode.Rodas5P(),
        rtol=1e-7,
        atol=1e-14,
        saveat=saveat,
    )
    assert (user.stats.naccept, user.stats.njac) == (auto.stats.naccept, auto.stats.njac)
    assert sp.relative_error(user.y.numpy(), auto.y.numpy(), 1e-9) < 1e-12

    def dense_jac(t, y):
        return torch.block_diag(*jac(t, y))

    prob = pyode.ODEProblem(f, y0, tspan, independent_batch=True, jac=dense_jac)
    with pytest.raises(ValueError, match=r"\(16, 3, 3\)"):
        pyode.solve(prob, pyode.Rodas5P(), saveat=saveat)


# ---------------------------------------------------------------------------------------------
# A user Jacobian, and finite differences


def _robertson_jacobian(y, k1=0.04, k2=3e7, k3=1e4):
    """∂f/∂y of Robertson (Hairer & Wanner IV.10), on the last axis: (..., 3, 3)."""
    y2, y3 = y[..., 1], y[..., 2]
    k1 = torch.as_tensor(k1, dtype=y.dtype).expand_as(y2)
    zero = torch.zeros_like(y2)
    rows = (
        (-k1, k3 * y3, k3 * y2),
        (k1, -k3 * y3 - 2 * k2 * y2, -k3 * y2),
        (zero, 2 * k2 * y2, zero),
    )
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def test_robertson_jacobian_is_right():
    y = torch.tensor([0.7, 2e-5, 0.3], dtype=F64)
    torch.testing.assert_close(_robertson_jacobian(y), torch.func.jacrev(lambda z: sp.robertson(0.0, z))(y))


ROBERTSON_1E2 = sp.ROBERTSON.with_span(100.0, (1e-3, 0.1, 1.0, 10.0, 100.0))


@pytest.mark.parametrize("solver", [pyode.Rodas5P(), pyode.KenCarp4()], ids=repr)
def test_user_jacobian_equals_autodiff(solver):
    """The analytic J equals the autodiff one to rounding, so the solves take the same steps
    and agree to ~1e-13 (differences of a few ulps in J, amplified by a few solves)."""
    calls = []

    def jac(t, y):
        calls.append(t)
        return _robertson_jacobian(y)

    auto = pyode.solve(_problem(ROBERTSON_1E2), solver, rtol=1e-7, atol=1e-14, saveat=list(ROBERTSON_1E2.saveat))
    user = pyode.solve(
        _problem(ROBERTSON_1E2, jac=jac), solver, rtol=1e-7, atol=1e-14, saveat=list(ROBERTSON_1E2.saveat)
    )
    _report(f"robertson [0, 100] {solver!r} autodiff J", auto)
    _report(f"robertson [0, 100] {solver!r} user J", user)
    assert len(calls) == user.stats.njac > 0
    assert (user.stats.naccept, user.stats.nreject, user.stats.njac) == (
        auto.stats.naccept,
        auto.stats.nreject,
        auto.stats.njac,
    )
    assert sp.relative_error(user.y.numpy(), auto.y.numpy(), 1e-9) < 1e-11


def test_wrong_jacobian_shape_names_the_expected_one():
    prob = _problem(ROBERTSON_1E2, jac=lambda t, y: torch.eye(2, dtype=F64))
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        pyode.solve(prob, pyode.Rodas5P(), saveat=[100.0])
    prob = _problem(ROBERTSON_1E2, jac=lambda t, y: torch.eye(3, dtype=F64).reshape(1, 3, 3))
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        pyode.solve(prob, pyode.Kvaerno5(), saveat=[100.0])
    prob = _problem(ROBERTSON_1E2, jac=lambda t, y: np.eye(3))
    with pytest.raises(TypeError, match="tensor"):
        pyode.solve(prob, pyode.Rodas5P(), saveat=[100.0])


HIRES_1 = sp.HIRES.with_span(1.0, (0.25, 0.5, 1.0))


@pytest.mark.parametrize(
    "solver, problem, atol",
    [
        (pyode.Rodas5P(autodiff=False), ROBERTSON_1E2, 1e-14),
        # Kvaerno5 on HIRES: on Robertson it misses 1e-5 anyway (see _KVAERNO5_GLOBAL)
        (pyode.Kvaerno5(autodiff=False), HIRES_1, 1e-12),
    ],
    ids=lambda v: repr(v) if isinstance(v, pyode.AbstractSolver) else None,
)
def test_finite_difference_jacobian_agrees(solver, problem, atol):
    """Forward differences give J to ~sqrt(eps)·|J| ≈ 1e-8 relative. Rosenbrock methods take J
    as exact, so the error enters each step as O(h·‖ΔJ‖·‖y‖); ESDIRK methods only converge
    Newton with it. Both stay within the tolerance of the autodiff solve and of Radau: 1e-5
    relative at rtol 1e-7, as for the stiff problems (measured ~1e-8 and ~1e-6)."""
    saveat = list(problem.saveat)
    auto = pyode.solve(_problem(problem), type(solver)(), rtol=1e-7, atol=atol, saveat=saveat)
    fd = pyode.solve(_problem(problem), solver, rtol=1e-7, atol=atol, saveat=saveat)
    _report(f"{problem.name} [0, {problem.tspan[1]:g}] {solver!r}", fd)
    assert repr(solver).endswith("(autodiff=False)")
    assert fd.stats.njac > 0
    assert sp.relative_error(fd.y.numpy(), auto.y.numpy(), 1e5 * atol) < 1e-5
    assert sp.relative_error(fd.y.numpy(), sp.reference(problem), 1e5 * atol) < 1e-5


# ---------------------------------------------------------------------------------------------
# integral_parts: running-integral channels left out of the Jacobian

# HIRES over [0, 0.25]: every stage of a Rosenbrock step with integral channels costs a
# Jacobian–vector product for the coupling (a forward-mode jvp of f, ~10 ms here), so spans stay short.
HIRES_QUARTER = sp.HIRES.with_span(0.25, (0.1, 0.25))


def _hires_with_flux(t, state):
    """HIRES and q' = 280·y6·y8, the reaction flux integrated (a running cost)."""
    y = state[0]
    return sp.hires(t, y), (280.0 * y[5] * y[7]).reshape(1)


@pytest.mark.parametrize(
    "solver, rtol, rel, bound",
    [
        # Rosenbrock stages solve with M exactly either way ([[M_dd, 0], [-hγJ_qd, I]] by blocks
        # plus the coupling J_qd·x_d): the same numbers up to the order of the operations.
        (pyode.Rodas5P(), 1e-7, 1e-12, 1e-5),
        pytest.param(pyode.Rosenbrock23(), 1e-5, 1e-12, 1e-3, marks=pytest.mark.slow),
        # Simplified Newton without the coupling takes a different path to the same stage (at
        # most one more iteration): the results differ by Newton's error, ≤ κ·rtol per stage.
        (pyode.Kvaerno5(), 1e-7, 1e-6, 1e-5),
    ],
    ids=lambda v: repr(v) if isinstance(v, pyode.AbstractSolver) else None,
)
def test_integral_parts_do_not_change_the_solution(solver, rtol, rel, bound):
    y0 = (HIRES_QUARTER.y0_tensor(), torch.zeros(1, dtype=F64))
    sols = {}
    for parts in (0, 1):
        prob = pyode.ODEProblem(_hires_with_flux, y0, HIRES_QUARTER.tspan, integral_parts=parts)
        sols[parts] = pyode.solve(prob, solver, rtol=rtol, atol=1e-12, saveat=list(HIRES_QUARTER.saveat))
        _report(f"hires+flux [0, 0.25] {solver!r} integral_parts={parts}", sols[parts])
    (y0_, q0_), (y1_, q1_) = sols[0].y, sols[1].y
    assert sp.relative_error(y1_.numpy(), y0_.numpy(), 1e-7) < rel
    assert sp.relative_error(q1_.numpy(), q0_.numpy(), 1e-7) < rel
    if rel < 1e-10:
        assert (sols[1].stats.naccept, sols[1].stats.nreject) == (sols[0].stats.naccept, sols[0].stats.nreject)
    # and the solution is HIRES's: the extra channel changes nothing upstream (bounds as in
    # the stiff cases: 1e-5 at rtol 1e-7, 1e-3 for Rosenbrock23 at 1e-5)
    assert sp.relative_error(y1_.numpy(), sp.reference(HIRES_QUARTER), 1e-7) < bound
    assert float(q1_[-1, 0]) > 0


def test_integral_parts_jacobian_covers_the_dynamic_channels_only():
    """A user jac with integral_parts=1 is (8, 8), the dynamic part; the full (9, 9) is refused."""
    y0 = (HIRES_QUARTER.y0_tensor(), torch.zeros(1, dtype=F64))
    calls = []

    def jac8(t, state):
        calls.append(t)
        return torch.func.jacrev(lambda y: sp.hires(t, y))(state[0])

    prob = pyode.ODEProblem(_hires_with_flux, y0, HIRES_QUARTER.tspan, integral_parts=1, jac=jac8)
    sol = pyode.solve(prob, pyode.Kvaerno5(), rtol=1e-7, atol=1e-12, saveat=list(HIRES_QUARTER.saveat))
    assert len(calls) == sol.stats.njac > 0
    assert sp.relative_error(sol.y[0].numpy(), sp.reference(HIRES_QUARTER), 1e-7) < 1e-5
    jac9 = lambda t, state: torch.eye(9, dtype=F64)  # noqa: E731
    prob = pyode.ODEProblem(_hires_with_flux, y0, HIRES_QUARTER.tspan, integral_parts=1, jac=jac9)
    with pytest.raises(ValueError, match=r"\(8, 8\)"):
        pyode.solve(prob, pyode.Kvaerno5(), saveat=[0.25])


# ---------------------------------------------------------------------------------------------
# SplitODEProblem and KenCarp4's IMEX pair


def _split(problem: sp.StiffProblem, **kwargs) -> pyode.SplitODEProblem:
    D, r = problem.params["D"], problem.params["r"]
    return pyode.SplitODEProblem(
        lambda t, y: sp.diffusion(t, y, D),
        lambda t, y: sp.reaction(t, y, r),
        problem.y0_tensor(),
        problem.tspan,
        **kwargs,
    )


# 12 points, D = 1: eigenvalues of the stiff part down to -4·169 ≈ -680; an explicit method
# would need h < 4e-3, KenCarp4 takes ~0.01-0.02.
REACTION_DIFFUSION = sp.reaction_diffusion_problem(12, 1.0)


def test_kencarp4_split_converges_to_radau():
    prob = _split(REACTION_DIFFUSION)
    sol = pyode.solve(prob, pyode.KenCarp4(), rtol=1e-7, atol=1e-10, saveat=list(REACTION_DIFFUSION.saveat))
    _report("reaction-diffusion split KenCarp4", sol)
    # |u| ≥ 0.05 at the save points, so the floor never acts; 1e-4 as for KenCarp4 above (measured 2e-7).
    assert sp.relative_error(sol.y.numpy(), sp.reference(REACTION_DIFFUSION), 1e-5) < 1e-4


def _numpy_reaction(t, y):
    """The non-stiff part through numpy: forward-mode autodiff cannot see through it."""
    return torch.from_numpy(sp.reaction(float(t), y.detach().numpy(), REACTION_DIFFUSION.params["r"]))


def test_kencarp4_never_differentiates_the_explicit_part():
    """KenCarp4 builds J from f_stiff alone: with an f_nonstiff that forward mode cannot trace
    (a numpy round trip), its solve raises no warning and matches the torch one, while Rodas5P,
    which solves the sum, has to fall back to finite differences and says so."""
    D = REACTION_DIFFUSION.params["D"]
    y0, tspan = REACTION_DIFFUSION.y0_tensor(), REACTION_DIFFUSION.tspan
    prob = pyode.SplitODEProblem(lambda t, y: sp.diffusion(t, y, D), _numpy_reaction, y0, tspan)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        sol = pyode.solve(prob, pyode.KenCarp4(), rtol=1e-7, atol=1e-10, saveat=[1.0])
    torch_part = pyode.solve(_split(REACTION_DIFFUSION), pyode.KenCarp4(), rtol=1e-7, atol=1e-10, saveat=[1.0])
    assert sol.stats.naccept == torch_part.stats.naccept
    torch.testing.assert_close(sol.y, torch_part.y, rtol=1e-12, atol=1e-14)
    with pytest.warns(RuntimeWarning, match="finite-difference"):
        pyode.solve(prob, pyode.Rodas5P(), rtol=1e-7, atol=1e-10, saveat=[1.0])


def test_kencarp4_split_with_the_stiff_jacobian():
    """`jac` of a split problem is the stiff part's Jacobian (the Laplacian, constant); the
    solve equals the autodiff one to rounding."""
    D = REACTION_DIFFUSION.params["D"]
    auto = pyode.solve(_split(REACTION_DIFFUSION), pyode.KenCarp4(), rtol=1e-7, atol=1e-10, saveat=[1.0])
    user = pyode.solve(
        _split(REACTION_DIFFUSION, jac=lambda t, y: sp.diffusion_jacobian(y, D)),
        pyode.KenCarp4(),
        rtol=1e-7,
        atol=1e-10,
        saveat=[1.0],
    )
    assert user.stats.naccept == auto.stats.naccept
    torch.testing.assert_close(user.y, auto.y, rtol=1e-11, atol=0)


def test_kencarp4_split_order():
    """Order 4 with fixed steps in the split form, on a mildly stiff instance (8 points, D = 0.1:
    h·|λ| up to 4 at h = 1/8) where no order reduction sets in (on D = 1, 16 points, the
    slope falls to ~3.3: the stiff regime's order reduction of stage-order-2 methods). The split
    solution is not the fully implicit one: they differ by the methods' different errors."""
    problem = sp.reaction_diffusion_problem(8, 0.1)
    ref = sp.reference(problem, saveat=(1.0,))[-1]
    steps = [8, 16, 32, 64]
    errors = []
    for n in steps:
        sol = pyode.solve(
            _split(problem), pyode.KenCarp4(), dt=1.0 / n, adaptive=False, saveat=[1.0], rtol=1e-12, atol=1e-12
        )
        errors.append(float(np.abs(sol.y[-1].numpy() - ref).max()))
    # measured 4.10, 4.05, 4.02 between successive halvings
    assert abs(_slope([1.0 / n for n in steps], errors) - 4) < 0.3, errors
    unsplit = pyode.solve(
        pyode.ODEProblem(lambda t, y: sp.reaction_diffusion(t, y, D=0.1), problem.y0_tensor(), problem.tspan),
        pyode.KenCarp4(),
        dt=1.0 / 16,
        adaptive=False,
        saveat=[1.0],
        rtol=1e-12,
        atol=1e-12,
    )
    split16 = pyode.solve(
        _split(problem), pyode.KenCarp4(), dt=1.0 / 16, adaptive=False, saveat=[1.0], rtol=1e-12, atol=1e-12
    )
    difference = float((unsplit.y - split16.y).abs().max())
    assert 1e-3 * errors[1] < difference < 1e3 * errors[1]


def test_other_solvers_solve_a_split_problem_as_the_sum():
    """Every solver but KenCarp4 solves f_stiff + f_nonstiff: Rodas5P on the split problem
    equals Rodas5P on the summed ODEProblem."""
    split = pyode.solve(_split(REACTION_DIFFUSION), pyode.Rodas5P(), rtol=1e-7, atol=1e-10, saveat=[0.5, 1.0])
    D, r = REACTION_DIFFUSION.params["D"], REACTION_DIFFUSION.params["r"]
    summed = pyode.solve(
        pyode.ODEProblem(
            lambda t, y: sp.reaction_diffusion(t, y, D, r), REACTION_DIFFUSION.y0_tensor(), REACTION_DIFFUSION.tspan
        ),
        pyode.Rodas5P(),
        rtol=1e-7,
        atol=1e-10,
        saveat=[0.5, 1.0],
    )
    assert split.stats.naccept == summed.stats.naccept
    torch.testing.assert_close(split.y, summed.y, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# Gradients

_K_SCALE = torch.tensor([0.04, 3e7, 1e4], dtype=F64)
_WEIGHTS = torch.tensor([1.0, 1e4, 0.5], dtype=F64)  # y2 is ~1e-5: weight it to matter


def _robertson_loss(theta, solver, t1=1.0, sensealg=None, **kwargs):
    """L(θ) = w·y(t1) for Robertson with rate constants θ ⊙ (0.04, 3e7, 1e4)."""
    k = theta * _K_SCALE
    prob = pyode.ODEProblem(
        lambda t, y: sp.robertson(t, y, k[0], k[1], k[2]), sp.ROBERTSON.y0_tensor(), (0.0, t1), params=(theta,)
    )
    sol = pyode.solve(prob, solver, saveat=[t1], sensealg=sensealg, **kwargs)
    return (sol.y[-1] * _WEIGHTS).sum(), sol


def _central_differences(solver, eps, **kwargs) -> torch.Tensor:
    grads = []
    with torch.no_grad():
        for i in range(3):
            e = torch.zeros(3, dtype=F64)
            e[i] = eps
            up = _robertson_loss(1 + e, solver, **kwargs)[0]
            down = _robertson_loss(1 - e, solver, **kwargs)[0]
            grads.append((up - down) / (2 * eps))
    return torch.stack(grads)


# Fixed steps on a geometric grid (tstops; dt = the span, so every step ends on the next stop):
# the steps do not depend on θ, so finite differences of the same discrete solve are clean.
# Uniform steps would not do: from y = (1, 0, 0) a first step of 5 (1/20 of [0, 100]) drives
# Rodas5P to NaN and Kvaerno5's Newton to failure. 21 points from 1e-5 to 1.
_GRID = dict(adaptive=False, dt=1.0, tstops=[float(t) for t in np.geomspace(1e-5, 1.0, 21)[:-1]])


@pytest.mark.parametrize(
    "solver, rtol",
    [
        (pyode.Rodas5P(), 1e-8),
        (pyode.Rosenbrock23(), 1e-8),
        # ESDIRK: Newton's stopping error (κ·rtol relative per stage) makes the FD quotient
        # noisy by up to ~κ·rtol/eps; rtol 1e-10 keeps that below 1e-6.
        (pyode.Kvaerno5(), 1e-10),
        (pyode.KenCarp4(), 1e-10),
    ],
    ids=lambda v: repr(v) if isinstance(v, pyode.AbstractSolver) else None,
)
def test_direct_adjoint_matches_finite_differences(solver, rtol):
    theta = torch.ones(3, dtype=F64, requires_grad=True)
    loss, sol = _robertson_loss(theta, solver, rtol=rtol, atol=1e-12, **_GRID)
    assert sol.stats.naccept == 21
    (grad,) = torch.autograd.grad(loss, theta)
    fd = _central_differences(solver, 1e-6, rtol=rtol, atol=1e-12, **_GRID)
    # Central differences with eps = 1e-6: truncation eps²·L''' ~ 1e-12, round-off
    # 1e-16·|L|/eps ~ 1e-10. The Rosenbrock gradient is exact for the discrete map; the ESDIRK
    # one differentiates the converged stages (implicit function theorem) while FD sees the
    # truncated Newton iterates. Measured 2e-9 to 2e-8; bound 1e-6.
    torch.testing.assert_close(grad, fd, rtol=1e-6, atol=0)


@pytest.mark.slow
def test_direct_adjoint_adaptive_matches_finite_differences():
    """Adaptive Rodas5P at rtol 1e-8: DirectAdjoint differentiates the solve with its step sizes
    held, FD sees them switch. Each switch moves L by about a local error (~rtol·|L| = 1e-8),
    which a quotient over 2·eps = 2e-3 turns into ~1e-5; the truncation error eps²·L''' is
    ~1e-6. So the two agree to ~1e-5; bound 1e-4 (measured below 1e-6)."""
    theta = torch.ones(3, dtype=F64, requires_grad=True)
    loss, _ = _robertson_loss(theta, pyode.Rodas5P(), rtol=1e-8, atol=1e-12)
    (grad,) = torch.autograd.grad(loss, theta)
    fd = _central_differences(pyode.Rodas5P(), 1e-3, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(grad, fd, rtol=1e-4, atol=0)


# The adjoints that recompute z backward in time (GaussAdjoint, QuadratureAdjoint and
# BacksolveAdjoint all solve [z, a] backward) meet Robertson's decay as growth: the backward
# solve ends in DtLessThanMin. InterpolatingAdjoint reads z from the forward solution.
_BACKWARD_Z = "backward recomputation of z is unstable for a stiff dissipative system: SolveError DtLessThanMin in the backward solve"


@pytest.mark.slow
@pytest.mark.parametrize(
    "sensealg",
    [
        pyode.InterpolatingAdjoint(),
        pytest.param(
            pyode.GaussAdjoint(), marks=pytest.mark.xfail(strict=True, raises=pyode.SolveError, reason=_BACKWARD_Z)
        ),
        pytest.param(
            pyode.QuadratureAdjoint(), marks=pytest.mark.xfail(strict=True, raises=pyode.SolveError, reason=_BACKWARD_Z)
        ),
        pytest.param(
            pyode.BacksolveAdjoint(), marks=pytest.mark.xfail(strict=True, raises=pyode.SolveError, reason=_BACKWARD_Z)
        ),
    ],
    ids=repr,
)
def test_adjoints_match_direct_on_robertson(sensealg):
    """Continuous adjoints through Rodas5P against DirectAdjoint (the discrete gradient), both
    at rtol 1e-8: they differ by the tolerance-level difference between the discrete and the
    continuous gradient; bound 1e-5 (measured 2e-8 for InterpolatingAdjoint)."""
    theta = torch.ones(3, dtype=F64, requires_grad=True)
    loss, _ = _robertson_loss(theta, pyode.Rodas5P(), rtol=1e-8, atol=1e-12)
    (direct,) = torch.autograd.grad(loss, theta)
    theta = torch.ones(3, dtype=F64, requires_grad=True)
    loss, _ = _robertson_loss(theta, pyode.Rodas5P(), sensealg=sensealg, rtol=1e-8, atol=1e-12)
    (adjoint,) = torch.autograd.grad(loss, theta)
    torch.testing.assert_close(adjoint, direct, rtol=1e-5, atol=0)


# y0 off y*(0): the deviation decays at a rate set by λ, so the loss depends on λ (from y*(0)
# the solution is y* whatever λ, and the gradient zero).
_Y0_OFF = tuple(float(v) for v in sp.manufactured_exact(0.0) + np.array([0.3, -0.2]))


def _manufactured_gradient(solver, sensealg, rtol) -> float:
    lam = torch.tensor(1.0, dtype=F64, requires_grad=True)
    prob = pyode.ODEProblem(
        lambda t, y: sp.manufactured(t, y, lam), torch.tensor(_Y0_OFF, dtype=F64), (0.0, 2.0), params=(lam,)
    )
    sol = pyode.solve(prob, solver, rtol=rtol, atol=rtol, saveat=[1.0, 2.0], sensealg=sensealg)
    (grad,) = torch.autograd.grad((sol.y * torch.tensor([1.0, -2.0], dtype=F64)).sum(), lam)
    return float(grad)


_direct_gradients: dict = {}


@pytest.mark.parametrize(
    "sensealg",
    [pyode.GaussAdjoint(), pyode.QuadratureAdjoint(), pyode.InterpolatingAdjoint(), pyode.BacksolveAdjoint()],
    ids=repr,
)
@pytest.mark.parametrize(
    "solver, rtol, bound",
    [
        # measured 1e-8 to 1e-6 at rtol 1e-7; slow: DirectAdjoint back through Rodas5P's
        # autodiff Jacobians takes seconds (0.2 s per step)
        pytest.param(pyode.Rodas5P(), 1e-7, 1e-5, marks=pytest.mark.slow),
        # measured 6e-6 to 9e-6 at rtol 1e-8 (4e-5 at 1e-7, 9e-7 at 1e-9). Not the adjoints: the
        # problem run backward in time grows errors (its eigenvalues ≈ -1, -2 become growth), and
        # Kvaerno5's own solve of it from t = 2 to 0 misses y(0) by 4e-6 at rtol 1e-8, where
        # forward it misses by 2e-8; Rodas5P's local errors are ~100x below its tolerance.
        (pyode.Kvaerno5(), 1e-8, 1e-4),
    ],
    ids=lambda v: repr(v) if isinstance(v, pyode.AbstractSolver) else None,
)
def test_adjoints_with_implicit_solvers_match_direct(sensealg, solver, rtol, bound):
    """The adjoints run their backward solve with the implicit solver too. On the smooth
    problem (non-stiff at λ = 1, so recomputing z backward is stable) every adjoint reaches
    DirectAdjoint's gradient to the tolerance: both are within a few rtol of the true gradient
    (QuadratureAdjoint adds its quadrature error, C = 0.1 nodes per forward NFE)."""
    key = (repr(solver), rtol)
    if key not in _direct_gradients:  # DirectAdjoint through Rodas5P's Jacobians costs seconds
        _direct_gradients[key] = _manufactured_gradient(solver, pyode.DirectAdjoint(), rtol)
    direct = _direct_gradients[key]
    adjoint = _manufactured_gradient(solver, sensealg, rtol)
    assert abs(direct) > 1e-2  # the loss does depend on λ
    assert abs(adjoint - direct) < bound * abs(direct), (adjoint, direct)


# ---------------------------------------------------------------------------------------------
# float32

VAN_DER_POL_1 = sp.VAN_DER_POL_1E3.with_span(1.0, (0.2, 0.5, 0.7, 1.0))


@pytest.mark.parametrize(
    "solver", [pyode.Rodas5P(), pyode.Rodas5P(autodiff=False), pyode.Rosenbrock23(autodiff=False)], ids=repr
)
def test_float32(solver):
    """Van der Pol mu = 1e3 over [0, 1] (one jump) at rtol 1e-4 in float32 and float64. float32
    resolves 1.2e-7 relative, far below rtol, so both solves carry an error of a few rtol (measured 9e-5 to 3e-4 against
    Radau); the float32 rounding changes the controller's steps (82 against 77 for Rodas5P), so
    the two agree only to their errors (measured 2e-5 to 4e-4): bound 2e-3 on each against Radau
    and against each other (y = O(1) at the save points)."""
    problem = VAN_DER_POL_1
    ref = sp.reference(problem)
    sols = {}
    for dtype in (torch.float32, torch.float64):
        sols[dtype] = pyode.solve(_problem(problem, dtype), solver, rtol=1e-4, atol=1e-6, saveat=list(problem.saveat))
        assert sols[dtype].y.dtype == dtype
    y32, y64 = sols[torch.float32].y.double().numpy(), sols[torch.float64].y.numpy()
    _report(f"vdpol_1e3 [0, 1] {solver!r} float32", sols[torch.float32], sp.relative_error(y32, ref, 0.1))
    assert sp.relative_error(y32, ref, 0.1) < 2e-3
    assert sp.relative_error(y32, y64, 0.1) < 2e-3


def test_float32_with_user_jacobian():
    """A user jac is cast to the state's dtype: float32 Robertson to 100 with Kvaerno5."""
    prob = pyode.ODEProblem(
        lambda t, y: sp.robertson(t, y),
        sp.ROBERTSON.y0_tensor(torch.float32),
        (0.0, 100.0),
        jac=lambda t, y: _robertson_jacobian(y),
    )
    sol = pyode.solve(prob, pyode.Kvaerno5(), rtol=1e-4, atol=1e-9, saveat=[1.0, 100.0])
    assert sol.y.dtype == torch.float32
    ref = sp.reference(ROBERTSON_1E2, saveat=(1.0, 100.0))
    # Components above 1e-4 relative, y2 (1e-5 to 3e-5) absolute to 1e-8: the global error of a
    # few rtol (float32's 1.2e-7 is far below it); bound 10·rtol (measured 9e-6).
    assert sp.relative_error(sol.y.double().numpy(), ref, 1e-4) < 1e-3


# ---------------------------------------------------------------------------------------------
# Bad input


def test_bad_problem_options():
    f = lambda t, y: -y  # noqa: E731
    y = torch.ones(4, 2, dtype=F64)
    with pytest.raises(ValueError, match="independent_batch"):
        pyode.ODEProblem(f, (y, y), (0.0, 1.0), independent_batch=True)
    with pytest.raises(ValueError, match="independent_batch"):
        pyode.ODEProblem(f, torch.tensor(1.0, dtype=F64), (0.0, 1.0), independent_batch=True)
    with pytest.raises(TypeError, match="independent_batch"):
        pyode.ODEProblem(f, y, (0.0, 1.0), independent_batch=1)
    with pytest.raises(ValueError, match="integral_parts"):
        pyode.ODEProblem(f, (y, y), (0.0, 1.0), integral_parts=5)
    with pytest.raises(ValueError, match="integral_parts"):
        pyode.ODEProblem(f, (y, y), (0.0, 1.0), integral_parts=2)  # no dynamic part left
    with pytest.raises(ValueError, match="integral_parts"):
        pyode.ODEProblem(f, y, (0.0, 1.0), integral_parts=1)  # a tensor state has one part
    with pytest.raises(ValueError, match="integral_parts"):
        pyode.ODEProblem(f, (y, y), (0.0, 1.0), integral_parts=-1)
    with pytest.raises(ValueError):  # either check may speak first; both are errors
        pyode.ODEProblem(f, y, (0.0, 1.0), independent_batch=True, integral_parts=1)
    with pytest.raises(TypeError, match="jac"):
        pyode.ODEProblem(f, y, (0.0, 1.0), jac="x")
    with pytest.raises(TypeError, match="f_stiff"):
        pyode.SplitODEProblem("x", f, y, (0.0, 1.0))
    # valid ones are kept as given
    prob = pyode.ODEProblem(f, (y, y), (0.0, 1.0), integral_parts=1)
    assert prob.integral_parts == 1 and prob.jac is None and not prob.independent_batch


def test_solvers_are_implicit():
    for solver in (pyode.Rosenbrock23(), pyode.Rodas5P(), pyode.Kvaerno3(), pyode.Kvaerno5(), pyode.KenCarp4()):
        assert isinstance(solver, pyode.AbstractImplicitSolver) and solver.adaptive
        assert solver.autodiff and not type(solver)(autodiff=False).autodiff
    assert not isinstance(pyode.Tsit5(), pyode.AbstractImplicitSolver)


@pytest.mark.parametrize("kwargs", [{}, {"saveat": [3.0]}, {"dense": False}], ids=["dense", "saveat", "no-dense"])
def test_fixed_step_newton_failure_is_a_return_code(kwargs):
    """A regression test: with adaptive=False an ESDIRK step whose Newton iteration fails was
    accepted (y1 = NaN, stages None); dense output then raised TypeError ('NoneType' object is
    not subscriptable), saveat an IndexError, and dense=False returned Unstable. y' = y² from
    y = 1 blows up at t = 1: with steps of 0.6 the first step's stage equations
    z = rhs + hγ z² have no real solution, and Newton fails."""
    prob = pyode.ODEProblem(lambda t, y: y**2, torch.ones(1, dtype=F64), (0.0, 3.0))
    options = dict(dt=0.6, adaptive=False, **kwargs)
    sol = pyode.solve(prob, pyode.Kvaerno5(), throw=False, **options)
    assert sol.retcode is pyode.ReturnCode.ConvergenceFailure
    assert sol.stats.naccept == 0
    with pytest.raises(pyode.SolveError) as info:
        pyode.solve(prob, pyode.Kvaerno5(), **options)
    assert info.value.retcode is pyode.ReturnCode.ConvergenceFailure
    prob = pyode.ODEProblem(sp.manufactured, torch.tensor(sp.manufactured_exact(0.0), dtype=F64), (0.0, 3.0))
    # the same steps at the default tolerances converge
    assert pyode.solve(prob, pyode.Kvaerno5(), dt=3.0 / 8, adaptive=False, saveat=[3.0]).retcode.successful
