"""The continuous and quadrature adjoints against closed forms, DirectAdjoint, finite
differences and torchdiffeq; the seminorm's saving is checked by counting backward evaluations."""

from __future__ import annotations

import math

import pytest
import torch

import pyode

ADJOINTS = [
    pyode.BacksolveAdjoint(),
    pyode.BacksolveAdjoint(seminorm=False),
    pyode.InterpolatingAdjoint(),
    pyode.InterpolatingAdjoint(checkpointing=False),
    pyode.QuadratureAdjoint(),
    pyode.GaussAdjoint(),
]


def _growth(alg, solver, rtol=1e-11, atol=1e-13, dtype=torch.float64):
    """dz/dt = a ⊙ z, loss Σ_k w_k Σ z(t_k)², with tensor save times: closed-form gradients."""
    a = torch.tensor([0.3, -0.5], dtype=dtype, requires_grad=True)
    z0 = torch.tensor([1.0, 2.0], dtype=dtype, requires_grad=True)
    ts = torch.tensor([0.7, 1.5], dtype=torch.float64, requires_grad=True)
    w = [1.0, 0.5]
    prob = pyode.ODEProblem(lambda t, z: a * z, z0, (0.0, 1.5), params=[a])
    sol = pyode.solve(prob, solver, saveat=ts, rtol=rtol, atol=atol, sensealg=alg)
    loss = sum(wk * (sol.y[k] ** 2).sum() for k, wk in enumerate(w))
    loss.backward()
    ad, zd, td = a.detach().double(), z0.detach().double(), ts.detach()
    expected_a = sum(wk * 2 * tk * zd**2 * torch.exp(2 * ad * tk) for tk, wk in zip(td, w))
    expected_z0 = sum(wk * 2 * zd * torch.exp(2 * ad * tk) for tk, wk in zip(td, w))
    # dL/dt_k = g_k · f(t_k, z_k) = w_k Σ 2 a z(t_k)².
    expected_ts = torch.stack([wk * (2 * ad * zd**2 * torch.exp(2 * ad * tk)).sum() for tk, wk in zip(td, w)])
    return sol, (a.grad, expected_a), (z0.grad, expected_z0), (ts.grad, expected_ts)


def _relative(got, expected) -> float:
    return float(((got.double() - expected).abs().max() / expected.abs().max()).item())


@pytest.mark.parametrize("alg", ADJOINTS, ids=repr)
@pytest.mark.parametrize("solver", [pyode.DP5(), pyode.Tsit5(), pyode.DP8(), pyode.BS3()], ids=repr)
def test_closed_form_gradients(alg, solver):
    sol, *pairs = _growth(alg, solver)
    for got, expected in pairs:
        assert _relative(got, expected) < 1e-6
    assert sol.adjoint_stats is not None and sol.adjoint_stats.nfe > 0


@pytest.mark.parametrize("alg", ADJOINTS, ids=repr)
@pytest.mark.parametrize("T", [19.0, 24.0, 29.0])
def test_gq_paper_problem(alg, T):
    """Norcliffe & Deisenroth's test: z0 = 10, a = 0.2, L = z(T)², at their rtol 1e-6, atol 1e-7.
    z(T) = z0 e^{aT} reaches 3e3; the relative error of the gradient is bounded by the backward
    solve's relative tolerance times the growth over the span (e^{aT}/T ~ 10), so 1e-4."""
    a = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    z0 = torch.tensor([10.0], dtype=torch.float64, requires_grad=True)
    prob = pyode.ODEProblem(lambda t, z: a * z, z0, (0.0, T), params=[a])
    sol = pyode.solve(prob, pyode.Tsit5(), saveat=[T], rtol=1e-6, atol=1e-7, sensealg=alg)
    (sol.y[-1] ** 2).sum().backward()
    e = math.exp(2 * 0.2 * T)
    assert a.grad.item() == pytest.approx(2 * T * 100 * e, rel=1e-4)
    assert z0.grad.item() == pytest.approx(2 * 10 * e, rel=1e-4)


def _neural_ode_gradients(alg, rtol=1e-11, atol=1e-13, dtype=torch.float64):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(2, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2)
    )
    net = net.to(dtype)

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, t, y):
            return self.net(y)

    field = Field()
    y0 = torch.randn(4, 2, dtype=dtype, requires_grad=True)
    ts = torch.linspace(0, 2, 5, dtype=torch.float64)
    sol = pyode.solve(
        pyode.ODEProblem(field, y0, (0.0, 2.0)), pyode.DP5(), saveat=ts, rtol=rtol, atol=atol, sensealg=alg
    )
    (sol.y**2).mean().backward()
    grads = torch.cat([y0.grad.reshape(-1)] + [p.grad.reshape(-1) for p in field.parameters()])
    return grads, sol


