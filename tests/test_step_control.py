"""Step control: the PI controller's formula, the initial step, and the loop's accept/reject
logic driven by a stub solver whose error ratios are scripted, so step counts are exact."""

from __future__ import annotations

import math
from typing import Callable

import pytest
import torch

import pyode
from pyode import interpolation
from pyode.solvers.base import AbstractSolver, AbstractStepper, Step
from pyode.step_control import PIController, initial_step


class ScriptedStepper(AbstractStepper):
    """Euler steps whose error ratio is read from a script: (ratio for attempt 1, 2, ...)."""

    def __init__(self, script: list[float], log: list, f):
        self.script = iter(script)
        self.log = log
        self.f = f

    def step(self, t, y, h, k1):
        return Step(t, h, y, y + h * k1, k1.unsqueeze(0), None)

    def error_ratio(self, step, rtol, atol, norm):
        ratio = next(self.script)
        self.log.append((step.t, step.h, ratio))
        return torch.tensor(ratio)

    @property
    def dense_needs_f1(self):
        return True

    def dense(self, step, f1):
        return interpolation.hermite_coefficients(step.y0, step.y1, step.stages[0], f1, step.h)


class ScriptedSolver(AbstractSolver):
    order = 1
    error_order = 1

    def __init__(self, script: list[float]):
        self.script = script
        self.log: list = []

    def stepper(self, f: Callable, dtype, device) -> AbstractStepper:
        return ScriptedStepper(self.script, self.log, f)


def _run(script, **kwargs):
    solver = ScriptedSolver(script)
    prob = pyode.ODEProblem(lambda t, y: torch.ones_like(y), torch.zeros(1, dtype=torch.float64), (0.0, 1.0))
    sol = pyode.solve(prob, solver, **kwargs)
    return sol, solver.log


def test_controller_formula():
    c = PIController()
    beta1, beta2 = c.gains(error_order=4)
    assert (beta1, beta2) == pytest.approx((0.17, 0.04))  # DOPRI5's gains for DP5
    assert c.factor(0.5, 0.8, (beta1, beta2), accepted=True) == pytest.approx(0.9 * 0.5**-0.17 * 0.8**0.04)
    assert c.factor(1e-12, 1e-4, (beta1, beta2), accepted=True) == 10.0  # capped by factor_max
    assert c.factor(0.0, 1e-4, (beta1, beta2), accepted=True) == 10.0
    assert c.factor(4.0, 0.5, (beta1, beta2), accepted=False) == pytest.approx(0.9 * 4**-0.17)
    assert c.factor(1e9, 0.5, (beta1, beta2), accepted=False) == 0.2  # floored by factor_min
    # After a rejection the step never grows, however small the ratio's effect.
    assert c.factor(1.0 + 1e-12, 0.5, (beta1, beta2), accepted=False) <= 1.0
    assert PIController(beta1=0.2, beta2=0.0).gains(4) == (0.2, 0.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(safety=1.5), "safety"),
        (dict(factor_min=0.0), "factor_min"),
        (dict(factor_max=1.0), "factor_max"),
        (dict(beta1=-1), "beta1"),
    ],
)
def test_controller_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PIController(**kwargs)


def test_loop_accepts_and_grows_by_the_controller():
    controller = PIController(beta1=0.5, beta2=0.0, factor_max=4.0)
    sol, log = _run([0.25] * 100, dt=0.1, controller=controller)
    # ratio 0.25 with beta1 = 0.5: factor 0.9 * 0.25^-0.5 = 1.8 per step.
    hs = [h for _, h, _ in log]
    assert hs[0] == pytest.approx(0.1)
    assert hs[1] == pytest.approx(0.18)
    assert hs[2] == pytest.approx(0.324)
    assert sol.stats.nreject == 0 and sol.stats.naccept == len(log)
    assert sol.t.tolist()[-1] == 1.0


