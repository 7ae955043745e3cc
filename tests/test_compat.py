"""pyode.odeint as a drop-in for torchdiffeq.odeint."""

from __future__ import annotations

import pytest
import torch

import pyode
from pyode.compat import METHODS

from .problems import LINEAR, VAN_DER_POL, reference

torchdiffeq = pytest.importorskip("torchdiffeq", reason="torchdiffeq is in the test extra; the comparisons need it")


def _y0():
    return torch.tensor(VAN_DER_POL.y0, dtype=torch.float64)


@pytest.mark.parametrize(
    "method, solver",
    [
        ("dopri5", pyode.DP5()),
        ("dopri8", pyode.DP8()),
        ("bosh3", pyode.BS3()),
        ("tsit5", pyode.Tsit5()),
        ("adaptive_heun", pyode.Heun()),
    ],
)
def test_odeint_is_solve(method, solver):
    ts = torch.linspace(0, 10, 11, dtype=torch.float64)
    ys = pyode.odeint(VAN_DER_POL.f, _y0(), ts, rtol=1e-5, atol=1e-7, method=method)
    sol = pyode.solve(pyode.ODEProblem(VAN_DER_POL.f, _y0(), (0.0, 10.0)), solver, saveat=ts, rtol=1e-5, atol=1e-7)
    assert torch.equal(ys, sol.y)


@pytest.mark.parametrize("method, rtol", [("dopri5", 1e-9), ("dopri8", 1e-9), ("bosh3", 1e-7), ("adaptive_heun", 1e-5)])
def test_adaptive_methods_agree_with_torchdiffeq(method, rtol):
    ts = torch.linspace(0, 10, 11, dtype=torch.float64)
    ours = pyode.odeint(VAN_DER_POL.f, _y0(), ts, rtol=rtol, atol=rtol * 1e-2, method=method)
    theirs = torchdiffeq.odeint(VAN_DER_POL.f, _y0(), ts, rtol=rtol, atol=rtol * 1e-2, method=method)
    ref = torch.as_tensor(reference(VAN_DER_POL, ts.numpy()))
    ours_error = (ours - ref).abs().max().item()
    theirs_error = (theirs - ref).abs().max().item()
    # They take different steps (PI vs I control), so each carries its own global error, about
    # rtol times this problem's error amplification (≲ 1e3 over [0, 10]). torchdiffeq's dopri8
    # interpolates its output with a 4th-order polynomial (1e-6 off here); ours with DOP853's 7th.
    assert ours_error < 1e3 * rtol
    assert ours_error < 2 * theirs_error + 1e-9
    assert (ours - theirs).abs().max().item() <= ours_error + theirs_error + 1e-12


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
def test_fixed_grid_methods_agree_with_torchdiffeq(method):
    ts = torch.linspace(0, 2, 21, dtype=torch.float64)
    ours = pyode.odeint(VAN_DER_POL.f, _y0(), ts, method=method)
    theirs = torchdiffeq.odeint(VAN_DER_POL.f, _y0(), ts, method=method)
    if method == "rk4":
        # torchdiffeq's "rk4" is the 3/8 rule; both are 4th order with steps of 0.1.
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    else:
        # Same method on the same grid (the output times): identical arithmetic up to round-off.
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_step_size_option():
    ts = torch.linspace(0, 2, 5, dtype=torch.float64)
    ours = pyode.odeint(VAN_DER_POL.f, _y0(), ts, method="euler", options=dict(step_size=0.05))
    theirs = torchdiffeq.odeint(VAN_DER_POL.f, _y0(), ts, method="euler", options=dict(step_size=0.05))
    # Output times fall on the grid (multiples of 0.05), where interpolation is exact either way.
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


def test_gradients_agree_with_torchdiffeq():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()
    y0 = torch.randn(4, 2, dtype=torch.float64)
    ts = torch.linspace(0, 1, 5, dtype=torch.float64)

    def gradients(odeint, **kwargs):
        net.zero_grad()
        odeint(lambda t, y: net(y), y0, ts, **kwargs).pow(2).sum().backward()
        return torch.cat([p.grad.reshape(-1) for p in net.parameters()])

    exact = gradients(pyode.odeint, rtol=1e-13, atol=1e-15, method="dopri8")
    ours = gradients(pyode.odeint, rtol=1e-10, atol=1e-12)
    theirs = gradients(torchdiffeq.odeint, rtol=1e-10, atol=1e-12)
    # Each is the exact gradient of its own discrete solve (different step sequences), so each is
    # within about rtol x amplification of the true gradient; ours must be as close as theirs.
    scale = exact.abs().max()
    # Seen over five seeds: ours 3e-11 to 1.2e-10, torchdiffeq's 7e-11 to 1.1e-9.
    assert (ours - exact).abs().max() / scale < 1e-8
    assert (theirs - exact).abs().max() / scale < 1e-8


def test_tuple_states_and_backward_time():
    def f(t, y):
        x, v = y
        return v, -x

    ts = torch.linspace(3, 0, 4, dtype=torch.float64)
    y0 = (torch.tensor([1.0], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64))
    ours = pyode.odeint(f, y0, ts, rtol=1e-10, atol=1e-12)
    theirs = torchdiffeq.odeint(f, y0, ts, rtol=1e-10, atol=1e-12)
    assert isinstance(ours, tuple) and ours[0].shape == (4, 1)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)


