"""DirectAdjoint: gradients against closed forms, gradcheck, time gradients, dtypes."""

from __future__ import annotations

import math

import pytest
import torch

import pyode

ADAPTIVE = [pyode.BS3(), pyode.DP5(), pyode.Tsit5(), pyode.DP8()]


@pytest.mark.parametrize("solver", ADAPTIVE, ids=repr)
def test_exponential_growth_gradients(solver):
    """dz/dt = a ⊙ z, loss Σ_k w_k · z(t_k)² on two save points: every gradient in closed form."""
    a = torch.tensor([0.3, -0.5], dtype=torch.float64, requires_grad=True)
    z0 = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    ts = [0.7, 1.5]
    w = [1.0, 0.5]
    sol = pyode.solve(pyode.ODEProblem(lambda t, z: a * z, z0, (0.0, 1.5)), solver, saveat=ts, rtol=1e-11, atol=1e-13)
    loss = sum(wk * (sol.y[k] ** 2).sum() for k, wk in enumerate(w))
    loss.backward()
    grad_a = sum(wk * 2 * tk * z0.detach() ** 2 * torch.exp(2 * a.detach() * tk) for tk, wk in zip(ts, w))
    grad_z0 = sum(wk * 2 * z0.detach() * torch.exp(2 * a.detach() * tk) for tk, wk in zip(ts, w))
    torch.testing.assert_close(a.grad, grad_a, rtol=1e-6, atol=0)
    torch.testing.assert_close(z0.grad, grad_z0, rtol=1e-6, atol=0)


@pytest.mark.parametrize("T", [19.0, 24.0, 29.0])
def test_gq_paper_problem(T):
    """Norcliffe & Deisenroth's test: z0 = 10, a = 0.2, L = z(T)²; z(T) = z0 e^{aT} ~ 5e3."""
    a = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    z0 = torch.tensor([10.0], dtype=torch.float64, requires_grad=True)
    sol = pyode.solve(
        pyode.ODEProblem(lambda t, z: a * z, z0, (0.0, T)), pyode.Tsit5(), saveat=[T], rtol=1e-10, atol=1e-10
    )
    (sol.y[-1] ** 2).sum().backward()
    e = math.exp(2 * 0.2 * T)
    assert a.grad.item() == pytest.approx(2 * T * 100 * e, rel=1e-6)
    assert z0.grad.item() == pytest.approx(2 * 10 * e, rel=1e-6)


def test_time_gradients():
    a = torch.tensor(0.3, dtype=torch.float64)
    y0 = torch.tensor([2.0], dtype=torch.float64)
    t0 = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    t1 = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    sol = pyode.solve(pyode.ODEProblem(lambda t, y: a * y, y0, (t0, t1)), pyode.Tsit5(), rtol=1e-10, atol=1e-12)
    sol.y[-1].sum().backward()
    y_end = 2 * math.exp(0.3 * 1.5)
    assert t0.grad.item() == pytest.approx(-0.3 * y_end, rel=1e-8)
    assert t1.grad.item() == pytest.approx(0.3 * y_end, rel=1e-8)


def test_save_time_gradients_are_f_at_the_save_point():
    # L = Σ_k y(t_k) with t = ts (t0 = ts[0] moves with it): dL/dt_k = f(t_k, y_k) for k > 0 and
    # dL/dt_0 = -Σ_{k>0} ∂y(t_k)/∂y0 · f(t0, y0).
    def f(t, y):
        return torch.sin(t) * y

    ts = torch.tensor([0.0, 0.7, 1.9, 3.0], dtype=torch.float64, requires_grad=True)
    y0 = torch.tensor([1.5], dtype=torch.float64)
    ys = pyode.odeint(f, y0, ts, rtol=1e-11, atol=1e-13)
    ys.sum().backward()
    # y = y0 exp(1 - cos t): f(t_k, y_k) = sin t_k y_k, and ∂y(t_k)/∂y0 = y_k / y0.
    exact = [1.5 * math.exp(1 - math.cos(t)) for t in ts.tolist()]
    expected = [math.sin(t) * y for t, y in zip(ts.tolist(), exact)]
    expected[0] = -sum(y / 1.5 for y in exact[1:]) * math.sin(0.0) * 1.5
    torch.testing.assert_close(ts.grad, torch.tensor(expected, dtype=torch.float64), rtol=1e-7, atol=1e-9)


