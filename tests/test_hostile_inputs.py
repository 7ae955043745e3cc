"""Inputs a hostile (or hurried) user gives: each gets the right answer or an error that names it
(issue 10's defects 4-10 and the torchdiffeq gaps)."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
import torchdiffeq

import pyode

ADJOINTS = [
    pyode.BacksolveAdjoint(),
    pyode.InterpolatingAdjoint(),
    pyode.QuadratureAdjoint(),
    pyode.GaussAdjoint(),
]


def _blow_up(y0=1.0, t1=3.0):
    # y' = y², y(0) = 1: y = 1/(1 - t), infinite at t = 1; even Euler's doubly exponential
    # growth past it overflows float64 well before t = 3.
    return pyode.ODEProblem(lambda t, y: y * y, torch.tensor([y0], dtype=torch.float64), (0.0, t1))


FIXED = [
    (pyode.Euler(), {}),
    (pyode.Midpoint(), {}),
    (pyode.RK4(), {}),
    (pyode.Tsit5(), {"adaptive": False}),
    (pyode.Reversible(pyode.RK4()), {}),
]


@pytest.mark.parametrize("solver, extra", FIXED, ids=lambda x: repr(x) if not isinstance(x, dict) else str(x))
@pytest.mark.parametrize("saveat", [None, [0.5, 1.5, 3.0]], ids=["every-step", "saveat"])
def test_a_fixed_step_blow_up_is_unstable_on_every_path(solver, extra, saveat):
    sol = pyode.solve(_blow_up(), solver, dt=0.1, saveat=saveat, throw=False, **extra)
    assert sol.retcode is pyode.ReturnCode.Unstable
    assert bool(torch.isfinite(sol.y).all()), "the partial solution holds only finite states"
    assert sol.t.shape[0] == sol.y.shape[0] and float(sol.t[-1]) < 3.0
    with pytest.raises(pyode.SolveError, match="Unstable") as info:
        pyode.solve(_blow_up(), solver, dt=0.1, saveat=saveat, **extra)
    assert info.value.retcode is pyode.ReturnCode.Unstable and info.value.t < 3.0


def test_a_blow_up_is_unstable_even_when_max_steps_ends_the_solve_first():
    sol = pyode.solve(_blow_up(t1=100.0), pyode.RK4(), dt=0.1, max_steps=100, throw=False)
    assert sol.retcode is pyode.ReturnCode.Unstable
    assert bool(torch.isfinite(sol.y).all())


def test_dense_output_ends_where_a_blow_up_was_found():
    sol = pyode.solve(_blow_up(), pyode.RK4(), dt=0.1, throw=False, dense=True)
    assert sol.retcode is pyode.ReturnCode.Unstable
    assert bool(torch.isfinite(sol(torch.linspace(0.0, sol.dense.t_end, 50, dtype=torch.float64))).all())
    with pytest.raises(ValueError, match="outside the solved span"):
        sol(2.5)


def test_an_adaptive_blow_up_is_unstable_or_too_small_a_step():
    sol = pyode.solve(_blow_up(), pyode.Tsit5(), throw=False)
    assert sol.retcode in (pyode.ReturnCode.Unstable, pyode.ReturnCode.DtLessThanMin)
    assert bool(torch.isfinite(sol.y).all())


def test_an_infinite_state_that_passes_the_error_test_is_unstable():
    # f jumps to inf at t > 0.5 and back to 0: the error estimate sees inf - inf = NaN on the step
    # that crosses, but a state that is already inf with a zero derivative passes an error test.
    def f(t, y):
        return torch.where(t > 0.5, torch.full_like(y, float("inf")), torch.zeros_like(y))

    prob = pyode.ODEProblem(f, torch.ones(2, dtype=torch.float64), (0.0, 1.0))
    for saveat in (None, [0.25, 1.0]):
        sol = pyode.solve(prob, pyode.Euler(), dt=0.25, saveat=saveat, throw=False)
        assert sol.retcode is pyode.ReturnCode.Unstable
        assert bool(torch.isfinite(sol.y).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_state_is_refused_with_the_fix(dtype):
    with pytest.raises(TypeError, match=r"y0 is torch.*autocast"):
        pyode.ODEProblem(lambda t, y: -y, torch.ones(2, dtype=dtype), (0.0, 1.0))
    with pytest.raises(TypeError, match=r"y0\[1\] is torch.*autocast"):
        pyode.ODEProblem(lambda t, y: y, (torch.ones(2), torch.ones(2, dtype=dtype)), (0.0, 1.0))


def _mixed_precision_problem():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    y0 = torch.randn(8, 4)
    return net, y0


@pytest.mark.parametrize("sensealg", [pyode.DirectAdjoint(), pyode.BacksolveAdjoint(), pyode.GaussAdjoint()], ids=repr)
def test_mixed_precision_f_under_autocast(sensealg):
    net, y0 = _mixed_precision_problem()

    def f_inner(t, y):  # the user's own autocast, inside f
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return net(y)

    def run(f, outer):
        net.zero_grad()
        prob = pyode.ODEProblem(f, y0, (0.0, 1.0), params=list(net.parameters()))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=outer):
            sol = pyode.solve(prob, pyode.Tsit5(), saveat=[0.3, 0.7, 1.0], rtol=1e-2, atol=1e-3, sensealg=sensealg)
        sol.y.pow(2).sum().backward()
        return sol, net[0].weight.grad.clone()

    inner, g_inner = run(f_inner, outer=False)
    outer, g_outer = run(net and (lambda t, y: net(y)), outer=True)
    assert inner.y.dtype == outer.y.dtype == torch.float32
    assert inner.retcode is pyode.ReturnCode.Success
    # f's arithmetic is bfloat16 either way, and pyode's own (stage combinations, interpolation
    # at the interior save points, step control) is float32 either way: the same bits.
    assert inner.stats == outer.stats
    torch.testing.assert_close(outer.y, inner.y, rtol=0, atol=0)
    torch.testing.assert_close(g_outer, g_inner, rtol=0, atol=0)
    # And against full precision: bfloat16 keeps 8 bits (relative 4e-3 per evaluation).
    full, g_full = run(lambda t, y: net(y), outer=False)
    torch.testing.assert_close(inner.y, full.y, rtol=0, atol=5e-2)
    torch.testing.assert_close(g_inner, g_full, rtol=0.1, atol=0.1 * float(g_full.abs().max()))
    assert outer.prob.f is not None and outer.prob.params == tuple(net.parameters())


def test_local_regularization_and_dense_output_under_autocast_keep_the_states_dtype():
    net, y0 = _mixed_precision_problem()

    def f_inner(t, y):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return net(y)

    results = []
    for f, outer in ((f_inner, False), (lambda t, y: net(y), True)):
        torch.manual_seed(3)  # the same local-regularization time
        prob = pyode.ODEProblem(f, y0, (0.0, 1.0), params=list(net.parameters()))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=outer):
            sol = pyode.solve(prob, pyode.Tsit5(), rtol=1e-2, atol=1e-3, regularize=pyode.LocalRegularization())
            with torch.no_grad():
                dense = sol(torch.tensor([0.3, 0.6]))
        results.append((sol.error_estimate, dense))
    (e_inner, d_inner), (e_outer, d_outer) = results
    assert e_outer.dtype == d_outer.dtype == torch.float32
    torch.testing.assert_close(e_outer, e_inner, rtol=0, atol=0)
    torch.testing.assert_close(d_outer, d_inner, rtol=0, atol=0)


def test_other_dtype_mismatches_are_still_named():
    with pytest.raises(TypeError, match=r"returned dtype torch\.float32, but the state has dtype torch\.float64"):
        pyode.solve(pyode.ODEProblem(lambda t, y: y.float(), torch.ones(2, dtype=torch.float64), (0, 1)), pyode.Tsit5())


@pytest.mark.parametrize("sensealg", [pyode.DirectAdjoint(), *ADJOINTS], ids=repr)
def test_adjoints_return_the_empty_partial_solution(sensealg):
    y0 = torch.ones(2, 3, dtype=torch.float64, requires_grad=True)
    prob = pyode.ODEProblem(lambda t, y: -y, y0, (0.0, 1.0))
    sol = pyode.solve(prob, pyode.Tsit5(), saveat=[0.9, 1.0], max_steps=1, throw=False, sensealg=sensealg)
    assert sol.retcode is pyode.ReturnCode.MaxIters
    assert sol.y.shape == (0, 2, 3) and sol.t.shape == (0,)
    sol.y.sum().backward()
    assert y0.grad is None or bool((y0.grad == 0).all())
    empty = pyode.solve(prob, pyode.Tsit5(), saveat=[], sensealg=sensealg)
    assert empty.retcode is pyode.ReturnCode.Success and empty.y.shape == (0, 2, 3)
    tuple_prob = pyode.ODEProblem(lambda t, y: (-y[0], -y[1]), (y0, torch.ones(4, dtype=torch.float64)), (0.0, 1.0))
    parts = pyode.solve(tuple_prob, pyode.Tsit5(), saveat=[], sensealg=sensealg).y
    assert [p.shape for p in parts] == [(0, 2, 3), (0, 4)]


@pytest.mark.parametrize(
    "sensealg", [*ADJOINTS, pyode.InterpolatingAdjoint(checkpointing=False), pyode.DirectAdjoint(checkpoint_every=2)]
)
def test_dense_output_without_a_gradient_is_refused_with_grad_enabled(sensealg):
    w = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    prob = pyode.ODEProblem(lambda t, y: -w * y, torch.ones(2, dtype=torch.float64), (0.0, 1.0), params=[w])
    sol = pyode.solve(prob, pyode.Tsit5(), saveat=[1.0], dense=True, sensealg=sensealg)
    with pytest.raises(RuntimeError, match=r"sol\(t\) has no gradient here.*saveat="):
        sol(0.5)
    with torch.no_grad():
        torch.testing.assert_close(sol(0.5), torch.full((2,), float(np.exp(-0.25)), dtype=torch.float64))
    # Nothing to lose when nothing requires grad.
    plain = pyode.ODEProblem(lambda t, y: -0.5 * y, torch.ones(2, dtype=torch.float64), (0.0, 1.0))
    pyode.solve(plain, pyode.Tsit5(), saveat=[1.0], dense=True, sensealg=sensealg)(0.5)


def test_dense_output_under_direct_adjoint_has_the_right_gradient():
    w = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    prob = pyode.ODEProblem(lambda t, y: -w * y, torch.ones(2, dtype=torch.float64), (0.0, 1.0))
    sol = pyode.solve(prob, pyode.Tsit5(), rtol=1e-10, atol=1e-12)
    sol(0.5).sum().backward()
    # d/dw 2 exp(-w/2) = -exp(-w/2); interpolation error at these tolerances is far below 1e-7.
    assert abs(w.grad.item() + float(np.exp(-0.25))) < 1e-7


@pytest.mark.parametrize("sensealg", [*ADJOINTS, pyode.ReversibleAdjoint()], ids=repr)
def test_a_tensor_computed_outside_f_from_a_parameter_works(sensealg):
    # `W2 = 2 * W` (or `W.t()`) outside f, with params=[W]: every VJP runs through the outer
    # graph, which used to be freed by the first one ("backward through the graph a second time").
    W = torch.tensor([[-0.5, 0.1], [0.2, -0.3]], dtype=torch.float64, requires_grad=True)
    solver = pyode.ReversibleHeun() if isinstance(sensealg, pyode.ReversibleAdjoint) else pyode.Tsit5()

    def gradient(s, explicit):
        W2, WT = 2 * W.exp().log(), W.t()  # made anew: a backward frees the graph above them
        prob = pyode.ODEProblem(lambda t, y: y @ W2.T + y @ WT, torch.ones(2, dtype=torch.float64), (0, 1), [W])
        if explicit:  # the computed tensors themselves as the parameters: gradients flow on to W
            prob = pyode.ODEProblem(prob.f, prob.y0, (0, 1), [W2, WT])
        pyode.solve(prob, solver, saveat=[0.5, 1.0], sensealg=s, rtol=1e-9, atol=1e-12).y.sum().backward()
        g, W.grad = W.grad, None
        return g

    reference = gradient(pyode.DirectAdjoint(), explicit=False)
    # The continuous adjoints against the discrete gradient: both to the tolerance, 1e-9.
    torch.testing.assert_close(gradient(sensealg, explicit=False), reference, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(gradient(sensealg, explicit=True), reference, rtol=1e-6, atol=1e-8)


def test_a_parameter_computed_from_another_is_refused():
    # Both in params would count the path through W2 twice (a silently doubled gradient).
    W = torch.tensor([[-0.5, 0.1], [0.2, -0.3]], dtype=torch.float64, requires_grad=True)
    W2 = 2 * W
    prob = pyode.ODEProblem(lambda t, y: y @ W2.T, torch.ones(2, dtype=torch.float64), (0, 1), [W2, W])
    for sensealg in ADJOINTS:
        with pytest.raises(ValueError, match=r"params\[0\] is computed from prob\.params\[1\]"):
            pyode.solve(prob, pyode.Tsit5(), saveat=[1.0], sensealg=sensealg)


def test_a_closure_outside_params_is_still_named():
    W = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    W2 = 2 * W
    prob = pyode.ODEProblem(lambda t, y: -W2 * y, torch.ones(2, dtype=torch.float64), (0.0, 1.0))
    with pytest.raises(ValueError, match=r"not in prob\.params"):
        pyode.solve(prob, pyode.Tsit5(), saveat=[1.0], sensealg=pyode.BacksolveAdjoint())


def _shape_changing(after: int, bad):
    calls = [0]

    def f(t, y):
        calls[0] += 1
        return -y if calls[0] <= after else bad(y)

    return f


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda y: -y[:1], r"returned shape \(1,\) at t = .*on every call"),
        (lambda y: -y.sum(), r"returned shape \(\) at t = "),
        (lambda y: -y.unsqueeze(0), r"returned shape \(1, 2\)"),
        (lambda y: [-y], "must return a tensor shaped like y; at t = .* returned list"),
    ],
)
@pytest.mark.parametrize("sensealg", [pyode.DirectAdjoint(), pyode.BacksolveAdjoint()], ids=repr)
def test_f_changing_its_output_is_named_on_any_call(bad, match, sensealg):
    for after in (0, 3):  # the first call, and a later one
        prob = pyode.ODEProblem(_shape_changing(after, bad), torch.ones(2, dtype=torch.float64), (0.0, 1.0))
        with pytest.raises((ValueError, TypeError), match=match):
            pyode.solve(prob, pyode.Tsit5(), saveat=[1.0], sensealg=sensealg)


def test_f_changing_its_output_during_the_backward_pass_is_named():
    calls = [0]
    y0 = torch.ones(2, dtype=torch.float64, requires_grad=True)

    def f(t, y):
        calls[0] += 1
        return -y if calls[0] < 40 else -y[:1]

    sol = pyode.solve(pyode.ODEProblem(f, y0, (0.0, 1.0)), pyode.Tsit5(), saveat=[1.0], sensealg=pyode.GaussAdjoint())
    assert calls[0] < 40
    with pytest.raises(ValueError, match="on every call"):
        sol.y.sum().backward()


State = collections.namedtuple("State", "position velocity")


@pytest.mark.parametrize("sensealg", [pyode.DirectAdjoint(), pyode.BacksolveAdjoint()], ids=repr)
def test_a_namedtuple_state_keeps_its_type(sensealg):
    y0 = State(torch.ones(3, dtype=torch.float64, requires_grad=True), torch.zeros(3, dtype=torch.float64))

    def f(t, y):
        assert isinstance(y, State)
        return State(y.velocity, -y.position)

    sol = pyode.solve(pyode.ODEProblem(f, y0, (0.0, 1.0)), pyode.Tsit5(), saveat=[0.5, 1.0], sensealg=sensealg)
    assert isinstance(sol.y, State) and sol.y.position.shape == (2, 3)
    torch.testing.assert_close(sol.y.position[-1].detach(), torch.full((3,), float(np.cos(1.0)), dtype=torch.float64))
    sol.y.position[-1].sum().backward()
    torch.testing.assert_close(y0.position.grad, torch.full((3,), float(np.cos(1.0)), dtype=torch.float64))


def test_numpy_scalars_are_numbers():
    prob = pyode.ODEProblem(lambda t, y: -y, torch.ones(1, dtype=torch.float64), (np.float64(0), np.float32(1)))
    sol = pyode.solve(
        prob, pyode.Tsit5(), dt=np.float64(0.1), max_steps=np.int64(100), rtol=np.float32(1e-6), dtmax=np.float64(1)
    )
    assert sol.retcode is pyode.ReturnCode.Success
    torch.testing.assert_close(sol.y[-1], torch.tensor([np.exp(-1.0)], dtype=torch.float64))


def test_saveat_as_a_string_is_refused_by_name():
    prob = pyode.ODEProblem(lambda t, y: -y, torch.ones(1), (0.0, 1.0))
    with pytest.raises(TypeError, match=r"saveat must be .* got the string '0\.5'"):
        pyode.solve(prob, pyode.Tsit5(), saveat="0.5")


def test_dense_output_of_an_empty_span():
    prob = pyode.ODEProblem(lambda t, y: -y, torch.tensor([1.0, 2.0]), (0.5, 0.5))
    sol = pyode.solve(prob, pyode.Tsit5())
    torch.testing.assert_close(sol(0.5), torch.tensor([1.0, 2.0]))
    assert sol(torch.tensor([0.5, 0.5])).shape == (2, 2)
    with pytest.raises(ValueError, match="outside the solved span"):
        sol(0.6)


# --- torchdiffeq compatibility ---------------------------------------------------------------


class _Field(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 3, dtype=torch.float64)

    def forward(self, t, y):
        return torch.tanh(self.lin(y))


def test_max_num_steps_counts_per_output_interval_as_in_torchdiffeq():
    torch.manual_seed(0)
    f = _Field()
    y0 = torch.randn(3, dtype=torch.float64)
    t = torch.linspace(0, 10, 11, dtype=torch.float64)
    # The smallest per-interval budget torchdiffeq accepts here; pyode must accept it too.
    budget = next(n for n in range(1, 50) if _torchdiffeq_finishes(f, y0, t, n))
    torch.testing.assert_close(
        pyode.odeint(f, y0, t, options=dict(max_num_steps=budget)),
        torchdiffeq.odeint(f, y0, t, options=dict(max_num_steps=budget)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_max_num_steps_is_ignored_on_fixed_grids_as_in_torchdiffeq():
    f = _Field()
    y0 = torch.ones(3, dtype=torch.float64)
    t = torch.linspace(0, 1, 3, dtype=torch.float64)
    options = dict(step_size=0.01, max_num_steps=3)
    with pytest.warns(UserWarning):  # torchdiffeq says it ignores the option
        theirs = torchdiffeq.odeint(f, y0, t, method="rk4", options=options)
    ours = pyode.odeint(f, y0, t, method="rk4", options=options)
    # Classical RK4 against torchdiffeq's 3/8 rule, both fourth order at h = 0.01.
    torch.testing.assert_close(ours, theirs, rtol=1e-7, atol=1e-9)


def _torchdiffeq_finishes(f, y0, t, n):
    try:
        torchdiffeq.odeint(f, y0, t, options=dict(max_num_steps=n))
    except AssertionError:
        return False
    return True


def test_tensor_and_per_component_tolerances_as_in_torchdiffeq():
    torch.manual_seed(0)
    f = _Field()
    y0 = torch.randn(3, dtype=torch.float64)
    t = torch.linspace(0, 2, 5, dtype=torch.float64)
    rtol = torch.tensor([1e-8, 1e-3, 1e-8], dtype=torch.float64)
    ours, theirs = pyode.odeint(f, y0, t, rtol=rtol, atol=1e-9), torchdiffeq.odeint(f, y0, t, rtol=rtol, atol=1e-9)
    # Both reach the loosest tolerance (1e-3) on component 1 and 1e-8 elsewhere.
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    pair = (torch.randn(2, dtype=torch.float64), torch.randn(1, dtype=torch.float64))

    def g(t, y):
        return (-y[0], -2 * y[1])

    tols = dict(rtol=(1e-8, 1e-3), atol=(1e-9, torch.tensor([1e-9], dtype=torch.float64)))
    for a, b in zip(pyode.odeint(g, pair, t, **tols), torchdiffeq.odeint(g, pair, t, **tols)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # Looser tolerances on one component take fewer steps than tight ones everywhere.
    loose = pyode.solve(pyode.ODEProblem(f, y0, (0.0, 2.0)), pyode.Tsit5(), rtol=torch.tensor([1e-3, 1e-3, 1e-10]))
    tight = pyode.solve(pyode.ODEProblem(f, y0, (0.0, 2.0)), pyode.Tsit5(), rtol=1e-10)
    assert loose.stats.naccept <= tight.stats.naccept


@pytest.mark.parametrize("sensealg", ADJOINTS, ids=repr)
def test_mixed_per_component_tolerances_with_adjoints(sensealg):
    # Each component's test is carried by one nonzero tolerance; the backward solve takes the
    # tightest positive ones (1e-8 and 1e-10).
    y0 = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    prob = pyode.ODEProblem(lambda t, y: -y * torch.tensor([1.0, 2.0], dtype=torch.float64), y0, (0.0, 1.0))
    tols = dict(rtol=torch.tensor([0.0, 1e-8]), atol=torch.tensor([1e-10, 0.0]))
    pyode.solve(prob, pyode.Tsit5(), saveat=[1.0], sensealg=sensealg, **tols).y.sum().backward()
    torch.testing.assert_close(
        y0.grad, torch.tensor([np.exp(-1.0), np.exp(-2.0)], dtype=torch.float64), rtol=1e-6, atol=0
    )


def test_numpy_array_tolerances():
    prob = pyode.ODEProblem(lambda t, y: -y, torch.ones(3, dtype=torch.float64), (0.0, 1.0))
    sol = pyode.solve(prob, pyode.Tsit5(), rtol=np.array([1e-8, 1e-3, 1e-8]))
    assert sol.retcode is pyode.ReturnCode.Success


@pytest.mark.parametrize(
    "rtol, match",
    [
        (torch.tensor([1e-3, -1.0, 1e-3]), "non-negative and finite"),
        (torch.ones(2), "does not broadcast to the state's shape"),
        ((1e-3, 1e-3), "as a tuple needs a tuple state"),
        ("1e-3", "rtol must be a number"),
    ],
)
def test_bad_tolerances_are_named(rtol, match):
    prob = pyode.ODEProblem(lambda t, y: -y, torch.ones(3), (0.0, 1.0))
    with pytest.raises((TypeError, ValueError), match=match):
        pyode.solve(prob, pyode.Tsit5(), rtol=rtol)


def test_adjoint_params_empty_as_in_torchdiffeq():
    torch.manual_seed(0)
    f = _Field()
    t = torch.linspace(0, 1, 4, dtype=torch.float64)
    grads = []
    for lib in (pyode, torchdiffeq):
        y0 = torch.randn(3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_()
        lib.odeint_adjoint(f, y0, t, adjoint_params=()).sum().backward()
        assert f.lin.weight.grad is None
        grads.append(y0.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("tuple_state", [False, True])
def test_a_callable_adjoint_norm_sees_torchdiffeqs_augmented_state(tuple_state):
    torch.manual_seed(0)
    f = _Field()
    if tuple_state:
        g = f

        def f(t, y):  # the same field on a pair (y, 2y)
            return g(t, y[0]), 2 * g(t, y[0])

        f.parameters = g.parameters
        params = tuple(g.parameters())
        y0 = (torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64))
    else:
        params = tuple(f.parameters())
        y0 = torch.randn(3, dtype=torch.float64)
    t = torch.linspace(0, 1, 3, dtype=torch.float64)
    seen = {}
    for lib in (pyode, torchdiffeq):
        shapes = []

        def norm(state, shapes=shapes):
            shapes.append(tuple(tuple(x.shape) for x in state))
            return max(x.abs().max() for x in state)

        out = lib.odeint_adjoint(f, y0, t, adjoint_params=params, adjoint_options=dict(norm=norm))
        sum(o.sum() for o in out).backward() if tuple_state else out.sum().backward()
        seen[lib.__name__] = shapes[-1]
    assert seen["pyode"] == seen["torchdiffeq"]