@pytest.mark.parametrize("alg", ADJOINTS, ids=repr)
def test_matches_direct_on_a_neural_ode(alg):
    """4,482 parameters against a state of 8: the regime the seminorm and quadrature target."""
    direct, _ = _neural_ode_gradients(pyode.DirectAdjoint())
    adjoint, sol = _neural_ode_gradients(alg)
    assert _relative(adjoint, direct) < 1e-6
    if isinstance(alg, pyode.QuadratureAdjoint | pyode.GaussAdjoint):
        assert sol.adjoint_stats.nquad > 0


@pytest.mark.parametrize("alg", ADJOINTS, ids=repr)
def test_gradcheck(alg):
    """Finite differences of the adaptive forward solve at rtol 1e-12: the dependence of the
    step sizes on the inputs is O(rtol), far below gradcheck's tolerance."""
    w0 = torch.tensor([[0.3, -0.4], [0.5, 0.1]], dtype=torch.float64)

    def run(y0, w):
        prob = pyode.ODEProblem(lambda t, y: torch.tanh(y @ w) + 0.1 * torch.sin(t), y0, (0.0, 1.0), params=[w])
        return pyode.solve(prob, pyode.DP8(), saveat=[0.5, 1.0], rtol=1e-12, atol=1e-12, sensealg=alg).y

    y0 = torch.tensor([0.5, -0.2], dtype=torch.float64, requires_grad=True)
    w = w0.clone().requires_grad_()
    assert torch.autograd.gradcheck(run, (y0, w), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("alg", ADJOINTS, ids=repr)
def test_float32(alg):
    _sol, *pairs = _growth(alg, pyode.Tsit5(), rtol=1e-6, atol=1e-7, dtype=torch.float32)
    # Tolerance 1e-6 plus float32 round-off accumulated over ~50 backward stages: 1e-4.
    for got, expected in pairs[:2]:
        assert got.dtype == torch.float32
        assert _relative(got, expected) < 1e-4


@pytest.mark.parametrize("alg", [pyode.BacksolveAdjoint(), pyode.InterpolatingAdjoint()], ids=repr)
def test_seminorm_takes_fewer_backward_evaluations(alg):
    """Parameters (4,482) far outnumber state (8): the full norm's a_θ group forces backward
    steps that the seminorm does not. A count, not a time. The span has one save point, so
    the step count is set by the error test rather than by interval ends."""

    def backward_nfe(alg):
        torch.manual_seed(0)
        net = torch.nn.Sequential(
            torch.nn.Linear(2, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2)
        ).double()
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(2.0)  # livelier dynamics than the default initialisation
        y0 = torch.randn(4, 2, dtype=torch.float64)
        prob = pyode.ODEProblem(lambda t, y: net(y), y0, (0.0, 5.0), params=list(net.parameters()))
        sol = pyode.solve(prob, pyode.DP5(), saveat=[5.0], rtol=1e-8, atol=1e-10, sensealg=alg)
        (sol.y**2).mean().backward()
        return sol.adjoint_stats.nfe

    semi = backward_nfe(alg)
    full = backward_nfe(type(alg)(seminorm=False))
    assert semi < full


def test_quadrature_node_count_follows_the_rule():
    alg = pyode.QuadratureAdjoint(C=0.1, max_nodes=64)
    sol, *_ = _growth(alg, pyode.Tsit5(), rtol=1e-8, atol=1e-10)
    # The rule counts the forward loop's evaluations; sol.stats.nfe adds the one evaluation of
    # the closure check made before the solve.
    nfe = sol.stats.nfe - 1
    # Intervals [0, 0.7] and [0.7, 1.5] of the span 1.5.
    expected = sum(min(64, max(1, math.ceil(0.1 * nfe * d / 1.5))) for d in (0.7, 0.8))
    assert sol.adjoint_stats.nquad == expected
    capped, *_ = _growth(pyode.QuadratureAdjoint(C=10.0, max_nodes=3), pyode.Tsit5(), rtol=1e-8, atol=1e-10)
    assert capped.adjoint_stats.nquad == 6


def test_gauss_adjoint_nodes_per_step():
    sol, *_ = _growth(pyode.GaussAdjoint(), pyode.Tsit5())
    stats = sol.adjoint_stats
    assert stats.nquad == 3 * stats.naccept  # floor((5 + 1)/2) nodes on every accepted step
    sol, *_ = _growth(pyode.GaussAdjoint(nodes=2), pyode.Tsit5())
    assert sol.adjoint_stats.nquad == 2 * sol.adjoint_stats.naccept


@pytest.mark.parametrize("alg", ADJOINTS, ids=repr)
def test_tuple_state_batch_and_time_gradients(alg):
    k = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)

    def f(t, y):
        x, v = y
        return v, -k * x

    x0 = torch.tensor([[1.0], [0.5]], dtype=torch.float64, requires_grad=True)
    v0 = torch.zeros(2, 1, dtype=torch.float64)
    t0 = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    t1 = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    sol = pyode.solve(
        pyode.ODEProblem(f, (x0, v0), (t0, t1), params=[k]), pyode.DP5(), rtol=1e-11, atol=1e-13, sensealg=alg
    )
    sol.y[0][-1].sum().backward()
    w = math.sqrt(2.0)
    # x = x0 cos(w t): Σ x(1) = 1.5 cos w; d/dk = -1.5 sin(w)/(2w); d/dt1 = -1.5 w sin w.
    # Every step is saved, so GQ's rule at C = 0.1 puts one node (the midpoint rule) on each
    # step: its quadrature error, not the tolerance, bounds dL/dk (6e-6 relative here).
    k_rel = 2e-5 if isinstance(alg, pyode.QuadratureAdjoint) else 1e-7
    assert k.grad.item() == pytest.approx(-1.5 * math.sin(w) / (2 * w), rel=k_rel)
    torch.testing.assert_close(x0.grad, torch.full((2, 1), math.cos(w), dtype=torch.float64), rtol=1e-7, atol=0)
    assert t1.grad.item() == pytest.approx(-1.5 * w * math.sin(w), rel=1e-7)
    assert t0.grad.item() == pytest.approx(1.5 * w * math.sin(w), rel=1e-7)  # autonomous: -dL/dt1


