"""Per-sample step sizes (`solve(..., batch_axis=0)`): each element steps as a solve of it alone
would. The batched loop mirrors the joint loop's arithmetic, so on the CPU each element's step
sequence and counts equal those of a batch-of-one solve exactly (float64 and float32); values
inside steps, read from the interpolant, agree to rounding. Then save points, dense output,
gradients, failures per element, frozen elements, statistics and the refusals."""

from __future__ import annotations

import functools
import math

import pytest
import torch

import pyode
from pyode.step_control import IController, PIController, initial_step, initial_steps

ADAPTIVE = [pyode.DP5(), pyode.Tsit5(), pyode.BS3(), pyode.DP8(), pyode.Heun()]
B = 5


class VanDerPol:
    """Van der Pol with a stiffness mu per element (elementwise, so a batch of one is the same
    arithmetic) and a small forcing that makes f depend on each element's own time."""

    def __init__(self, mu: torch.Tensor):
        self.mu = mu

    def __call__(self, t, y):
        x, v = y[..., 0], y[..., 1]
        return torch.stack((v, self.mu * (1 - x * x) * v - x + 0.1 * torch.sin(t)), dim=-1)

    def element(self, i: int) -> VanDerPol:
        return VanDerPol(self.mu[i : i + 1])


class Spiral:
    """A damped linear spiral (and a decaying third component) with a rate per element."""

    def __init__(self, rate: torch.Tensor):
        self.rate = rate

    def __call__(self, t, y):
        r = self.rate.unsqueeze(-1)
        x, v, z = y[..., 0:1], y[..., 1:2], y[..., 2:3]
        return torch.cat((r * (v - 0.1 * x), -r * (x + 0.1 * v), -r * z + torch.cos(t).unsqueeze(-1)), dim=-1)

    def element(self, i: int) -> Spiral:
        return Spiral(self.rate[i : i + 1])


def _vdp(dtype=torch.float64):
    mu = torch.logspace(-1, 1, B, dtype=dtype)  # two decades of stiffness
    y0 = torch.tensor([2.0, 0.0], dtype=dtype) + 0.1 * torch.arange(B, dtype=dtype).unsqueeze(1)
    return VanDerPol(mu), y0, (0.0, 3.0)


def _spiral(dtype=torch.float64):
    rate = torch.logspace(-1, 1, B, dtype=dtype)
    return Spiral(rate), torch.randn(B, 3, dtype=dtype), (0.0, 2.0)


PROBLEMS = {"van_der_pol": _vdp, "spiral": _spiral}


def _counts(stats: pyode.Stats, i: int | None = None) -> tuple[int, int, int]:
    if i is None:
        return stats.nfe, stats.naccept, stats.nreject
    e = stats.per_element
    return int(e.nfe[i]), int(e.naccept[i]), int(e.nreject[i])


def _assert_like_single_solves(f, y0, tspan, solver, saveat=None, atol_values=1e-12, **kw):
    """The per-sample solve against a solve of each element alone: counts exactly, values close."""
    sol = pyode.solve(pyode.ODEProblem(f, y0, tspan), solver, saveat=saveat, batch_axis=0, **kw)
    assert sol.retcode is pyode.ReturnCode.Success
    for i in range(y0.shape[0]):
        saves = saveat[i] if isinstance(saveat, torch.Tensor) and saveat.dim() == 2 else saveat
        alone = pyode.solve(pyode.ODEProblem(f.element(i), y0[i : i + 1], tspan), solver, saveat=saves, **kw)
        assert _counts(sol.stats, i) == _counts(alone.stats), f"element {i}"
        ys = alone.y if saveat is not None else alone.y[[0, -1]]
        torch.testing.assert_close(sol.y[:, i], ys[:, 0], rtol=0, atol=atol_values)
        if saves is None or float(saves[-1]) == tspan[1]:
            # The end of the span is a step's end: the state itself, not an interpolant.
            assert torch.equal(sol.y[-1, i], ys[-1, 0])
    return sol


@pytest.mark.parametrize("problem", PROBLEMS, ids=str)
@pytest.mark.parametrize("solver", ADAPTIVE, ids=repr)
def test_each_element_steps_as_if_alone(problem, solver):
    f, y0, tspan = PROBLEMS[problem]()
    rtol = {pyode.Heun: 1e-4, pyode.BS3: 1e-5}.get(type(solver), 1e-7)  # a few hundred steps at most
    saveat = torch.linspace(*tspan, 7, dtype=torch.float64)
    sol = _assert_like_single_solves(f, y0, tspan, solver, saveat=saveat, rtol=rtol, atol=rtol / 100)
    assert sol.y.shape == (7, B, *y0.shape[1:]) and torch.equal(sol.t, saveat)
    # Heterogeneous indeed: the elements take quite different numbers of steps.
    naccept = sol.stats.per_element.naccept
    assert int(naccept.max()) >= 1.5 * int(naccept.min())