def test_options_are_translated():
    ts = torch.linspace(0, 10, 3, dtype=torch.float64)
    calls = []

    def f(t, y):
        calls.append(float(t))
        return LINEAR.f(t, y)

    y0 = torch.tensor(LINEAR.y0, dtype=torch.float64)
    with pytest.raises(pyode.SolveError, match="MaxIters"):
        pyode.odeint(f, y0, ts, options=dict(max_num_steps=3))
    calls.clear()
    pyode.odeint(f, y0, ts, options=dict(first_step=1e-4))
    assert calls[1] == pytest.approx(1e-4 / 5)  # the first step's second stage, at c2·h
    calls.clear()
    pyode.odeint(f, y0, ts, method="tsit5", options=dict(step_t=[2.5]))
    assert 2.5 in calls  # a step ends on 2.5, and the next starts there
    pyode.odeint(
        f, y0, ts, options=dict(norm=pyode.max_norm, dtype=torch.float32, safety=0.8, ifactor=5.0, dfactor=0.1)
    )


def test_single_output_time():
    y0 = torch.ones(3)
    assert torch.equal(pyode.odeint(lambda t, y: y, y0, torch.tensor([0.0])), y0.unsqueeze(0))


def test_unknown_method_lists_ours():
    with pytest.raises(ValueError, match="unknown method 'fehlberg2'; pyode has") as info:
        pyode.odeint(VAN_DER_POL.f, _y0(), torch.linspace(0, 1, 3), method="fehlberg2")
    for name in METHODS:
        assert name in str(info.value)


@pytest.mark.parametrize(
    "method, options, match",
    [
        ("dopri5", dict(step_size=0.1), "not supported for method 'dopri5'"),
        ("euler", dict(first_step=0.1), "not supported for method 'euler'"),
        ("dopri5", dict(event_times=[0.5]), "event_times"),
        ("euler", dict(interp="quadratic"), "interp"),
    ],
)
def test_unsupported_options(method, options, match):
    with pytest.raises(ValueError, match=match):
        pyode.odeint(VAN_DER_POL.f, _y0(), torch.linspace(0, 1, 3, dtype=torch.float64), method=method, options=options)


def test_bad_t():
    with pytest.raises(ValueError, match="1-D tensor"):
        pyode.odeint(VAN_DER_POL.f, _y0(), [0.0, 1.0])
    with pytest.raises(ValueError, match="t must be strictly increasing or strictly decreasing"):
        pyode.odeint(VAN_DER_POL.f, _y0(), torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64))


class _Field(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2)).double()

    def forward(self, t, y):
        return self.net(y)


@pytest.mark.parametrize("adjoint_options", [None, dict(norm="seminorm")])
def test_odeint_adjoint_agrees_with_torchdiffeq(adjoint_options):
    field = _Field()
    y0 = torch.randn(3, 2, dtype=torch.float64)
    ts = torch.linspace(0, 2, 5, dtype=torch.float64)

    def gradients(odeint_adjoint):
        field.zero_grad()
        odeint_adjoint(field, y0, ts, rtol=1e-10, atol=1e-12, adjoint_options=adjoint_options).pow(2).sum().backward()
        return torch.cat([p.grad.reshape(-1) for p in field.parameters()])

    ours, theirs = gradients(pyode.odeint_adjoint), gradients(torchdiffeq.odeint_adjoint)
    # Both approximate the continuous gradient to ~rtol x amplification.
    assert (ours - theirs).abs().max() / theirs.abs().max() < 1e-7


def test_odeint_adjoint_options():
    field = _Field()
    y0 = torch.randn(3, 2, dtype=torch.float64)
    ts = torch.linspace(0, 1, 3, dtype=torch.float64)
    ys = pyode.odeint_adjoint(
        field,
        y0,
        ts,
        adjoint_method="dopri8",
        adjoint_rtol=1e-4,
        adjoint_atol=1e-6,
        adjoint_options=dict(norm=pyode.max_norm),
    )
    ys.sum().backward()
    assert all(p.grad is not None for p in field.parameters())
    with pytest.raises(ValueError, match=r"must be an nn\.Module"):
        pyode.odeint_adjoint(lambda t, y: -y, y0, ts)
    w = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    ys = pyode.odeint_adjoint(lambda t, y: -w * y, y0, ts, adjoint_params=(w,))
    ys.sum().backward()
    assert w.grad is not None
    with pytest.raises(ValueError, match="'seminorm' or a callable"):
        pyode.odeint_adjoint(field, y0, ts, adjoint_options=dict(norm="rms"))
    with pytest.raises(ValueError, match="unknown adjoint_method"):
        pyode.odeint_adjoint(field, y0, ts, adjoint_method="rk45")
    with pytest.raises(ValueError, match="adjoint_options"):
        pyode.odeint_adjoint(field, y0, ts, adjoint_options=dict(step_size=0.1))