@pytest.mark.parametrize(
    "alg",
    [pyode.BacksolveAdjoint(), pyode.InterpolatingAdjoint(), pyode.QuadratureAdjoint(), pyode.GaussAdjoint()],
    ids=repr,
)
def test_backward_in_time_and_fixed_steps(alg):
    a = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    z0 = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    prob = pyode.ODEProblem(lambda t, z: a * z, z0, (2.0, 0.0), params=[a])
    sol = pyode.solve(prob, pyode.Tsit5(), saveat=[1.0, 0.0], rtol=1e-11, atol=1e-13, sensealg=alg)
    sol.y[-1].sum().backward()
    # z(0) = z0 e^{-2a}: dz/da = -2 z(0), dz/dz0 = e^{-2a}.
    assert a.grad.item() == pytest.approx(-2 * math.exp(-0.8), rel=1e-7)
    assert z0.grad.item() == pytest.approx(math.exp(-0.8), rel=1e-7)
    a.grad = z0.grad = None
    prob = pyode.ODEProblem(lambda t, z: a * z, z0, (0.0, 1.0), params=[a])
    sol = pyode.solve(prob, pyode.RK4(), dt=0.01, saveat=[1.0], sensealg=alg)
    sol.y[-1].sum().backward()
    assert a.grad.item() == pytest.approx(math.exp(0.4), rel=1e-7)  # RK4 at dt 0.01: error ~1e-10


def test_f_closing_over_tensors_not_in_params_is_an_error():
    w = torch.tensor(0.5, requires_grad=True)
    prob = pyode.ODEProblem(lambda t, z: w * z, torch.ones(2), (0.0, 1.0))  # params defaults to ()
    with pytest.raises(ValueError, match=r"f uses 1 tensor\(s\) that require grad but are not in prob.params"):
        pyode.solve(prob, pyode.Tsit5(), saveat=[1.0], sensealg=pyode.BacksolveAdjoint())
    with torch.no_grad():  # no gradients wanted: no check, no error
        pyode.solve(prob, pyode.Tsit5(), saveat=[1.0], sensealg=pyode.BacksolveAdjoint())
    net = torch.nn.Linear(2, 2)
    field = lambda t, y: net(y)  # noqa: E731 - a closure over a module: its parameters are not found
    with pytest.raises(ValueError, match=r"not in prob\.params"):
        pyode.solve(pyode.ODEProblem(field, torch.ones(2), (0.0, 1.0)), pyode.Tsit5(), sensealg=pyode.GaussAdjoint())