@pytest.mark.parametrize(
    "controller", [IController(), PIController(startup=None), PIController(beta1=0.12, beta2=0.08)], ids=repr
)
def test_controllers_elementwise(controller):
    f, y0, tspan = _vdp()
    _assert_like_single_solves(f, y0, tspan, pyode.Tsit5(), rtol=1e-6, atol=1e-8, controller=controller)


@pytest.mark.parametrize("solver", [pyode.DP5(), pyode.BS3()], ids=repr)
def test_float32_counts_match_too(solver):
    # The combinations are summed in float32 one term at a time, as BLAS's addmv does.
    f, y0, tspan = _vdp(torch.float32)
    saveat = torch.linspace(*tspan, 5, dtype=torch.float64)
    sol = _assert_like_single_solves(f, y0, tspan, solver, saveat=saveat, rtol=1e-4, atol=1e-6, atol_values=1e-5)
    assert sol.y.dtype == torch.float32


def test_options_per_element():
    f, y0, tspan = _spiral()
    saves = torch.linspace(0.0, 2.0, 5, dtype=torch.float64)
    common = dict(saveat=saves, rtol=1e-6, atol=1e-8)
    _assert_like_single_solves(f, y0, tspan, pyode.DP5(), tstops=[0.3, 1.1], dtmax=0.25, **common)
    _assert_like_single_solves(f, y0, tspan, pyode.DP5(), dt=1e-3, internalnorm=pyode.max_norm, **common)
    _assert_like_single_solves(f, y0, (2.0, -0.5), pyode.Tsit5(), saveat=torch.tensor([2.0, 1.0, -0.5]), rtol=1e-6)
    # A tolerance per entry of the state: each element gets its row.
    atol = torch.rand(B, 3, dtype=torch.float64) * 1e-6 + 1e-9
    sol = pyode.solve(pyode.ODEProblem(f, y0, tspan), pyode.DP5(), batch_axis=0, atol=atol, rtol=1e-6)
    for i in range(B):
        alone = pyode.solve(pyode.ODEProblem(f.element(i), y0[i : i + 1], tspan), pyode.DP5(), atol=atol[i], rtol=1e-6)
        assert _counts(sol.stats, i) == _counts(alone.stats)


def test_fixed_steps():
    f, y0, tspan = _spiral()
    saves = torch.linspace(0.0, 2.0, 5, dtype=torch.float64)
    sol = _assert_like_single_solves(f, y0, tspan, pyode.RK4(), saveat=saves, dt=0.1)
    assert torch.equal(sol.stats.per_element.naccept, torch.full((B,), 20))
    _assert_like_single_solves(f, y0, tspan, pyode.DP5(), dt=0.3, adaptive=False)
    _assert_like_single_solves(f, y0, tspan, pyode.DP5(), dt=0.3, controller=pyode.ConstantStepSize())


def test_per_element_saveat():
    f, y0, tspan = _spiral()
    saves = torch.sort(torch.rand(B, 6, dtype=torch.float64) * 2.0, dim=1).values
    saves[0, 0], saves[1, -1] = 0.0, 2.0  # at t0 and at t1
    sol = _assert_like_single_solves(f, y0, tspan, pyode.DP5(), saveat=saves, rtol=1e-6, atol=1e-8)
    assert torch.equal(sol.t, saves) and sol.y.shape == (6, B, 3)
    sol = _assert_like_single_solves(f, y0, tspan, pyode.DP8(), saveat=saves, rtol=1e-6, atol=1e-8, atol_values=1e-11)


