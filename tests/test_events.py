"""Events: location on dense output, terminal/affect, batched events, and the event-time
gradients (implicit function theorem) against closed forms and finite differences.

A ball dropped from height h under gravity g hits the ground at t* = sqrt(2h/g) with speed
v = sqrt(2gh); bouncing with restitution e, it next lands 2 e^k v / g after bounce k. Every
solver here interpolates with order ≥ 4 and the trajectory is quadratic in t, so the dense
output is exact and the located times are limited only by the root finder (θ to rounding):
tolerances below are a few hundred ulps of t.
"""

from __future__ import annotations

import math

import pytest
import torch

import pyode

G = 9.81
H = 2.0
E = 0.8


def ball(g: torch.Tensor):
    return lambda t, y: torch.stack((y[1], -g + 0 * y[0]))


def drop_times(h: float, e: float, g: float, n: int) -> list[float]:
    v = math.sqrt(2 * g * h)
    times = [math.sqrt(2 * h / g)]
    for k in range(1, n):
        times.append(times[-1] + 2 * e**k * v / g)
    return times


@pytest.fixture(params=[torch.float64, torch.float32], ids=["float64", "float32"])
def dtype(request):
    return request.param


def _tol(dtype):
    # Located times are to rounding of the state's dtype: the condition is evaluated in it.
    return 1e-12 if dtype == torch.float64 else 2e-5


@pytest.mark.parametrize("solver", [pyode.Tsit5(), pyode.DP5(), pyode.BS3(), pyode.DP8()], ids=repr)
def test_terminal_event_time_and_state(solver, dtype):
    g = torch.tensor(G, dtype=dtype)
    y0 = torch.tensor([H, 0.0], dtype=dtype)
    sol = pyode.solve(
        pyode.ODEProblem(ball(g), y0, (0.0, 5.0)),
        solver,
        events=pyode.Event(lambda t, y: y[0], direction=-1),
        rtol=1e-8,
        atol=1e-10,
    )
    t_star = math.sqrt(2 * H / G)
    assert sol.retcode is pyode.ReturnCode.Terminated and sol.event_index == 0
    assert abs(float(sol.event_time) - t_star) < _tol(dtype)
    assert float(sol.t[-1]) == pytest.approx(t_star, abs=_tol(dtype))
    assert abs(float(sol.y[-1][0])) < 10 * _tol(dtype)
    assert float(sol.y[-1][1]) == pytest.approx(-math.sqrt(2 * G * H), rel=10 * _tol(dtype))
    # the dense output stops at the event
    assert float(sol(sol.t[-1])[0]) == pytest.approx(0.0, abs=10 * _tol(dtype))


def test_event_time_gradient_matches_the_closed_form():
    h = torch.tensor(H, dtype=torch.float64, requires_grad=True)
    g = torch.tensor(G, dtype=torch.float64, requires_grad=True)
    y0 = torch.stack((h, torch.zeros((), dtype=torch.float64)))
    sol = pyode.solve(
        pyode.ODEProblem(ball(g), y0, (0.0, 5.0)), pyode.Tsit5(), events=pyode.Event(lambda t, y: y[0]), rtol=1e-9
    )
    dh, dg = torch.autograd.grad(sol.event_time, (h, g), retain_graph=True)
    assert float(dh) == pytest.approx(1 / math.sqrt(2 * H * G), rel=1e-10)
    assert float(dg) == pytest.approx(-math.sqrt(2 * H) / (2 * G**1.5), rel=1e-10)
    # The state at the event moves with the event time: v* = -sqrt(2gh).
    dh, dg = torch.autograd.grad(sol.y[-1][1], (h, g))
    assert float(dh) == pytest.approx(-math.sqrt(G / (2 * H)), rel=1e-10)
    assert float(dg) == pytest.approx(-math.sqrt(2 * H) / (2 * math.sqrt(G)), rel=1e-10)


