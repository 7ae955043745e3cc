"""Step control: the PI controller's formula, the initial step, and the loop's accept/reject
logic driven by a stub solver whose error ratios are scripted, so step counts are exact."""

from __future__ import annotations

import math
from typing import Callable

import pytest
import torch

import pyode
from pyode import interpolation
from pyode.solvers.base import AbstractSolver, DenseStepper, StepResult
from pyode.step_control import PIController, initial_step


class ScriptedStepper(DenseStepper):
    """Euler steps whose error ratio is read from a script: (ratio for attempt 1, 2, ...)."""

    def __init__(self, script: list[float], log: list, f):
        self.script = iter(script)
        self.log = log
        self.f = f

    def step(self, t, y, h, k1):
        return StepResult(t, h, y, y + h * k1, stages=k1.unsqueeze(0))

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

    def stepper(self, f: Callable, dtype, device) -> DenseStepper:
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
    constant = PIController(beta1=0.0, beta2=0.0, safety=1.0, startup=None)  # proposes h again
    _, log = _run([0.25] * 10, dt=0.499, controller=constant)
    assert [h for _, h, _ in log] == pytest.approx([0.499, 0.501])
    # Beyond 1% it is not: 0.495 then 0.495 and a last step of 0.01.
    _sol, log = _run([0.25] * 10, dt=0.495, controller=constant)
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


# --- controllers as objects --------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.0, 1e-6, 0.3, 0.99, 1.0, 1.5, 20.0, 1e6])
@pytest.mark.parametrize("order", [2, 5, 8])
def test_i_controller_is_torchdiffeqs_rule(ratio, order):
    from torchdiffeq._impl.misc import _optimal_step_size

    controller = pyode.IController()
    accepted, h_next, _ = controller.adapt(ratio, 0.01, controller.init(order - 1))
    expected = _optimal_step_size(
        torch.tensor(0.01, dtype=torch.float64),
        torch.tensor(ratio, dtype=torch.float64),
        safety=torch.tensor(0.9, dtype=torch.float64),  # tensors, as torchdiffeq's solvers hold them
        ifactor=torch.tensor(10.0, dtype=torch.float64),
        dfactor=torch.tensor(0.2, dtype=torch.float64),
        order=order,
    )
    assert accepted == (ratio <= 1.0)
    assert h_next == pytest.approx(float(expected), rel=1e-14)


def test_pid_controller_follows_its_formula_over_scripted_ratios():
    controller = pyode.PIDController(pcoeff=0.3, icoeff=0.4, dcoeff=0.1)
    state = controller.init(4)  # k = 5
    b1, b2, b3 = (0.3 + 0.4 + 0.1) / 5, -(0.3 + 0.2) / 5, 0.1 / 5
    history = [1.0, 1.0]  # E_n-1, E_n-2 start at 1, as in diffrax
    h = 0.1
    for ratio in [0.5, 0.2, 3.0, 0.9, 0.05, 40.0, 0.7]:
        accepted, h_next, state = controller.adapt(ratio, h, state)
        raw = 0.9 * ratio**-b1 * history[0] ** -b2 * history[1] ** -b3
        factor = min(10.0 if ratio <= 1 else 0.9, max(0.2, raw))
        assert accepted == (ratio <= 1) and h_next == pytest.approx(h * factor, rel=1e-14)
        if accepted:
            history = [ratio, history[0]]
            h = h_next


class _Doubling(pyode.AbstractController):
    """A user's controller: accept when E ≤ 1 and double, else halve."""

    def init(self, error_order):
        return 0

    def adapt(self, ratio, h, state):
        return (True, 2 * h, state + 1) if ratio <= 1 else (False, h / 2, state)