def test_adjoint_stats_are_filled_by_backward():
    net = torch.nn.Linear(2, 2).double()
    sol = pyode.solve(
        pyode.ODEProblem(
            lambda t, y: net(y), torch.ones(2, dtype=torch.float64), (0.0, 1.0), params=list(net.parameters())
        ),
        pyode.Tsit5(),
        saveat=[1.0],
        sensealg=pyode.BacksolveAdjoint(),
    )
    assert sol.adjoint_stats is None
    sol.y.sum().backward()
    assert sol.adjoint_stats.nfe > 0 and sol.adjoint_stats.naccept > 0


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: pyode.QuadratureAdjoint(C=0), "C must be positive"),
        (lambda: pyode.QuadratureAdjoint(max_nodes=0), "max_nodes"),
        (lambda: pyode.GaussAdjoint(nodes=0), "nodes must be a positive integer"),
    ],
)
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_backward_solver():
    prob = pyode.ODEProblem(lambda t, z: -z, torch.ones(2), (0.0, 1.0))
    with pytest.raises(TypeError, match="solver must be a pyode solver"):
        pyode.solve(prob, pyode.Tsit5(), sensealg=pyode.BacksolveAdjoint(solver="dopri5"))


def test_backward_solver_and_tolerances_are_used():
    a = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    prob = pyode.ODEProblem(lambda t, z: a * z, torch.ones(1, dtype=torch.float64), (0.0, 1.0), params=[a])
    loose = pyode.solve(
        prob, pyode.Tsit5(), saveat=[1.0], rtol=1e-10, sensealg=pyode.BacksolveAdjoint(rtol=1e-3, atol=1e-3)
    )
    loose.y.sum().backward()
    tight = pyode.solve(prob, pyode.Tsit5(), saveat=[1.0], rtol=1e-10, sensealg=pyode.BacksolveAdjoint())
    tight.y.sum().backward()
    assert loose.adjoint_stats.nfe < tight.adjoint_stats.nfe
    dp8 = pyode.solve(
        prob, pyode.Tsit5(), saveat=[1.0], rtol=1e-10, sensealg=pyode.BacksolveAdjoint(solver=pyode.DP8())
    )
    dp8.y.sum().backward()
    # The backward solve ran DP8 (12 evaluations per step), not the forward Tsit5 (6, one reused).
    backward_steps = dp8.adjoint_stats.naccept + dp8.adjoint_stats.nreject
    assert dp8.adjoint_stats.nfe >= 12 * backward_steps
    assert tight.adjoint_stats.nfe < 12 * (tight.adjoint_stats.naccept + tight.adjoint_stats.nreject)


@pytest.mark.parametrize(
    "alg", [pyode.BacksolveAdjoint(), pyode.InterpolatingAdjoint(), pyode.GaussAdjoint()], ids=repr
)
def test_backward_solve_uses_the_forward_controller(alg):
    """The controller given to solve steps the backward solve too (it was dropped there)."""
    calls = {"adapt": 0}

    class Counting(pyode.IController):
        def adapt(self, ratio, h, state):
            calls["adapt"] += 1
            return super().adapt(ratio, h, state)

    w = torch.tensor([[-0.5, 1.0], [-1.0, -0.5]], dtype=torch.float64, requires_grad=True)
    prob = pyode.ODEProblem(lambda t, y: y @ w, torch.tensor([1.0, 0.0], dtype=torch.float64), (0.0, 5.0), params=[w])
    sol = pyode.solve(prob, pyode.Tsit5(), controller=Counting(), sensealg=alg, saveat=[5.0])
    forward = calls["adapt"]
    sol.y[-1].sum().backward()
    backward = sol.adjoint_stats.naccept + sol.adjoint_stats.nreject
    assert calls["adapt"] - forward >= backward > 0


@pytest.mark.parametrize("n", [100, 300, 1000])
def test_fixed_step_backward_solve_takes_the_forward_steps(n):
    # Stepping backward toward t = 0, t carries the rounding of t1 = 1 (an ulp of 1.0), far above
    # an ulp of the last steps' times: the landing slack must count it, or the last step misses
    # 0 by that much and a sliver step follows (301 backward steps for 300 forward ones, once).
    w = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    prob = pyode.ODEProblem(lambda t, y: -w * y, torch.ones(2, 1, dtype=torch.float64), (0.0, 1.0), params=[w])
    sol = pyode.solve(prob, pyode.RK4(), saveat=[1.0], dt=1 / n, sensealg=pyode.BacksolveAdjoint())
    sol.y[-1].sum().backward()
    assert sol.stats.naccept == n
    assert sol.adjoint_stats.naccept == n