def test_condition_parameters_get_gradients():
    # The ground at height c: t* = sqrt(2(h - c)/g), dt*/dc = -1/sqrt(2g(h - c)).
    c = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    y0 = torch.tensor([H, 0.0], dtype=torch.float64)
    sol = pyode.solve(
        pyode.ODEProblem(ball(torch.tensor(G, dtype=torch.float64)), y0, (0.0, 5.0)),
        pyode.Tsit5(),
        events=pyode.Event(lambda t, y: y[0] - c),
    )
    (dc,) = torch.autograd.grad(sol.event_time, c)
    assert float(dc) == pytest.approx(-1 / math.sqrt(2 * G * (H - 0.5)), rel=1e-9)


def _bounces(h, e, g, T=3.0, saveat=None, **kw):
    y0 = torch.stack((h, torch.zeros_like(h)))
    bounce = pyode.Event(
        lambda t, y: y[0], terminal=False, direction=-1, affect=lambda t, y: torch.stack((y[0], -e * y[1]))
    )
    return pyode.solve(
        pyode.ODEProblem(ball(g), y0, (0.0, T)), pyode.Tsit5(), events=[bounce], saveat=saveat, rtol=1e-10, **kw
    )


def test_bounce_times_and_their_gradients():
    h, e, g = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (H, E, G))
    sol = _bounces(h, e, g)
    assert sol.retcode is pyode.ReturnCode.Success
    times = [t for t, i in sol.event_log]
    assert [i for _, i in sol.event_log] == [0, 0, 0]  # each bounce found once, none found twice
    assert [t.item() for t in times] == pytest.approx(drop_times(H, E, G, 3), abs=1e-12)
    hh, ee, gg = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (H, E, G))
    v = torch.sqrt(2 * gg * hh)
    t3 = torch.sqrt(2 * hh / gg) + 2 * ee * v / gg + 2 * ee**2 * v / gg
    expected = torch.autograd.grad(t3, (hh, ee, gg))
    got = torch.autograd.grad(times[2], (h, e, g))
    for a, b in zip(got, expected):
        assert float(a) == pytest.approx(float(b), rel=1e-9)


def test_state_after_bounces_matches_finite_differences():
    # The loss reads the state at T after three bounces: it depends on the event times through the
    # state after each affect and through where the continuation starts.
    ts = torch.tensor([0.3, 1.0, 2.0, 2.9], dtype=torch.float64)

    def loss(h, e, g):
        sol = _bounces(h, e, g, saveat=ts)
        return (sol.y[:, 0] * torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)).sum() + sol.y[-1, 1]

    params = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (H, E, G)]
    grads = torch.autograd.grad(loss(*params), params)
    for k in range(3):
        eps = 1e-6
        up = [torch.tensor(v, dtype=torch.float64) for v in (H, E, G)]
        down = [torch.tensor(v, dtype=torch.float64) for v in (H, E, G)]
        up[k] += eps
        down[k] -= eps
        fd = (float(loss(*up)) - float(loss(*down))) / (2 * eps)
        # Central differences at eps = 1e-6 on a solve at rtol 1e-10: error ~1e-7 relative.
        assert float(grads[k]) == pytest.approx(fd, rel=1e-6, abs=1e-7)


def test_direction_selects_crossings():
    # y = sin(t) crosses zero rising at 2π and falling at π.
    def f(t, y):
        return torch.cos(t).reshape(1) + 0 * y

    y0 = torch.tensor([math.sin(0.5)], dtype=torch.float64)
    prob = pyode.ODEProblem(f, y0, (0.5, 10.0))
    for direction, expected in ((1, 2 * math.pi), (-1, math.pi), (0, math.pi)):
        sol = pyode.solve(
            prob, pyode.Tsit5(), events=pyode.Event(lambda t, y: y[0], direction=direction), rtol=1e-10, atol=1e-12
        )
        assert float(sol.event_time) == pytest.approx(expected, abs=1e-9)
    counted = pyode.solve(
        prob, pyode.Tsit5(), events=pyode.Event(lambda t, y: y[0], terminal=False), rtol=1e-10, atol=1e-12
    )
    assert [float(t) for t, _ in counted.event_log] == pytest.approx([math.pi, 2 * math.pi, 3 * math.pi], abs=1e-9)