def test_loop_rejects_and_retries_smaller():
    controller = PIController(beta1=0.5, beta2=0.0)
    sol, log = _run([4.0, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25], dt=0.2, controller=controller)
    assert log[0][1] == pytest.approx(0.2) and log[0][2] == 4.0
    assert log[1][0] == 0.0  # the retry starts from the same point
    assert log[1][1] == pytest.approx(0.2 * 0.9 * 4.0**-0.5)
    assert sol.stats.nreject == 1
    assert sol.stats.naccept == len(log) - 1
    assert sol.t[1].item() == pytest.approx(0.09)


def test_loop_lands_on_the_end_with_a_stretched_step():
    # 0.5, then the controller proposes 0.9 (× 1.8), which would overshoot: cut to 0.5 exactly.
    controller = PIController(beta1=0.5, beta2=0.0)
    _, log = _run([0.25] * 10, dt=0.5, controller=controller)
    assert [h for _, h, _ in log] == pytest.approx([0.5, 0.5])
    # A step just short of the end (within 1%) is stretched onto it instead of leaving a sliver.
    _, log = _run([0.25] * 10, dt=0.499, controller=PIController(beta1=0.0, beta2=0.0, safety=1.0))
    assert [h for _, h, _ in log] == pytest.approx([0.499, 0.501])
    # Beyond 1% it is not: 0.495 then 0.495 and a last step of 0.01.
    _sol, log = _run([0.25] * 10, dt=0.495, controller=PIController(beta1=0.0, beta2=0.0, safety=1.0))
    assert [h for _, h, _ in log] == pytest.approx([0.495, 0.495, 0.01])


def test_max_steps_counts_rejections():
    sol, _log = _run([2.0] * 10, dt=0.1, max_steps=3, throw=False)
    assert sol.retcode is pyode.ReturnCode.MaxIters
    assert (sol.stats.naccept, sol.stats.nreject) == (0, 3)


def test_persistent_rejection_ends_at_dtmin():
    sol, log = _run([2.0] * 1000, dt=0.1, dtmin=1e-3, throw=False)
    assert sol.retcode is pyode.ReturnCode.DtLessThanMin
    # Each rejection shrinks by 0.9·2^(-1/2)... until below 1e-3.
    assert all(h >= 1e-3 for _, h, _ in log)
    assert len(log) == sol.stats.nreject


def test_nan_ratio_is_rejected_then_unstable():
    sol, log = _run([0.5, math.nan, 0.5] + [math.nan] * 1000, dt=0.1, dtmin=1e-4, throw=False)
    assert sol.retcode is pyode.ReturnCode.Unstable
    # A NaN ratio shrinks the step by factor_min, and a finite one is accepted again.
    assert log[1][1] * 0.2 == pytest.approx(log[2][1])
    assert sol.stats.naccept == 2


def test_fixed_steps_ignore_error_and_land_on_the_end():
    sol, log = _run([], dt=0.3, adaptive=False)  # no error ratios are read at all
    assert log == []
    assert sol.t.tolist() == pytest.approx([0.0, 0.3, 0.6, 0.9, 1.0])
    sol, _ = _run([], dt=0.1, adaptive=False)
    assert len(sol.t) == 11 and sol.t[-1].item() == 1.0  # no sliver step from round-off


def test_initial_step_follows_hairer():
    # y' = -y, y0 = 1, rtol = atol = 1e-6: d0 = d1 = ||1/(2e-6)||, h0 = 0.01, and the second
    # derivative estimate gives h1 = (0.01 / max(d1, d2))^(1/(p+1)).
    calls = []

    def f(t, y):
        calls.append(t)
        return -y

    y0 = torch.ones(1, dtype=torch.float64)
    h = initial_step(f, 0.0, y0, -y0, 1.0, 5, 1e-6, 1e-6, pyode.rms_norm)
    d1 = 1 / 2e-6
    h0 = 0.01
    d2 = abs(-(1 - h0) + 1) / 2e-6 / h0
    expected = min(100 * h0, (0.01 / max(d1, d2)) ** (1 / 6))
    assert h == pytest.approx(expected)
    assert len(calls) == 1