def test_without_saveat_the_span_ends_and_dense_output():
    f, y0, tspan = _vdp()
    sol = _assert_like_single_solves(f, y0, tspan, pyode.DP5(), rtol=1e-6, atol=1e-8)
    assert torch.equal(sol.t, torch.tensor(tspan, dtype=torch.float64)) and sol.y.shape == (2, B, 2)
    alone = [pyode.solve(pyode.ODEProblem(f.element(i), y0[i : i + 1], tspan), pyode.DP5()) for i in range(B)]
    # A scalar time: (B, ...); shared times (M,): (M, B, ...); a time per element (B, M): (M, B, ...).
    assert sol(1.234).shape == (B, 2)
    torch.testing.assert_close(sol(1.234), torch.cat([a(1.234) for a in alone]), rtol=0, atol=1e-12)
    shared = torch.tensor([0.0, 0.77, 3.0], dtype=torch.float64)
    torch.testing.assert_close(sol(shared), torch.cat([a(shared) for a in alone], dim=1), rtol=0, atol=1e-12)
    each = torch.rand(B, 4, dtype=torch.float64) * 3.0
    expected = torch.stack([a(each[i])[:, 0] for i, a in enumerate(alone)], dim=1)
    assert sol(each).shape == (4, B, 2)
    torch.testing.assert_close(sol(each), expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="outside element 0's solved span"):
        sol(3.5)
    with pytest.raises(ValueError, match=r"shape \(5, M\)"):
        sol(torch.zeros(3, 2, dtype=torch.float64))
    assert pyode.solve(pyode.ODEProblem(f, y0, tspan), pyode.DP5(), saveat=[0.0, 3.0], batch_axis=0).dense is None


def test_f_gets_each_elements_time():
    seen = []

    def f(t, y):
        seen.append(t)
        return -y * torch.arange(1.0, B + 1, dtype=y.dtype).unsqueeze(1)

    y0 = torch.ones(B, 2, dtype=torch.float32)
    pyode.solve(pyode.ODEProblem(f, y0, (0.0, 1.0)), pyode.DP5(), batch_axis=0)
    assert all(t.shape == (B,) and t.dtype == torch.float32 for t in seen)
    assert len({tuple(t.tolist()) for t in seen[2:]} - {(t[0].item(),) * B for t in seen[2:]}) > 0  # times differ


def test_statistics_count_batched_calls_and_each_element():
    calls = 0
    f, y0, tspan = _vdp()

    def counted(t, y):
        nonlocal calls
        calls += 1
        return f(t, y)

    sol = pyode.solve(pyode.ODEProblem(counted, y0, tspan), pyode.DP5(), rtol=1e-6, batch_axis=0)
    stats, per = sol.stats, sol.stats.per_element
    assert stats.nfe == calls
    # f is called on every element until the last one finishes: the slowest element's count.
    assert stats.nfe == int(per.nfe.max()) and int(per.nfe.min()) < stats.nfe / 2
    assert stats.naccept + stats.nreject == int((per.naccept + per.nreject).max())
    assert per.retcode == (pyode.ReturnCode.Success,) * B and torch.equal(per.t, torch.full((B,), 3.0))
    assert per.nfe.dtype == torch.long and sol.dt_next.shape == (B,)


def test_finished_elements_are_frozen():
    rate = torch.tensor([0.1, 20.0], dtype=torch.float64)  # element 0 finishes in a few steps
    inputs = []

    def f(t, y):
        inputs.append((t.clone(), y.clone()))
        return -rate.unsqueeze(1) * y + torch.sin(5 * t).unsqueeze(1)

    y0 = torch.ones(2, 2, dtype=torch.float64)
    sol = pyode.solve(pyode.ODEProblem(f, y0, (0.0, 2.0)), pyode.DP5(), batch_axis=0, rtol=1e-8)
    finished = int(sol.stats.per_element.nfe[0])
    later = inputs[finished:]
    assert len(later) > 20
    # Still evaluated (batched) with h = 0: at its end time, at its final state.
    assert all(t[0] == 2.0 and torch.equal(y[0], sol.y[-1, 0]) for t, y in later)


def test_nan_in_one_element_stays_there():
    f, y0, tspan = _spiral()

    def poisoned(t, y):
        out = f(t, y)
        bad = (t > 0.7) & (torch.arange(B) == 2)
        return torch.where(bad.unsqueeze(1), torch.nan, out)

    saves = torch.linspace(0.0, 2.0, 5, dtype=torch.float64)
    prob = pyode.ODEProblem(poisoned, y0, tspan)
    sol = pyode.solve(prob, pyode.DP5(), saveat=saves, batch_axis=0, throw=False)
    assert sol.retcode is pyode.ReturnCode.Unstable
    codes = sol.stats.per_element.retcode
    assert codes[2] is pyode.ReturnCode.Unstable and all(codes[i].successful for i in (0, 1, 3, 4))
    assert float(sol.stats.per_element.t[2]) < 0.75
    assert torch.isnan(sol.y[2:, 2]).all() and torch.isfinite(sol.y[:2, 2]).all()  # unreached saves: NaN
    for i in (0, 1, 3, 4):
        alone = pyode.solve(pyode.ODEProblem(f.element(i), y0[i : i + 1], tspan), pyode.DP5(), saveat=saves)
        assert _counts(sol.stats, i) == _counts(alone.stats)
        torch.testing.assert_close(sol.y[:, i], alone.y[:, 0], rtol=0, atol=1e-12)
    with pytest.raises(pyode.SolveError, match=r"Elements that failed: 2 \(Unstable at t = 0\.7") as caught:
        pyode.solve(prob, pyode.DP5(), saveat=saves, batch_axis=0)
    assert caught.value.retcode is pyode.ReturnCode.Unstable and caught.value.solution is not None