@pytest.mark.parametrize(
    "controller",
    [pyode.PIController(), pyode.IController(), pyode.PIDController(), pyode.PIDController(0.3, 0.3, 0.0), _Doubling()],
    ids=repr,
)
def test_every_controller_meets_the_tolerance(controller):
    # y' = -2ty², y(0) = 1 on [0, 2]: y = 1/(1 + t²). Any controller that accepts only E ≤ 1
    # meets the tolerance up to the usual global-error factor (10 here, measured ≤ 3).
    prob = pyode.ODEProblem(lambda t, y: -2 * t * y * y, torch.tensor([1.0], dtype=torch.float64), (0.0, 2.0))
    sol = pyode.solve(prob, pyode.Tsit5(), rtol=1e-8, atol=1e-10, controller=controller, saveat=[0.7, 2.0])
    exact = 1 / (1 + torch.tensor([0.7, 2.0], dtype=torch.float64) ** 2)
    torch.testing.assert_close(sol.y[:, 0], exact, rtol=1e-7, atol=0)
    assert sol.stats.naccept > 5


def test_constant_step_size_is_fixed_stepping():
    prob = pyode.ODEProblem(lambda t, y: -y, torch.ones(2, dtype=torch.float64), (0.0, 1.0))
    fixed = pyode.solve(prob, pyode.Tsit5(), dt=0.1, adaptive=False)
    constant = pyode.solve(prob, pyode.Tsit5(), dt=0.1, controller=pyode.ConstantStepSize())
    assert constant.stats == fixed.stats and constant.stats.naccept == 10
    torch.testing.assert_close(constant.y, fixed.y, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"controller=ConstantStepSize\(\) steps with a fixed step size: pass dt="):
        pyode.solve(prob, pyode.Tsit5(), controller=pyode.ConstantStepSize())
    with pytest.raises(ValueError, match="adaptive=True contradicts"):
        pyode.solve(prob, pyode.Tsit5(), dt=0.1, adaptive=True, controller=pyode.ConstantStepSize())


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: pyode.IController(safety=1.5), "IController: safety"),
        (lambda: pyode.PIDController(factor_min=2.0), "PIDController: factor_min"),
        (lambda: pyode.PIDController(icoeff=0.0), "icoeff must be positive"),
    ],
)
def test_bad_controller_settings_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_a_controller_must_be_a_controller():
    prob = pyode.ODEProblem(lambda t, y: -y, torch.ones(1), (0.0, 1.0))
    with pytest.raises(TypeError, match="controller must be a pyode step-size controller"):
        pyode.solve(prob, pyode.Tsit5(), controller="pid")


def test_pi_controller_starts_with_the_integral_rule():
    c = PIController()  # startup=0.5
    state = c.init(4)  # k = 5
    # While E < 0.5 the step follows the I rule, 0.9 · E^(-1/5) (at least 1, at most factor_max).
    accepted, h, state = c.adapt(0.01, 1.0, state)
    assert accepted and h == pytest.approx(0.9 * 0.01**-0.2)
    accepted, h, state = c.adapt(0.45, 1.0, state)
    assert h == pytest.approx(0.9 * 0.45**-0.2)
    accepted, h, state = c.adapt(1e-12, 1.0, state)
    assert h == 10.0
    # The first E ≥ 0.5 ends the start-up: from then on it is the PI formula, with E_prev.
    accepted, h, state = c.adapt(0.6, 1.0, state)
    assert h == pytest.approx(c.factor(0.6, 1e-4, c.gains(4), accepted=True))  # E_prev: 1e-12 floored
    accepted, h, state = c.adapt(0.01, 1.0, state)
    assert h == pytest.approx(c.factor(0.01, 0.6, c.gains(4), accepted=True))
    # A rejection ends it too; startup=None is the PI formula from the first step.
    state = c.init(4)
    _, _, state = c.adapt(3.0, 1.0, state)
    accepted, h, _ = c.adapt(0.01, 1.0, state)
    assert h == pytest.approx(c.factor(0.01, 1e-4, c.gains(4), accepted=True))
    plain = PIController(startup=None)
    accepted, h, _ = plain.adapt(0.01, 1.0, plain.init(4))
    assert h == pytest.approx(plain.factor(0.01, 1e-4, plain.gains(4), accepted=True))
    with pytest.raises(ValueError, match="startup"):
        PIController(startup=0.0)
