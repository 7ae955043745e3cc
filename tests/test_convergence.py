"""Empirical convergence orders: the slope of log(error) against log(dt) with fixed steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pyode

from .problems import OSCILLATING_GROWTH, RICCATI

# (solver, order, dense order, numbers of steps over [0, 3]). Step counts keep the errors well
# above float64 round-off (≥ 1e-11) and in the asymptotic range (Tsit5 is designed with a small
# leading error term, so it needs smaller steps than DP5 before its slope settles at 5).
CASES = [
    (pyode.Euler(), 1, 1, [512, 1024, 2048, 4096]),
    (pyode.Midpoint(), 2, 2, [128, 256, 512, 1024]),
    (pyode.Heun(), 2, 2, [128, 256, 512, 1024]),
    (pyode.RK4(), 4, 4, [64, 96, 128, 192]),
    (pyode.BS3(), 3, 3, [64, 96, 128, 192]),
    (pyode.DP5(), 5, 5, [48, 64, 96, 128]),
    (pyode.Tsit5(), 5, 5, [64, 96, 128, 192]),
    (pyode.DP8(), 8, 8, [12, 16, 20, 24]),
]


def _slope(hs, errors) -> float:
    return float(np.polyfit(np.log(hs), np.log(errors), 1)[0])


def _errors(solver, steps, problem=OSCILLATING_GROWTH):
    """Errors at the end point, and the largest over 97 points between steps."""
    exact = problem.exact
    t0, t1 = problem.tspan
    queries = np.linspace(t0, t1, 99)[1:-1] + 1e-3  # generic θ: never on a step boundary
    end, between = [], []
    for n in steps:
        prob = pyode.ODEProblem(problem.f, torch.tensor(problem.y0, dtype=torch.float64), problem.tspan)
        sol = pyode.solve(prob, solver, dt=(t1 - t0) / n, adaptive=False, saveat=[*queries, t1])
        assert sol.stats.naccept == n
        end.append(abs(sol.y[-1, 0].item() - exact(t1)[0]))
        between.append(max(abs(y - exact(t)[0]) for y, t in zip(sol.y[:-1, 0].tolist(), queries)))
    return end, between


@pytest.mark.parametrize("solver, order, dense_order, steps", CASES, ids=lambda c: repr(c))
def test_fixed_step_order(solver, order, dense_order, steps):
    hs = [3.0 / n for n in steps]
    end, mid = _errors(solver, steps)
    assert abs(_slope(hs, end) - order) < 0.3, f"end-point errors {end}"
    # Between steps the dense output adds a local error of order q + 1 to the global error of
    # order p, so save points converge at order min(p, q + 1) (Hermite: q = 3).
    assert abs(_slope(hs, mid) - dense_order) < 0.3, f"interpolated errors {mid}"


@pytest.mark.parametrize("solver", [pyode.BS3(), pyode.DP5(), pyode.Tsit5(), pyode.DP8()], ids=repr)
def test_adaptive_error_follows_tolerance(solver):
    """Tolerance proportionality: the global error shrinks as the tolerance does, at a rate
    near 1 (per unit step, error ∝ tol); each tenfold cut of rtol cuts the error."""
    errors = []
    for rtol in (1e-5, 1e-7, 1e-9):
        prob = pyode.ODEProblem(RICCATI.f, torch.tensor(RICCATI.y0, dtype=torch.float64), RICCATI.tspan)
        sol = pyode.solve(prob, solver, rtol=rtol, atol=rtol)
        errors.append(abs(sol.y[-1, 0].item() - RICCATI.exact(2.0)[0]))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-8