def test_max_steps_and_dtmin_per_element():
    f, y0, tspan = _vdp()
    sol = pyode.solve(pyode.ODEProblem(f, y0, tspan), pyode.DP5(), batch_axis=0, max_steps=25, throw=False)
    for i, code in enumerate(sol.stats.per_element.retcode):
        alone = pyode.solve(
            pyode.ODEProblem(f.element(i), y0[i : i + 1], tspan), pyode.DP5(), max_steps=25, throw=False
        )
        assert code is alone.retcode and _counts(sol.stats, i) == _counts(alone.stats)
    assert {c.name for c in sol.stats.per_element.retcode} == {"Success", "MaxIters"}
    sol = pyode.solve(pyode.ODEProblem(f, y0, tspan), pyode.DP5(), batch_axis=0, dtmin=0.05, throw=False)
    assert pyode.ReturnCode.DtLessThanMin in sol.stats.per_element.retcode


@pytest.mark.parametrize("solver", [pyode.Tsit5(), pyode.BS3()], ids=repr)
def test_gradients_equal_single_solves(solver):
    mu = torch.logspace(-1, 1, B, dtype=torch.float64).requires_grad_()
    _, y0, tspan = _vdp()
    y0 = y0.requires_grad_()
    saves = torch.linspace(*tspan, 6, dtype=torch.float64)
    weights = torch.randn(6, B, 2, dtype=torch.float64)
    sol = pyode.solve(pyode.ODEProblem(VanDerPol(mu), y0, tspan), solver, saveat=saves, batch_axis=0, rtol=1e-7)
    grad_mu, grad_y0 = torch.autograd.grad((sol.y * weights).sum(), (mu, y0))
    for i in range(B):
        mu_i, y0_i = mu[i : i + 1].detach().requires_grad_(), y0[i : i + 1].detach().requires_grad_()
        alone = pyode.solve(pyode.ODEProblem(VanDerPol(mu_i), y0_i, tspan), solver, saveat=saves, rtol=1e-7)
        g_mu, g_y0 = torch.autograd.grad((alone.y[:, 0] * weights[:, i]).sum(), (mu_i, y0_i))
        torch.testing.assert_close(grad_mu[i : i + 1], g_mu, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad_y0[i], g_y0[0], rtol=1e-12, atol=1e-12)


def test_gradients_of_times():
    f, y0, _ = _spiral()
    shared = torch.tensor([0.0, 0.5, 1.3, 2.0], dtype=torch.float64, requires_grad=True)
    each = (torch.sort(torch.rand(B, 3, dtype=torch.float64), dim=1).values * 2.0).requires_grad_()
    t0 = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    t1 = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    for saveat, wrt in ((shared, shared), (each, each), (None, t0), (None, t1)):
        sol = pyode.solve(pyode.ODEProblem(f, y0, (t0, t1)), pyode.DP5(), saveat=saveat, batch_axis=0)
        weights = torch.randn(sol.y.shape, dtype=torch.float64)
        grad = torch.autograd.grad((sol.y * weights).sum(), wrt)[0]
        expected = torch.zeros_like(grad)
        for i in range(B):
            t0_i, t1_i = t0.detach().requires_grad_(), t1.detach().requires_grad_()
            saves = None if saveat is None else (saveat[i] if saveat.dim() == 2 else saveat).detach().requires_grad_()
            alone = pyode.solve(pyode.ODEProblem(f.element(i), y0[i : i + 1], (t0_i, t1_i)), pyode.DP5(), saveat=saves)
            ys = alone.y if saveat is not None else alone.y[[0, -1]]
            inputs = {id(shared): saves, id(each): saves, id(t0): t0_i, id(t1): t1_i}[id(wrt)]
            g = torch.autograd.grad((ys[:, 0] * weights[:, i]).sum(), inputs)[0]
            if wrt is each:
                expected[i] = g
            else:
                expected += g
        torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