def test_several_events_the_first_one_wins():
    y0 = torch.tensor([H, 0.0], dtype=torch.float64)
    events = [pyode.Event(lambda t, y: y[0] - 1.0), pyode.Event(lambda t, y: t - 0.1)]
    sol = pyode.solve(
        pyode.ODEProblem(ball(torch.tensor(G, dtype=torch.float64)), y0, (0.0, 5.0)), pyode.Tsit5(), events=events
    )
    assert sol.event_index == 1 and float(sol.event_time) == pytest.approx(0.1, abs=1e-12)


def test_batched_terminal_events_stop_each_element():
    heights = torch.tensor([0.5, 2.0, 1.0, 4.0], dtype=torch.float64, requires_grad=True)
    g = torch.tensor(G, dtype=torch.float64)

    def f(t, y):
        return torch.stack((y[:, 1], -g + 0 * y[:, 0]), dim=1)

    y0 = torch.stack((heights, torch.zeros(4, dtype=torch.float64)), dim=1)
    sol = pyode.solve(
        pyode.ODEProblem(f, y0, (0.0, 5.0)), pyode.Tsit5(), events=pyode.Event(lambda t, y: y[:, 0]), rtol=1e-9
    )
    expected = torch.sqrt(2 * heights.detach() / G)
    assert sol.retcode is pyode.ReturnCode.Terminated
    assert torch.allclose(sol.event_time, expected, atol=1e-12)
    assert sol.event_index.tolist() == [0, 0, 0, 0]
    assert float(sol.t[-1]) == pytest.approx(float(expected.max()), abs=1e-12)
    # Each element's state is frozen at its own event.
    assert torch.allclose(sol.y[-1][:, 0], torch.zeros(4, dtype=torch.float64), atol=1e-11)
    assert torch.allclose(sol.y[-1][:, 1], -torch.sqrt(2 * G * heights.detach()), rtol=1e-10)
    (dh,) = torch.autograd.grad(sol.event_time.sum() + sol.y[-1][:, 1].sum(), heights)
    assert torch.allclose(
        dh, 1 / torch.sqrt(2 * heights.detach() * G) - torch.sqrt(G / (2 * heights.detach())), rtol=1e-9
    )


def test_saveat_stops_at_a_terminal_event():
    y0 = torch.tensor([H, 0.0], dtype=torch.float64)
    ts = torch.linspace(0, 2, 21, dtype=torch.float64)
    sol = pyode.solve(
        pyode.ODEProblem(ball(torch.tensor(G, dtype=torch.float64)), y0, (0.0, 2.0)),
        pyode.Tsit5(),
        saveat=ts,
        events=pyode.Event(lambda t, y: y[0]),
    )
    t_star = math.sqrt(2 * H / G)
    assert sol.t.tolist() == ts[ts <= t_star].tolist()


def test_events_work_backward_in_time():
    # Run the drop backward from the ground: the event at height H is at time 0 (from t* down).
    t_star = math.sqrt(2 * H / G)
    y_end = torch.tensor([0.0, -math.sqrt(2 * G * H)], dtype=torch.float64)
    sol = pyode.solve(
        pyode.ODEProblem(ball(torch.tensor(G, dtype=torch.float64)), y_end, (t_star, -1.0)),
        pyode.Tsit5(),
        events=pyode.Event(lambda t, y: y[1]),
        rtol=1e-10,
    )
    assert float(sol.event_time) == pytest.approx(0.0, abs=1e-10)


def test_no_event_no_change():
    y0 = torch.tensor([H, 0.0], dtype=torch.float64)
    prob = pyode.ODEProblem(ball(torch.tensor(G, dtype=torch.float64)), y0, (0.0, 0.5))
    plain = pyode.solve(prob, pyode.Tsit5())
    with_event = pyode.solve(prob, pyode.Tsit5(), events=pyode.Event(lambda t, y: y[0] + 100))
    assert with_event.retcode is pyode.ReturnCode.Success and with_event.event_time is None
    assert torch.equal(plain.y, with_event.y) and plain.stats.nfe == with_event.stats.nfe


