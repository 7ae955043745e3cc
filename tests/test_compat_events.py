"""torchdiffeq's event_fn, odeint_event, callbacks, jump_t and perturb, side by side with torchdiffeq."""

from __future__ import annotations

import pytest
import torch

import pyode

torchdiffeq = pytest.importorskip("torchdiffeq")


class Ball(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.g = torch.nn.Parameter(torch.tensor(9.81, dtype=torch.float64))
        self.calls = {"step": 0, "accept": 0, "reject": 0}

    def forward(self, t, y):
        return torch.stack((y[1], -self.g + 0 * y[0]))

    def callback_step(self, t0, y0, dt):
        self.calls["step"] += 1

    def callback_accept_step(self, t0, y0, dt):
        self.calls["accept"] += 1

    def callback_reject_step(self, t0, y0, dt):
        self.calls["reject"] += 1


def _event_run(lib, interface):
    f = Ball()
    h = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    t0 = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    y0 = torch.stack((h, torch.zeros((), dtype=torch.float64)))
    event_t, sol = lib.odeint_event(
        f,
        y0,
        t0,
        event_fn=lambda t, y: y[0],
        odeint_interface=getattr(lib, interface),
        rtol=1e-10,
        atol=1e-12,
    )
    grads = torch.autograd.grad(event_t + sol[-1, 1], (h, f.g, t0))
    return event_t.detach(), sol.detach(), grads


@pytest.mark.parametrize("interface", ["odeint", "odeint_adjoint"])
def test_odeint_event_matches_torchdiffeq(interface):
    t_ref, sol_ref, g_ref = _event_run(torchdiffeq, interface)
    t_ours, sol_ours, g_ours = _event_run(pyode, interface)
    assert sol_ours.shape == sol_ref.shape == (2, 2)
    # Both locate the event to ~1e-13; the gradients come from the same implicit function theorem.
    assert float(t_ours) == pytest.approx(float(t_ref), abs=1e-11)
    assert torch.allclose(sol_ours, sol_ref, atol=1e-10)
    for a, b in zip(g_ours, g_ref):
        assert float(a) == pytest.approx(float(b), rel=1e-8)


def test_odeint_with_event_fn_returns_the_pair():
    f = Ball()
    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    event_t, sol = pyode.odeint(f, y0, t, event_fn=lambda t, y: y[0])
    ref_t, ref_sol = torchdiffeq.odeint(Ball(), y0, t, event_fn=lambda t, y: y[0])
    assert event_t.item() == pytest.approx(ref_t.item(), abs=1e-9)
    assert torch.allclose(sol, ref_sol, atol=1e-7)


def test_callbacks_are_called_as_torchdiffeq_calls_them():
    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
    t = torch.linspace(0, 0.6, 5, dtype=torch.float64)
    ours, theirs = Ball(), Ball()
    pyode.odeint(ours, y0, t, method="dopri5", options=dict(first_step=0.5))
    torchdiffeq.odeint(theirs, y0, t, method="dopri5", options=dict(first_step=0.5))
    # Every attempt is reported, and each is either accepted or rejected; the counts are
    # pyode's own (its controller differs), so compare the bookkeeping, and that both reject.
    for calls in (ours.calls, theirs.calls):
        assert calls["step"] == calls["accept"] + calls["reject"] > 0
    seen = []

    class Logged(Ball):
        def callback_step(self, t0, y0, dt):
            seen.append((t0.dtype, type(y0), dt.dtype, float(dt) > 0))

    pyode.odeint(Logged(), y0, t)
    assert seen and all(s == (torch.float64, torch.Tensor, torch.float64, True) for s in seen)


def _step(t, y):
    # f jumps at t = 0.5: a dose.
    return (t > 0.5).to(y.dtype) * torch.ones_like(y)


def test_jump_t_matches_torchdiffeq():
    y0 = torch.zeros(1, dtype=torch.float64)
    ts = torch.linspace(0, 1, 3, dtype=torch.float64)
    opts = dict(jump_t=torch.tensor([0.5], dtype=torch.float64))
    ours = pyode.odeint(_step, y0, ts, options=opts)
    theirs = torchdiffeq.odeint(_step, y0, ts, options=opts)
    # With the jump declared both are exact (f is piecewise constant); without it, both smear it.
    assert torch.allclose(ours, theirs, atol=1e-14)
    assert float(ours[-1]) == pytest.approx(0.5, abs=1e-14)


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
def test_perturb_on_fixed_grids_matches_torchdiffeq(method):
    y0 = torch.zeros(1, dtype=torch.float64)
    ts = torch.linspace(0, 1, 3, dtype=torch.float64)
    opts = dict(step_size=0.25, perturb=True)
    ours = pyode.odeint(_step, y0, ts, method=method, options=opts)
    theirs = torchdiffeq.odeint(_step, y0, ts, method=method, options=opts)
    assert torch.allclose(ours, theirs, atol=1e-14)


def test_event_fn_input_errors():
    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
    with pytest.raises(TypeError, match="event_fn must be callable"):
        pyode.odeint(Ball(), y0, torch.tensor([0.0, 1.0]), event_fn=3)
    with pytest.raises(ValueError, match="step_size"):
        pyode.odeint(Ball(), y0, torch.tensor([0.0, 1.0]), method="euler", event_fn=lambda t, y: y[0])