class Damped(torch.nn.Module):
    """Van der Pol as a module: a stiffness per element and a forcing weight shared by all."""

    def __init__(self, mu: torch.Tensor):
        super().__init__()
        self.mu = torch.nn.Parameter(mu)
        self.forcing = torch.nn.Parameter(torch.tensor(0.1, dtype=mu.dtype))

    def forward(self, t, y):
        x, v = y[..., 0], y[..., 1]
        return torch.stack((v, self.mu * (1 - x * x) * v - x + self.forcing * torch.sin(t)), dim=-1)


@pytest.mark.parametrize("solver", [pyode.DP5(), pyode.BS3()], ids=repr)
def test_gauss_adjoint_equals_single_gauss_adjoint_solves(solver):
    # Backward, [z, a] is recomputed: mild stiffness only (at mu = 10 it blows up backward, alone too).
    mu = torch.logspace(-1, 0.5, B, dtype=torch.float64)
    _, y0, tspan = _vdp()
    y0 = y0.requires_grad_()
    saves = torch.linspace(*tspan, 6, dtype=torch.float64)
    weights = torch.randn(6, B, 2, dtype=torch.float64)
    kw = dict(saveat=saves, rtol=1e-6, atol=1e-8, sensealg=pyode.GaussAdjoint())
    f = Damped(mu.clone())
    sol = pyode.solve(pyode.ODEProblem(f, y0, tspan), solver, batch_axis=0, **kw)
    (sol.y * weights).sum().backward()
    backward = sol.adjoint_stats
    assert backward.per_element.nfe.shape == (B,) and backward.nquad > 0
    forcing = 0.0
    for i in range(B):
        f_i, y0_i = Damped(mu[i : i + 1].clone()), y0[i : i + 1].detach().requires_grad_()
        alone = pyode.solve(pyode.ODEProblem(f_i, y0_i, tspan), solver, **kw)
        (alone.y[:, 0] * weights[:, i]).sum().backward()
        # The same backward steps for each element, and its share of the gradients.
        assert _counts(backward, i) == _counts(alone.adjoint_stats)
        torch.testing.assert_close(f.mu.grad[i : i + 1], f_i.mu.grad, rtol=1e-11, atol=1e-11)
        torch.testing.assert_close(y0.grad[i], y0_i.grad[0], rtol=1e-11, atol=1e-11)
        forcing = forcing + f_i.forcing.grad
    torch.testing.assert_close(f.forcing.grad, forcing, rtol=1e-11, atol=1e-11)


def test_gauss_adjoint_time_gradients_and_refusals():
    f, y0, _ = _spiral()
    t0 = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    t1 = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    saves = torch.tensor([0.0, 0.7, 1.5, 2.0], dtype=torch.float64, requires_grad=True)
    grads = {}
    for sensealg in (pyode.GaussAdjoint(), pyode.DirectAdjoint()):
        prob = pyode.ODEProblem(f, y0, (t0, t1))
        sol = pyode.solve(prob, pyode.DP5(), saveat=saves, batch_axis=0, rtol=1e-8, atol=1e-10, sensealg=sensealg)
        grads[type(sensealg)] = torch.autograd.grad(sol.y.pow(2).sum(), (t0, saves))
    # The continuous gradient and the discrete one agree to the tolerance.
    for gauss, direct in zip(grads[pyode.GaussAdjoint], grads[pyode.DirectAdjoint]):
        torch.testing.assert_close(gauss, direct, rtol=1e-5, atol=1e-5)
    each = torch.sort(torch.rand(B, 3, dtype=torch.float64), dim=1).values
    with pytest.raises(ValueError, match="shared by the batch"):
        pyode.solve(
            pyode.ODEProblem(f, y0, (0.0, 1.0)), pyode.DP5(), saveat=each, batch_axis=0, sensealg=pyode.GaussAdjoint()
        )
    with pytest.raises(ValueError, match=r"GaussAdjoint\(internalnorm=\.\.\.\)"):
        sensealg = pyode.GaussAdjoint(internalnorm=pyode.rms_norm)
        pyode.solve(pyode.ODEProblem(f, y0, (0.0, 1.0)), pyode.DP5(), batch_axis=0, sensealg=sensealg)
    # A failed element leaves nothing to differentiate: the backward pass says which.
    poisoned = Damped(torch.tensor([0.5, torch.nan], dtype=torch.float64))
    sol = pyode.solve(
        pyode.ODEProblem(poisoned, torch.ones(2, 2, dtype=torch.float64), (0.0, 1.0)),
        pyode.DP5(),
        batch_axis=0,
        sensealg=pyode.GaussAdjoint(),
        throw=False,
    )
    with pytest.raises(RuntimeError, match=r"failed for elements \[1\]"):
        sol.y.sum().backward()