def test_event_inputs_are_checked():
    y0 = torch.tensor([H, 0.0], dtype=torch.float64)
    prob = pyode.ODEProblem(ball(torch.tensor(G, dtype=torch.float64)), y0, (0.0, 1.0))
    with pytest.raises(ValueError, match="direction must be -1"):
        pyode.Event(lambda t, y: y[0], direction=2)
    with pytest.raises(TypeError, match="condition must be callable"):
        pyode.Event(3.0)
    with pytest.raises(ValueError, match="pass terminal=False"):
        pyode.Event(lambda t, y: y[0], affect=lambda t, y: y)
    with pytest.raises(TypeError, match=r"events must be a pyode\.Event"):
        pyode.solve(prob, pyode.Tsit5(), events=[lambda t, y: y[0]])
    with pytest.raises(ValueError, match="real scalar or a 1-D tensor"):
        pyode.solve(prob, pyode.Tsit5(), events=pyode.Event(lambda t, y: y.reshape(1, 2)))
    with pytest.raises(ValueError, match="dense output"):
        pyode.solve(prob, pyode.ReversibleHeun(), events=pyode.Event(lambda t, y: y[0]))
    with pytest.raises(ValueError, match="must be terminal"):
        pyode.solve(prob, pyode.Tsit5(), events=pyode.Event(lambda t, y: y, terminal=False))
    with pytest.raises(ValueError, match="leading"):
        pyode.solve(prob, pyode.Tsit5(), events=pyode.Event(lambda t, y: torch.cat((y, y))))


# QuadratureAdjoint with C=1: its default C=0.1 puts one Gauss node in each interval between
# save points when every step is saved, a quadrature error of ~1e-5 relative here with or
# without events (its documented accuracy trade-off); the default is checked below on a grid.
ADJOINTS = [
    pyode.BacksolveAdjoint(),
    pyode.InterpolatingAdjoint(),
    pyode.GaussAdjoint(),
    pyode.QuadratureAdjoint(C=1.0),
    pyode.BacksolveAdjoint(seminorm=True),
]


class Damped(torch.nn.Module):
    """A damped oscillator with learnable stiffness and damping, as an nn.Module (adjoints find
    its parameters)."""

    def __init__(self):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(4.0, dtype=torch.float64))
        self.c = torch.nn.Parameter(torch.tensor(0.3, dtype=torch.float64))

    def forward(self, t, y):
        return torch.stack((y[1], -self.k * y[0] - self.c * y[1]))


def _loss_and_grads(sensealg, terminal: bool, saveat):
    torch.manual_seed(0)
    model = Damped()
    y0 = torch.tensor([1.0, 0.5], dtype=torch.float64, requires_grad=True)
    kick = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    if terminal:
        events = [pyode.Event(lambda t, y: y[0] + 0.5, direction=-1)]
    else:
        events = [pyode.Event(lambda t, y: y[0], terminal=False, affect=lambda t, y: torch.stack((y[0], kick * y[1])))]
    sol = pyode.solve(
        pyode.ODEProblem(model, y0, (0.0, 4.0)),
        pyode.Tsit5(),
        events=events,
        saveat=saveat,
        rtol=1e-10,
        atol=1e-12,
        sensealg=sensealg,
    )
    weights = torch.arange(1, sol.y.numel() + 1, dtype=torch.float64).reshape(sol.y.shape)
    loss = (sol.y * weights).sum() / weights.sum() + sum(t for t, _ in sol.event_log)
    params = [y0, model.k, model.c, kick]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.detach(), [torch.zeros(()) if g is None else g for g in grads], sol