def test_time_gradient_at_a_moving_start():
    # With t0 = ts[0] = 0.4 and f depending on t, the start's gradient is not zero.
    def f(t, y):
        return torch.cos(t) * y

    ts = torch.tensor([0.4, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    y0 = torch.tensor([1.0], dtype=torch.float64)
    pyode.odeint(f, y0, ts, rtol=1e-11, atol=1e-13).sum().backward()
    # y(t) = exp(sin t - sin t0): dL/dt0 = -cos(t0) Σ_{k>0} y(t_k).
    ys = [math.exp(math.sin(t) - math.sin(0.4)) for t in (1.0, 2.0)]
    assert ts.grad[0].item() == pytest.approx(-math.cos(0.4) * sum(ys), rel=1e-7)


@pytest.mark.parametrize("solver", [pyode.RK4(), pyode.Tsit5(), pyode.DP8()], ids=repr)
def test_gradcheck_fixed_steps(solver):
    """With fixed steps the discrete solution is smooth in every input, so its exact
    derivative is checked against finite differences."""
    W = torch.randn(3, 3, dtype=torch.float64) * 0.5

    def run(y0, w, ts):
        prob = pyode.ODEProblem(lambda t, y: torch.tanh(y @ w) * torch.cos(t), y0, (0.0, 1.0))
        return pyode.solve(prob, solver, dt=0.1, adaptive=False, saveat=ts).y

    y0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    w = W.clone().requires_grad_()
    ts = torch.tensor(
        [0.1, 0.33, 0.71, 0.95], dtype=torch.float64, requires_grad=True
    )  # inside the span, so finite differences stay in it
    assert torch.autograd.gradcheck(run, (y0, w, ts))


def test_tuple_state_gradients():
    k = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)

    def f(t, y):
        x, v = y
        return v, -k * x

    x0 = torch.tensor([1.0], dtype=torch.float64)
    v0 = torch.tensor([0.0], dtype=torch.float64)
    sol = pyode.solve(pyode.ODEProblem(f, (x0, v0), (0.0, 1.0)), pyode.DP5(), saveat=[1.0], rtol=1e-11, atol=1e-13)
    sol.y[0][-1].sum().backward()
    # x = cos(√k t): dx(1)/dk = -sin(√k) / (2√k).
    w = math.sqrt(2.0)
    assert k.grad.item() == pytest.approx(-math.sin(w) / (2 * w), rel=1e-7)


def test_float32_gradients():
    a = torch.tensor([0.3], dtype=torch.float32, requires_grad=True)
    z0 = torch.tensor([1.0], dtype=torch.float32)
    sol = pyode.solve(
        pyode.ODEProblem(lambda t, z: a * z, z0, (0.0, 2.0)), pyode.Tsit5(), saveat=[2.0], rtol=1e-6, atol=1e-7
    )
    sol.y[-1].sum().backward()
    # float32 round-off (1e-7 per operation over ~20 steps) and the 1e-6 tolerance bound it.
    assert a.grad.item() == pytest.approx(2 * math.exp(0.6), rel=1e-4)
    assert a.grad.dtype == torch.float32


def test_error_estimate_is_not_recorded():
    # The controller is not differentiated: a backward pass reaches f's parameters only through
    # the stages, and the graph holds no error-norm nodes (their memory would grow per step).
    a = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    sol = pyode.solve(
        pyode.ODEProblem(lambda t, z: a * z, torch.ones(1, dtype=torch.float64), (0.0, 1.0)),
        pyode.Tsit5(),
        saveat=[1.0],
    )
    names = set()
    stack = [sol.y.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node.name() in names:
            continue
        names.add(node.name())
        stack.extend(fn for fn, _ in node.next_functions)
    assert not any("Norm" in n or "Maximum" in n or "Abs" in n for n in names), names


def _saved_bytes(fn) -> int:
    """Bytes autograd keeps for backward while `fn` runs (outside checkpointed regions)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


@pytest.mark.parametrize("saveat", [None, "tensor", "list"])
@pytest.mark.parametrize("solver", [pyode.Tsit5(), pyode.DP8(), pyode.BS3()], ids=repr)
def test_checkpointing_gives_the_same_gradient(solver, saveat):
    torch.manual_seed(0)  # the data, not the order the tests ran in
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()
    y0 = torch.randn(3, 2, dtype=torch.float64)
    saves = {
        "tensor": torch.linspace(0, 3, 7, dtype=torch.float64, requires_grad=True),
        "list": [0.5, 3.0],
        None: None,
    }[saveat]

    def gradients(sensealg):
        net.zero_grad()
        y = y0.clone().requires_grad_()
        sol = pyode.solve(
            pyode.ODEProblem(lambda t, x: net(x), y, (0.0, 3.0)), solver, saveat=saves, rtol=1e-6, sensealg=sensealg
        )
        sol.y.pow(2).sum().backward()
        return sol, torch.cat([y.grad.reshape(-1)] + [p.grad.reshape(-1) for p in net.parameters()])

    plain, expected = gradients(pyode.DirectAdjoint())
    checked, got = gradients(pyode.DirectAdjoint(checkpoint_every=2))
    assert torch.equal(plain.t.detach(), checked.t.detach())
    torch.testing.assert_close(checked.y, plain.y, rtol=1e-13, atol=1e-13)
    # The same discrete computation, replayed: equal up to the rounding of t + h - t, which
    # differs from h by an ulp of t and is carried through ~10^3 operations per gradient entry, so
    # the error scales with the gradient's largest entry, not each entry's own size (an entry
    # near zero differs by as much as a large one). Measured over 8 seeds with DP8 and tensor
    # save times: at most 1.1e-13 of the largest entry; 1e-12 of it leaves a factor 9.
    scale = float(expected.abs().max())
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12 * scale)
    assert checked.stats.naccept == plain.stats.naccept and checked.stats.nfe > plain.stats.nfe


def test_checkpointing_bounds_memory():
    net = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2)).double()
    y0 = torch.randn(16, 2, dtype=torch.float64)

    def run(sensealg, steps):
        prob = pyode.ODEProblem(lambda t, x: net(x), y0, (0.0, 1.0))
        return lambda: pyode.solve(prob, pyode.RK4(), dt=1.0 / steps, saveat=[1.0], sensealg=sensealg).y.sum()

    plain_100, plain_1000 = (_saved_bytes(run(pyode.DirectAdjoint(), n)) for n in (100, 1000))
    kept_100, kept_1000 = (_saved_bytes(run(pyode.DirectAdjoint(checkpoint_every=10), n)) for n in (100, 1000))
    assert plain_1000 > 9 * plain_100  # direct backprop keeps every stage of every step (75 MB here)
    # Checkpointed, only the state at each segment boundary is kept: 100 segments of 10 steps.
    assert kept_1000 == 100 * y0.numel() * y0.element_size()
    assert kept_100 == 10 * y0.numel() * y0.element_size()


def test_checkpoint_every_must_be_positive():
    with pytest.raises(ValueError, match="checkpoint_every"):
        pyode.DirectAdjoint(checkpoint_every=0)


def test_checkpointing_refuses_reversible_solvers():
    prob = pyode.ODEProblem(lambda t, y: -y, torch.ones(2, dtype=torch.float64, requires_grad=True), (0.0, 1.0))
    with pytest.raises(ValueError, match="carries more state"):
        pyode.solve(
            prob, pyode.ReversibleHeun(), dt=0.1, adaptive=False, sensealg=pyode.DirectAdjoint(checkpoint_every=2)
        )