def test_under_no_grad_and_inference_mode():
    f, y0, tspan = _vdp()
    mu = f.mu.clone().requires_grad_()
    reference = pyode.solve(pyode.ODEProblem(VanDerPol(mu), y0, tspan), pyode.DP5(), batch_axis=0, dense=True)
    assert reference.y.requires_grad
    with torch.no_grad():
        sol = pyode.solve(pyode.ODEProblem(VanDerPol(mu), y0, tspan), pyode.DP5(), batch_axis=0, dense=True)
    assert not sol.y.requires_grad and torch.equal(sol.y, reference.y.detach())
    with torch.inference_mode():
        sol = pyode.solve(pyode.ODEProblem(f, y0, tspan), pyode.DP5(), batch_axis=0, dense=True)
        assert torch.equal(sol.y, reference.y.detach()) and sol(1.0).shape == (B, 2)
    # And a training solve afterwards is unaffected (no inference tensors cached).
    loss = pyode.solve(pyode.ODEProblem(VanDerPol(mu), y0, tspan), pyode.DP5(), batch_axis=0).y.sum()
    loss.backward()
    assert mu.grad is not None and torch.isfinite(mu.grad).all()


def test_a_blown_up_attempt_leaves_parameter_gradients_finite():
    # Element 1's first attempts overflow (a huge first step on y' = y²); rejected, they still sit in
    # the batched graph. Their stage inputs are replaced before f sees them, so f's backward at those
    # rows multiplies zero cotangents by finite Jacobians: the parameter gradient stays finite.
    scale = torch.tensor([1.0, 30.0], dtype=torch.float64, requires_grad=True)

    def f(t, y):
        return scale.unsqueeze(1) * y * y

    y0 = torch.tensor([[0.1], [0.1]], dtype=torch.float64)
    sol = pyode.solve(pyode.ODEProblem(f, y0, (0.0, 0.3)), pyode.DP5(), batch_axis=0, dt=10.0, rtol=1e-6)
    assert int(sol.stats.per_element.nreject[1]) > 0
    sol.y[-1].sum().backward()
    assert torch.isfinite(scale.grad).all()


def test_the_core_benchmark_problem():
    # benchmarks/core.py's "small" problem: a tanh MLP ignoring t, y0 (16, 2), 20 shared save times.
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2)).double()
    y0 = torch.randn(16, 2, dtype=torch.float64)
    ts = torch.linspace(0.0, 10.0, 20, dtype=torch.float64)
    prob = pyode.ODEProblem(lambda t, y: net(y), y0, (ts[0], ts[-1]), params=list(net.parameters()))
    for rtol in (1e-3, 1e-6):
        with torch.no_grad():
            joint = pyode.solve(prob, pyode.DP5(), saveat=ts, rtol=rtol, atol=rtol / 100)
        each = pyode.solve(prob, pyode.DP5(), saveat=ts, rtol=rtol, atol=rtol / 100, batch_axis=0)
        assert each.y.shape == joint.y.shape == (20, 16, 2)
        torch.testing.assert_close(each.y, joint.y, rtol=0, atol=100 * rtol)
        each.y.pow(2).mean().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_vectorized_controllers_equal_the_host_rule():
    ratios = torch.tensor(
        [0.0, 1e-9, 0.2, 0.49, 0.5, 0.9, 1.0, 1.0000001, 3.0, 1e6, math.inf, math.nan], dtype=torch.float64
    )
    ratios = torch.cat((ratios, torch.rand(200, dtype=torch.float64) * 2))
    h = torch.rand(ratios.shape[0], dtype=torch.float64) + 0.01
    for controller in (PIController(), PIController(startup=None), IController(), IController(safety=0.8)):
        for order in (1, 4, 7):
            state = controller.init_vectorized(order, h)
            if isinstance(controller, PIController):  # a previous ratio and start-up flag per element
                state = (*state[:2], torch.rand_like(h) + 1e-4, (torch.rand(h.shape) < 0.5) & state[3])
            accepted, h_next, new = controller.adapt_vectorized(ratios, h, state)
            for i in range(ratios.shape[0]):
                host = controller.init(order)
                if isinstance(controller, PIController):
                    host = (host[0], float(state[2][i]), host[2] if bool(state[3][i]) else None)
                ok, h_host, after = controller.adapt(float(ratios[i]), float(h[i]), host)
                assert (bool(accepted[i]), float(h_next[i])) == (ok, h_host), (controller, order, float(ratios[i]))
                if isinstance(controller, PIController):
                    assert (float(new[2][i]), bool(new[3][i])) == (after[1], after[2] is not None)