@pytest.mark.parametrize("sensealg", ADJOINTS, ids=repr)
@pytest.mark.parametrize(
    "terminal, saves",
    # Saving every step after an affect is not comparable: each segment restarts its step control.
    [(True, None), (True, "grid"), (False, "grid")],
    ids=["terminal-every-step", "terminal-grid", "affect-grid"],
)
def test_adjoints_through_events_agree_with_direct(sensealg, terminal, saves):
    saveat = torch.linspace(0, 4, 9, dtype=torch.float64) if saves else None
    ref_loss, ref, ref_sol = _loss_and_grads(pyode.DirectAdjoint(), terminal, saveat)
    loss, grads, sol = _loss_and_grads(sensealg, terminal, saveat)
    assert len(sol.event_log) == len(ref_sol.event_log) >= 1
    assert torch.allclose(sol.t, ref_sol.t, atol=1e-12)
    # Both are accurate to the solve's tolerance (1e-10); the adjoints' backward solves add their
    # own error of that order: agreement to 1e-7 is 1000x the tolerance.
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-9)
    for g, r in zip(grads, ref):
        assert torch.allclose(g, r, rtol=1e-6, atol=1e-7), (g, r)


def test_quadrature_adjoint_through_a_terminal_event():
    saveat = torch.linspace(0, 4, 9, dtype=torch.float64)
    _, ref, _ = _loss_and_grads(pyode.DirectAdjoint(), True, saveat)
    _, grads, _ = _loss_and_grads(pyode.QuadratureAdjoint(), True, saveat)
    for g, r in zip(grads, ref):
        assert torch.allclose(g, r, rtol=1e-6, atol=1e-7), (g, r)


def test_direct_gradients_through_events_match_finite_differences():
    saveat = torch.linspace(0, 4, 9, dtype=torch.float64)
    _, grads, _ = _loss_and_grads(pyode.DirectAdjoint(), False, saveat)

    def loss_at(values):
        model = Damped()
        with torch.no_grad():
            model.k.fill_(values[2])
            model.c.fill_(values[3])
        y0 = torch.tensor(values[:2], dtype=torch.float64)
        kick = values[4]
        events = [pyode.Event(lambda t, y: y[0], terminal=False, affect=lambda t, y: torch.stack((y[0], kick * y[1])))]
        with torch.no_grad():
            sol = pyode.solve(
                pyode.ODEProblem(model, y0, (0.0, 4.0)),
                pyode.Tsit5(),
                events=events,
                saveat=saveat,
                rtol=1e-11,
                atol=1e-13,
            )
        weights = torch.arange(1, sol.y.numel() + 1, dtype=torch.float64).reshape(sol.y.shape)
        return float((sol.y * weights).sum() / weights.sum() + sum(t for t, _ in sol.event_log))

    base = [1.0, 0.5, 4.0, 0.3, 0.9]
    flat = [float(grads[0][0]), float(grads[0][1]), float(grads[1]), float(grads[2]), float(grads[3])]
    for k in range(5):
        eps = 1e-5
        up, down = list(base), list(base)
        up[k] += eps
        down[k] -= eps
        fd = (loss_at(up) - loss_at(down)) / (2 * eps)
        # Central differences: truncation ~eps² = 1e-10, rounding ~1e-13/eps = 1e-8.
        assert flat[k] == pytest.approx(fd, rel=1e-5, abs=1e-7)


