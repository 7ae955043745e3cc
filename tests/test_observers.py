"""The loop's seams: observers see every attempted, rejected and accepted step; a step that fails
for a reason of its own (StepStatus.FAILED) is retried smaller; the progress bar."""

from __future__ import annotations

import io

import pytest
import torch

import pyode
from pyode.solvers.base import StepResult, StepStatus
from pyode.solvers.explicit import Tsit5


def _prob():
    return pyode.ODEProblem(lambda t, y: -y, torch.ones(3, dtype=torch.float64), (0.0, 2.0))


class Log(pyode.Observer):
    def __init__(self):
        self.events = []

    def start(self, t0, y0):
        self.events.append(("start", t0))

    def attempt(self, t, y, h):
        self.events.append(("attempt", t, h))

    def rejected(self, t, y, h, ratio):
        self.events.append(("reject", t, h, ratio))

    def accepted(self, step):
        self.events.append(("accept", step.t, step.t_new, step.coefficients() is not None))

    def finish(self, t, retcode):
        self.events.append(("finish", t, retcode))


def test_observers_see_every_step_in_order():
    log = Log()
    sol = pyode.solve(_prob(), pyode.Tsit5(), dt=1.0, observers=[log])  # a first step too big: rejected
    kinds = [e[0] for e in log.events]
    assert kinds[0] == "start" and kinds[-1] == "finish"
    assert kinds.count("attempt") == sol.stats.naccept + sol.stats.nreject
    assert kinds.count("accept") == sol.stats.naccept and kinds.count("reject") == sol.stats.nreject >= 1
    accepted = [e for e in log.events if e[0] == "accept"]
    assert [e[2] for e in accepted] == sol.t[1:].tolist()  # consecutive steps, ending where saved
    assert all(e[3] for e in accepted)  # the dense coefficients are there to read
    assert log.events[-1][1:] == (2.0, pyode.ReturnCode.Success)


def test_observers_do_not_change_the_solve():
    plain = pyode.solve(_prob(), pyode.Tsit5())
    watched = pyode.solve(_prob(), pyode.Tsit5(), observers=[Log()])
    assert torch.equal(plain.y, watched.y) and plain.stats.nfe == watched.stats.nfe


def test_an_observer_can_stop_the_solve():
    class Stop(pyode.Observer):
        def accepted(self, step):
            return pyode.ReturnCode.Terminated if step.t_new > 1.0 else None

    sol = pyode.solve(_prob(), pyode.Tsit5(), observers=[Stop()])
    assert sol.retcode is pyode.ReturnCode.Terminated and 1.0 < float(sol.t[-1]) < 2.0


def test_observers_are_checked():
    with pytest.raises(TypeError, match="observers must be a list"):
        pyode.solve(_prob(), pyode.Tsit5(), observers=Log())
    with pytest.raises(TypeError, match="progress must be True or False"):
        pyode.solve(_prob(), pyode.Tsit5(), progress="yes")


class Flaky(Tsit5):
    """Tsit5 whose steps longer than 0.05 fail for a reason of their own (as a Newton iteration
    that does not converge would)."""

    def stepper(self, f, dtype, device):
        inner = super().stepper(f, dtype, device)

        class Stepper(type(inner)):
            def step(self, t, y, h, k1):
                result = super().step(t, y, h, k1)
                return result._replace(status=StepStatus.FAILED) if abs(h) > 0.05 else result

        inner.__class__ = Stepper
        return inner


def test_a_failed_step_is_retried_smaller():
    log = Log()
    sol = pyode.solve(_prob(), Flaky(), observers=[log])
    rejects = [e for e in log.events if e[0] == "reject"]
    assert rejects and all(e[2] > 0.05 and e[3] == float("inf") for e in rejects)
    assert all(e[2] - e[1] <= 0.05 + 1e-15 for e in log.events if e[0] == "accept")
    assert torch.allclose(sol.y[-1], torch.full((3,), torch.e**-2.0, dtype=torch.float64), rtol=1e-5)
    assert isinstance(StepResult(0.0, 1.0, sol.y[0], sol.y[0]).status, StepStatus)


def test_progress_bar_draws_and_closes(monkeypatch):
    pytest.importorskip("tqdm")
    stream = io.StringIO()
    import tqdm.auto

    original = tqdm.auto.tqdm
    monkeypatch.setattr(tqdm.auto, "tqdm", lambda *a, **k: original(*a, file=stream, **k))
    sol = pyode.solve(_prob(), pyode.Tsit5(), progress=True)
    text = stream.getvalue()
    assert sol.retcode is pyode.ReturnCode.Success
    assert "t=2/2" in text and f"nfe={sol.stats.nfe}" in text


def test_finish_sees_where_an_observer_stopped_the_solve():
    class Stop(Log):
        def accepted(self, step):
            super().accepted(step)
            return pyode.ReturnCode.Terminated if step.t_new > 1.0 else None

    log = Stop()
    sol = pyode.solve(_prob(), pyode.Tsit5(), observers=[log])
    assert log.events[-1] == ("finish", float(sol.t[-1]), pyode.ReturnCode.Terminated)