def test_vectorized_initial_step_equals_the_host_one():
    f, y0, _ = _vdp()
    rows = lambda t, y: f(t, y)  # noqa: E731
    k1 = f(torch.zeros(B, dtype=torch.float64), y0)
    for order, direction in ((5, 1.0), (2, -1.0)):
        norm = lambda x: torch.linalg.vector_norm(x, dim=1) * (1 / math.sqrt(2))  # noqa: E731 (rms_norm per row)
        h = initial_steps(rows, 0.0, y0, k1, direction, order, 1e-6, 1e-8, norm, torch.float64)
        for i in range(B):
            g = f.element(i)
            alone = functools.partial(lambda g, t, y: g(torch.tensor(t, dtype=torch.float64), y.view(1, 2)).view(2), g)
            one = initial_step(alone, 0.0, y0[i], k1[i], direction, order, 1e-6, 1e-8, pyode.rms_norm)
            assert float(h[i]) == one


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(batch_axis=1), ValueError, "batch_axis must be 0"),
        (dict(batch_axis=True), ValueError, "batch_axis must be 0"),
        (
            dict(batch_axis=0, sensealg=pyode.BacksolveAdjoint()),
            ValueError,
            r"BacksolveAdjoint.*supported: DirectAdjoint",
        ),
        (dict(batch_axis=0, sensealg=pyode.DirectAdjoint(checkpoint_every=2)), ValueError, "checkpoint"),
        (dict(batch_axis=0, controller=pyode.PIDController()), ValueError, "controller=PIDController"),
        (dict(batch_axis=0, internalnorm=pyode.mixed_norm), ValueError, "internalnorm"),
        (dict(batch_axis=0, events=pyode.Event(lambda t, y: y[..., 0])), ValueError, "events"),
        (dict(batch_axis=0, regularize=True), ValueError, "regularize"),
        (dict(batch_axis=0, regularize=pyode.LocalRegularization()), ValueError, "LocalRegularization"),
        (dict(batch_axis=0, progress=True), ValueError, "progress"),
        (dict(batch_axis=0, observers=[pyode.Observer()]), ValueError, "observers"),
        (dict(batch_axis=0, d_discontinuities=[0.5]), ValueError, "d_discontinuities"),
        (dict(batch_axis=0, backend="julia"), ValueError, "julia"),
        (dict(batch_axis=0, saveat=torch.zeros(3, 2)), ValueError, r"shape \(B, T\)"),
        (dict(batch_axis=0, saveat=torch.tensor([[0.0, 0.5]] * 4 + [[0.5, 0.2]])), ValueError, r"saveat\[4, 1\]"),
        (dict(saveat=torch.zeros(5, 2)), ValueError, "needs batch_axis=0"),
    ],
)
def test_refusals_name_the_argument(kwargs, error, match):
    f, y0, tspan = _vdp()
    with pytest.raises(error, match=match):
        pyode.solve(pyode.ODEProblem(f, y0, tspan), pyode.DP5(), **kwargs)


def test_refusals_of_states_and_solvers():
    f, y0, tspan = _vdp()
    with pytest.raises(ValueError, match="tuple state"):
        pyode.solve(pyode.ODEProblem(lambda t, y: y, (y0, y0), tspan), pyode.DP5(), batch_axis=0)
    with pytest.raises(ValueError, match=r"shape \(B, \.\.\.\)"):
        pyode.solve(pyode.ODEProblem(lambda t, y: y, torch.tensor(1.0), tspan), pyode.DP5(), batch_axis=0)
    with pytest.raises(ValueError, match="explicit Runge–Kutta"):
        pyode.solve(pyode.ODEProblem(f, y0, tspan), pyode.ReversibleHeun(), dt=0.1, batch_axis=0)
    with pytest.raises(ValueError, match=r"f\(t, y\) returned shape \(2,\)"):
        pyode.solve(pyode.ODEProblem(lambda t, y: y[0], y0, tspan), pyode.DP5(), batch_axis=0)