def test_batched_events_with_an_adjoint():
    heights = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64, requires_grad=True)
    g = torch.nn.Parameter(torch.tensor(G, dtype=torch.float64))

    class Fall(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.g = g

        def forward(self, t, y):
            return torch.stack((y[:, 1], -self.g + 0 * y[:, 0]), dim=1)

    def run(sensealg):
        y0 = torch.stack((heights, torch.zeros(3, dtype=torch.float64)), dim=1)
        sol = pyode.solve(
            pyode.ODEProblem(Fall(), y0, (0.0, 5.0)),
            pyode.Tsit5(),
            events=pyode.Event(lambda t, y: y[:, 0]),
            rtol=1e-10,
            sensealg=sensealg,
        )
        loss = sol.event_time.sum() + sol.y[-1][:, 1].sum()
        return sol, torch.autograd.grad(loss, (heights, g))

    ref_sol, ref = run(pyode.DirectAdjoint())
    sol, grads = run(pyode.BacksolveAdjoint())
    assert torch.allclose(sol.event_time, ref_sol.event_time, atol=1e-12)
    for a, b in zip(grads, ref):
        assert torch.allclose(a, b, rtol=1e-7)


def test_two_crossings_inside_one_step_are_found():
    # Thrown up at 5 m/s, the ball passes 1.2 m rising and falling; Tsit5 integrates the parabola
    # exactly, so its steps are long enough to hold both crossings.
    y0 = torch.tensor([0.0, 5.0], dtype=torch.float64)
    sol = pyode.solve(
        pyode.ODEProblem(ball(torch.tensor(G, dtype=torch.float64)), y0, (0.0, 3.0)),
        pyode.Tsit5(),
        events=pyode.Event(lambda t, y: y[0] - 1.2, terminal=False),
        rtol=1e-10,
        atol=1e-12,
    )
    root = math.sqrt(25 - 2 * G * 1.2)
    expected = [(5 - root) / G, (5 + root) / G]
    assert [t.item() for t, _ in sol.event_log] == pytest.approx(expected, abs=1e-12)


def test_batched_times_are_reported_when_the_span_ends_first():
    heights = torch.tensor([0.5, 20.0], dtype=torch.float64)
    g = torch.tensor(G, dtype=torch.float64)
    y0 = torch.stack((heights, torch.zeros(2, dtype=torch.float64)), dim=1)
    sol = pyode.solve(
        pyode.ODEProblem(lambda t, y: torch.stack((y[:, 1], -g + 0 * y[:, 0]), dim=1), y0, (0.0, 1.0)),
        pyode.Tsit5(),
        events=pyode.Event(lambda t, y: y[:, 0]),
    )
    assert sol.retcode is pyode.ReturnCode.Success
    assert float(sol.event_time[0]) == pytest.approx(math.sqrt(1 / G), abs=1e-9)
    assert math.isnan(float(sol.event_time[1])) and sol.event_index.tolist() == [0, -1]


def test_second_derivatives_through_events_are_refused():
    h = torch.tensor(H, dtype=torch.float64, requires_grad=True)
    y0 = torch.stack((h, torch.zeros((), dtype=torch.float64)))
    sol = pyode.solve(
        pyode.ODEProblem(ball(torch.tensor(G, dtype=torch.float64)), y0, (0.0, 5.0)),
        pyode.Tsit5(),
        events=pyode.Event(lambda t, y: y[0]),
    )
    with pytest.raises(RuntimeError, match="first derivatives only"):
        torch.autograd.grad(sol.event_time, h, create_graph=True)
    # A first derivative is unaffected.
    (dh,) = torch.autograd.grad(sol.event_time, h)
    assert float(dh) == pytest.approx(1 / math.sqrt(2 * H * G), rel=1e-9)


@pytest.mark.parametrize(
    "sensealg",
    [pyode.BacksolveAdjoint(), pyode.InterpolatingAdjoint(), pyode.GaussAdjoint(), pyode.QuadratureAdjoint()],
    ids=repr,
)
@pytest.mark.parametrize("stops", [dict(tstops=[3.0]), dict(d_discontinuities=[2.0])], ids=["tstops", "jumps"])
def test_adjoint_event_segments_with_stops_past_the_event(sensealg, stops):
    """dz/dt = a, z doubled at t = 1.5, z(4) = 2·1.5a + 2.5a: dz(4)/da = 5.5 exactly. The adjoints
    solve the span in segments between events; a stop past a segment's end once made the loop
    step on toward it beyond the event (8.5 with tstops=[3.0], saving every step)."""
    a = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    event = pyode.Event(lambda t, z: t - 1.5, terminal=False, affect=lambda t, z: 2 * z)
    prob = pyode.ODEProblem(lambda t, z: a * torch.ones_like(z), torch.zeros(1, dtype=torch.float64), (0.0, 4.0), [a])
    sol = pyode.solve(prob, pyode.Tsit5(), sensealg=sensealg, events=[event], rtol=1e-10, atol=1e-10, **stops)
    (grad,) = torch.autograd.grad(sol.y[-1].sum(), [a])
    assert abs(grad.item() - 5.5) < 1e-8
