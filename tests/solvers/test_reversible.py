"""Reversible solvers: exact reconstruction, convergence orders, and their interface."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pyode

from ..problems import OSCILLATING_GROWTH, REVERSIBLE


def _flat(f):
    return lambda t, y: f(torch.scalar_tensor(t, dtype=y.dtype), y)


@pytest.mark.parametrize("solver", REVERSIBLE, ids=repr)
def test_inverse_reconstructs_the_start_after_1000_steps(solver):
    def f(t, y):  # a smooth, non-autonomous, nonlinear oscillator
        return torch.stack((y[1], -torch.sin(y[0]) + 0.1 * torch.cos(t)))

    stepper = solver.stepper(_flat(f), torch.float64, torch.device("cpu"))
    y0 = torch.tensor([1.0, 0.5], dtype=torch.float64)
    state = stepper.init(0.0, y0, _flat(f)(0.0, y0))
    start = state.clone()
    h, steps = 0.01, 1000
    with torch.no_grad():
        for n in range(steps):
            state = stepper.step(n * h, state, h).y1
        for n in reversed(range(steps)):
            state = stepper.inverse(n * h, h, state)
    torch.testing.assert_close(state, start, rtol=0, atol=1e-10)


# (solver, order, step counts over [0, 3]) on y' = 3 cos(3t) y. With the coupling near 1 the
# parasitic mode is damped by only λ per step, so a 5th-order base's error oscillates with h
# (local slopes 3.5 to 10 at λ = 0.999) until it meets round-off; at λ = 0.5 it settles on 5.
ORDERS = [
    (pyode.Reversible(pyode.RK4()), 4, [64, 96, 128, 192]),
    (pyode.Reversible(pyode.Tsit5(), coupling=0.5), 5, [64, 96, 128, 192]),
    (pyode.Reversible(pyode.DP5(), coupling=0.5), 5, [64, 96, 128, 192]),
    (pyode.Reversible(pyode.Midpoint()), 2, [128, 256, 512, 1024]),
    (pyode.ReversibleHeun(), 2, [128, 256, 512, 1024]),
    (pyode.AsyncLeapfrog(), 2, [128, 256, 512, 1024]),
]


@pytest.mark.parametrize("solver, order, steps", ORDERS, ids=lambda c: repr(c))
def test_order_is_the_base_order(solver, order, steps):
    problem = OSCILLATING_GROWTH
    errors = []
    for n in steps:
        prob = pyode.ODEProblem(problem.f, torch.tensor(problem.y0, dtype=torch.float64), problem.tspan)
        sol = pyode.solve(prob, solver, dt=3.0 / n, adaptive=False, saveat=[3.0])
        errors.append(abs(sol.y[-1, 0].item() - problem.exact(3.0)[0]))
    slope = float(np.polyfit(np.log([3.0 / n for n in steps]), np.log(errors), 1)[0])
    assert abs(slope - order) < 0.3, errors


@pytest.mark.parametrize("solver", [s for s in REVERSIBLE if s.adaptive], ids=repr)
def test_adaptive_and_landing_on_save_points(solver):
    problem = OSCILLATING_GROWTH
    prob = pyode.ODEProblem(problem.f, torch.tensor(problem.y0, dtype=torch.float64), problem.tspan)
    ts = [0.37, 1.5, 2.9]
    sol = pyode.solve(prob, solver, saveat=ts, rtol=1e-6, atol=1e-8)
    assert sol.t.tolist() == ts
    exact = [problem.exact(t)[0] for t in ts]
    # No interpolation: every save point is a step end, so the error is the method's.
    assert max(abs(y - e) for y, e in zip(sol.y[:, 0].tolist(), exact)) < 1e-4
    assert sol.stats.naccept > 0


def test_errors_and_values():
    with pytest.raises(TypeError, match="base must be a Runge–Kutta solver"):
        pyode.Reversible(pyode.ReversibleHeun())
    with pytest.raises(ValueError, match="coupling must be in"):
        pyode.Reversible(pyode.Tsit5(), coupling=0.0)
    prob = pyode.ODEProblem(lambda t, y: -y, torch.ones(2, dtype=torch.float64), (0.0, 1.0))
    with pytest.raises(ValueError, match="no dense output"):
        pyode.solve(prob, pyode.ReversibleHeun(), dt=0.1, dense=True)
    with pytest.raises(ValueError, match="no error estimate"):
        pyode.solve(prob, pyode.Reversible(pyode.RK4()))
    assert repr(pyode.Reversible(pyode.Tsit5())) == "Reversible(Tsit5())"
    assert repr(pyode.Reversible(pyode.Tsit5(), coupling=0.5)) == "Reversible(Tsit5(), coupling=0.5)"
    assert pyode.Reversible(pyode.DP5()).order == 5 and pyode.Reversible(pyode.DP5()).adaptive
    assert pyode.Reversible(pyode.Tsit5()) == pyode.Reversible(pyode.Tsit5())
    sol = pyode.solve(prob, pyode.AsyncLeapfrog(), dt=0.01, adaptive=False)
    assert sol.y.shape == (101, 2) and math.isclose(sol.y[-1, 0].item(), math.exp(-1), rel_tol=1e-4)