def test_auto_adjoint_chooses_a_per_sample_method():
    """AutoAdjoint with batch_axis=0 picks DirectAdjoint when the graph fits and GaussAdjoint (the
    per-sample adjoint) otherwise, and gives the chosen method's gradient."""
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
    y0 = torch.randn(3, 2, dtype=torch.float64)
    ts = torch.linspace(0.0, 1.0, 4, dtype=torch.float64)
    prob = pyode.ODEProblem(lambda t, y: net(y), y0, (0.0, 1.0), params=list(net.parameters()))
    for budget, expected in ((math.inf, pyode.DirectAdjoint), (0, pyode.GaussAdjoint)):
        sol = pyode.solve(prob, pyode.DP5(), saveat=ts, batch_axis=0, sensealg=pyode.AutoAdjoint(memory_budget=budget))
        assert isinstance(sol.sensealg.chosen, expected), sol.sensealg.reason
        grads = torch.autograd.grad(sol.y.pow(2).sum(), list(net.parameters()))
        ref = pyode.solve(prob, pyode.DP5(), saveat=ts, batch_axis=0, sensealg=expected())
        ref_grads = torch.autograd.grad(ref.y.pow(2).sum(), list(net.parameters()))
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-14)
    assert "batch_axis=0" in sol.sensealg.reason


@pytest.mark.parametrize("saves", [1, 101])
def test_fixed_steps_a_blown_up_element_leaves_the_others_gradients(saves):
    """Fixed steps have no error test: an element that blows up (y' = 40·y², finite-time
    blow-up at t = 0.05) fails where it does, and the others' gradients equal their own solves'."""
    w = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    c = torch.tensor([[1.0], [40.0]], dtype=torch.float64)
    y0 = torch.full((2, 1), 0.5, dtype=torch.float64)
    saveat = torch.linspace(0.0, 1.0, saves + 1, dtype=torch.float64)[1:]
    prob = pyode.ODEProblem(lambda t, y: w * c * y * y, y0, (0.0, 1.0), params=[w])
    sol = pyode.solve(prob, pyode.RK4(), dt=0.01, saveat=saveat, batch_axis=0, throw=False)
    assert sol.stats.per_element.retcode[1] is pyode.ReturnCode.Unstable
    assert sol.stats.per_element.retcode[0] is pyode.ReturnCode.Success
    (grad,) = torch.autograd.grad(sol.y[:, 0].sum(), w)
    alone = pyode.solve(
        pyode.ODEProblem(lambda t, y: w * y * y, y0[:1], (0.0, 1.0), params=[w]), pyode.RK4(), dt=0.01, saveat=saveat
    )
    (grad_alone,) = torch.autograd.grad(alone.y.sum(), w)
    assert torch.isfinite(grad)
    torch.testing.assert_close(grad, grad_alone, rtol=1e-13, atol=0)


def test_auto_adjoint_probes_the_per_sample_loop():
    """AutoAdjoint's probe runs the per-sample loop itself: f may read t's (B,) shape, and the
    estimate bounds the graph that DirectAdjoint then records (it errs high, within 3x here)."""
    from pyode.sensitivity.auto import SavedBytes

    B = 64
    speed = torch.logspace(-1, 1, B, dtype=torch.float64).unsqueeze(1)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()

    def f(t, y):
        return speed * net(torch.cat((y, t.unsqueeze(1)), dim=1))

    y0 = torch.randn(B, 2, dtype=torch.float64)
    ts = torch.linspace(0.0, 5.0, 10, dtype=torch.float64)
    prob = pyode.ODEProblem(f, y0, (0.0, 5.0), params=list(net.parameters()))
    for rtol in (1e-3, 1e-6):
        kw = dict(saveat=ts, batch_axis=0, rtol=rtol, atol=rtol / 100)
        saved = SavedBytes()
        with saved.hooks():
            sol = pyode.solve(prob, pyode.DP5(), **kw)
            recorded = saved.total()
        del sol
        auto = pyode.solve(prob, pyode.DP5(), sensealg=pyode.AutoAdjoint(memory_budget=1.0), **kw)
        assert isinstance(auto.sensealg.chosen, pyode.GaussAdjoint)
        assert recorded <= auto.sensealg.estimate.graph <= 3 * recorded
        auto.y.sum().backward()
    # Per-element save times: GaussAdjoint does not apply, so DirectAdjoint with a warning.
    with pytest.warns(UserWarning, match="DirectAdjoint is chosen anyway"):
        auto = pyode.solve(
            prob, pyode.DP5(), saveat=ts.expand(B, -1), batch_axis=0, sensealg=pyode.AutoAdjoint(memory_budget=1.0)
        )
    assert isinstance(auto.sensealg.chosen, pyode.DirectAdjoint)
