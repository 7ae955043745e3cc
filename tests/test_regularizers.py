"""The solver-heuristic regularizers: values by hand, gradients, reductions and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pyode


def _field():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()


@pytest.mark.parametrize("solver, extent", [(pyode.Tsit5(), 3.5068), (pyode.DP5(), 3.3066)], ids=repr)
def test_values_by_hand(solver, extent):
    net = _field()
    y0 = torch.tensor([[1.0, -0.5], [0.2, 0.3]], dtype=torch.float64)
    rtol, atol = 1e-5, 1e-7
    prob = pyode.ODEProblem(lambda t, y: net(y), y0, (0.0, 2.0))
    sol = pyode.solve(prob, solver, rtol=rtol, atol=atol, regularize=True)
    # Recompute every accepted step from its start with plain numpy-style arithmetic.
    tab = solver.tableau
    A = [[float(x) for x in row] for row in tab.a]
    b = [float(x) for x in tab.b]
    e = [float(x) for x in tab.b_error[0]]
    c = [float(x) for x in tab.c]
    r_e = r_s = 0.0
    with torch.no_grad():
        for j in range(len(sol.t) - 1):
            h = (sol.t[j + 1] - sol.t[j]).item()
            y = sol.y[j].reshape(-1)
            ks, inputs = [], []
            for i in range(tab.stages):
                yi = y + h * sum(A[i][m] * ks[m] for m in range(i)) if i else y
                inputs.append(yi)
                ks.append(net(yi.view(2, 2)).reshape(-1))
            y1 = y + h * sum(bi * k for bi, k in zip(b, ks))
            err = h * sum(ei * k for ei, k in zip(e, ks))
            scale = atol + rtol * torch.maximum(y.abs(), y1.abs())
            r_e += math.sqrt(((err / scale) ** 2).mean().item()) * abs(h)
            stiff = math.sqrt(((ks[-1] - ks[-2]) ** 2).mean().item()) / math.sqrt(
                ((inputs[-1] - inputs[-2]) ** 2).mean().item()
            )
            r_s += stiff / extent
            assert c[-1] == c[-2] == 1.0
    # Both are small differences of nearly equal quantities: Σ_j e_j k_j (Σ e_j = 0) and
    # Y_s - Y_{s-1} cancel to ~1e-6 of their terms, so summing in another order changes them by
    # ~1e-16/1e-6 relative. Agreement to 1e-8 is what round-off allows.
    assert sol.error_estimate.item() == pytest.approx(r_e, rel=1e-8)
    assert sol.stiffness_estimate.item() == pytest.approx(r_s, rel=1e-8)


def test_extents_are_the_stability_boundaries():
    for solver in (pyode.DP5(), pyode.Tsit5()):
        tab = solver.tableau
        s = tab.stages
        A = np.array([[float(x) for x in row] + [0.0] * (s - len(row)) for row in tab.a])
        b = np.array([float(x) for x in tab.b])

        def R(z, A=A, b=b, s=s):
            return 1 + z * b @ np.linalg.solve(np.eye(s) - z * A, np.ones(s))

        x = solver.stability_extent
        assert abs(R(-(x - 1e-3))) <= 1 < abs(R(-(x + 1e-3)))


@pytest.mark.parametrize("which", ["error", "stiffness"])
def test_gradients_match_finite_differences(which):
    """With fixed steps the regularizers are smooth functions of the parameters: their exact
    derivative (the discrete sensitivity) is checked against finite differences."""
    y0 = torch.tensor([0.7, -0.3], dtype=torch.float64)

    def regularizer(w):
        prob = pyode.ODEProblem(lambda t, y: torch.tanh(w @ y) - 0.1 * y, y0, (0.0, 1.0), params=[w])
        sol = pyode.solve(prob, pyode.Tsit5(), dt=0.1, adaptive=False, regularize=True)
        return sol.error_estimate if which == "error" else sol.stiffness_estimate

    w = torch.tensor([[0.5, -1.0], [1.2, 0.3]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(regularizer, (w,))


def test_reductions():
    net = _field()
    prob = pyode.ODEProblem(lambda t, y: net(y), torch.ones(2, 2, dtype=torch.float64), (0.0, 3.0))
    total = pyode.solve(prob, pyode.Tsit5(), regularize=True)
    mean = pyode.solve(prob, pyode.Tsit5(), regularize=pyode.Regularization(error="mean", stiffness="max"))
    unscaled = pyode.solve(prob, pyode.Tsit5(), regularize=pyode.Regularization(scale_stiffness=False))
    steps = total.stats.naccept
    assert mean.error_estimate.item() == pytest.approx(total.error_estimate.item() / steps)
    assert mean.stiffness_estimate.item() <= total.stiffness_estimate.item()
    assert mean.stiffness_estimate.item() >= total.stiffness_estimate.item() / steps
    assert unscaled.stiffness_estimate.item() == pytest.approx(3.5068 * total.stiffness_estimate.item())
    error_only = pyode.solve(prob, pyode.BS3(), regularize=pyode.Regularization(stiffness=None))
    assert error_only.error_estimate is not None and error_only.stiffness_estimate is None
    plain = pyode.solve(prob, pyode.Tsit5())
    assert plain.error_estimate is None and plain.stiffness_estimate is None


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_estimates_without_grad_are_the_same_values(mode):
    # Evaluating a regularized model (validation, prediction) must not need autograd.
    net = _field()
    prob = pyode.ODEProblem(lambda t, y: net(y), torch.ones(2, 2, dtype=torch.float64), (0.0, 3.0))
    with_grad = pyode.solve(prob, pyode.Tsit5(), regularize=True)
    with mode():
        without = pyode.solve(prob, pyode.Tsit5(), regularize=True)
    assert without.error_estimate.item() == with_grad.error_estimate.item()
    assert without.stiffness_estimate.item() == with_grad.stiffness_estimate.item()


def test_regularizing_costs_no_extra_evaluations():
    net = _field()
    prob = pyode.ODEProblem(lambda t, y: net(y), torch.ones(2, 2, dtype=torch.float64), (0.0, 3.0))
    assert pyode.solve(prob, pyode.Tsit5(), regularize=True).stats == pyode.solve(prob, pyode.Tsit5()).stats


def test_training_with_the_error_regularizer_lowers_nfe():
    """A short, seeded training run on the cubic spiral: the model trained with R_E solves in
    fewer steps than the one trained without it. A count, not a time."""
    A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=torch.float64)
    ts = torch.linspace(0, 2, 20, dtype=torch.float64)
    z0 = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    truth = pyode.solve(pyode.ODEProblem(lambda t, z: z**3 @ A, z0, (0.0, 2.0)), pyode.Tsit5(), saveat=ts, rtol=1e-8).y

    def train(weight):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2)).double()
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        prob = pyode.ODEProblem(lambda t, z: net(z**3), z0, (0.0, 2.0))
        for _ in range(60):
            sol = pyode.solve(
                prob, pyode.Tsit5(), saveat=ts, rtol=1e-6, atol=1e-8, regularize=pyode.Regularization(stiffness=None)
            )
            loss = (sol.y - truth).abs().mean() + weight * sol.error_estimate
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return pyode.solve(prob, pyode.Tsit5(), saveat=ts, rtol=1e-6, atol=1e-8).stats.nfe

    assert train(weight=1.0) < train(weight=0.0)


def test_errors():
    prob = pyode.ODEProblem(lambda t, y: -y, torch.ones(2, dtype=torch.float64), (0.0, 1.0))
    with pytest.raises(ValueError, match=r"DP5\(\) and Tsit5\(\) have and BS3\(\) does not"):
        pyode.solve(prob, pyode.BS3(), regularize=True)
    with pytest.raises(ValueError, match="needs a solver with an error estimate"):
        pyode.solve(prob, pyode.RK4(), dt=0.1, regularize=pyode.Regularization(stiffness=None))
    with pytest.raises(ValueError, match=r"regularize needs sensealg=DirectAdjoint\(\)"):
        pyode.solve(prob, pyode.Tsit5(), regularize=True, sensealg=pyode.BacksolveAdjoint())
    with pytest.raises(ValueError, match="cannot differentiate the regularizers"):
        pyode.solve(prob, pyode.Tsit5(), regularize=True, sensealg=pyode.DirectAdjoint(checkpoint_every=2))
    with pytest.raises(TypeError, match="regularize must be"):
        pyode.solve(prob, pyode.Tsit5(), regularize="error")
    with pytest.raises(ValueError, match="error must be"):
        pyode.Regularization(error="max")
    with pytest.raises(ValueError, match="stiffness must be"):
        pyode.Regularization(stiffness="mean")
    with pytest.raises(ValueError, match="nothing to accumulate"):
        pyode.Regularization(error=None, stiffness=None)


# ----------------------------------------------------------------------------------------
# LocalRegularization: one Tsit5 step at a random time
# ----------------------------------------------------------------------------------------


def _local_problem():
    net = _field()
    y0 = torch.tensor([[1.0, -0.5], [0.2, 0.3]], dtype=torch.float64)
    return net, pyode.ODEProblem(lambda t, y: net(y), y0, (0.0, 2.0), params=list(net.parameters()))


def test_local_is_one_step_of_the_global_regularizer():
    # The local terms are the global regularizer's per-step terms for the one step that a fresh
    # solve from (t_s, y(t_s)) takes first (Hairer's initial step at the same tolerances).
    net, prob = _local_problem()
    ts = torch.linspace(0.0, 2.0, 9)
    rtol, atol = 1e-5, 1e-7
    torch.manual_seed(7)
    sol = pyode.solve(prob, pyode.Tsit5(), saveat=ts, rtol=rtol, atol=atol, regularize=pyode.LocalRegularization())
    t_s = sol.regularization_time
    assert 0.0 < t_s < 2.0
    y_s = pyode.solve(prob, pyode.Tsit5(), saveat=[t_s], rtol=rtol, atol=atol).y[0].detach()
    one = pyode.solve(
        pyode.ODEProblem(lambda t, y: net(y), y_s, (t_s, 2.0)),
        pyode.Tsit5(),
        rtol=rtol,
        atol=atol,
        regularize=pyode.Regularization(),
        max_steps=1,
        throw=False,
    )
    assert one.stats.naccept == 1  # the heuristic's first step was accepted: it is the local step
    torch.testing.assert_close(sol.error_estimate, one.error_estimate, rtol=1e-12, atol=0)
    torch.testing.assert_close(sol.stiffness_estimate, one.stiffness_estimate, rtol=1e-12, atol=0)
    params = list(net.parameters())
    g_local = torch.autograd.grad(sol.error_estimate + sol.stiffness_estimate, params)
    g_one = torch.autograd.grad(one.error_estimate + one.stiffness_estimate, params)
    for a, b in zip(g_local, g_one):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


def test_local_leaves_the_solution_as_it_was():
    _, prob = _local_problem()
    ts = torch.linspace(0.0, 2.0, 9)
    plain = pyode.solve(prob, pyode.Tsit5(), saveat=ts)
    sol = pyode.solve(prob, pyode.Tsit5(), saveat=ts, regularize=pyode.LocalRegularization())
    assert torch.equal(sol.t, plain.t) and torch.equal(sol.y, plain.y)  # t_s is saved by interpolation only
    assert sol.stats.nfe == plain.stats.nfe + 8  # f(t_s), the step-size heuristic, 6 stages
    assert (sol.stats.naccept, sol.stats.nreject) == (plain.stats.naccept, plain.stats.nreject)


def test_local_time_is_seeded_and_uniform():
    _, prob = _local_problem()
    times = []
    for seed in range(200):
        torch.manual_seed(seed)
        times.append(
            pyode.solve(prob, pyode.Tsit5(), saveat=[2.0], regularize=pyode.LocalRegularization()).regularization_time
        )
    torch.manual_seed(3)
    again = pyode.solve(prob, pyode.Tsit5(), saveat=[2.0], regularize=pyode.LocalRegularization()).regularization_time
    assert again == times[3]
    # Uniform on (0, 2): mean 1, and a Kolmogorov–Smirnov distance well inside its 1% critical value 0.115.
    times = np.sort(times) / 2.0
    ks = np.max(np.abs(times - np.arange(1, 201) / 200.0))
    assert abs(times.mean() - 0.5) < 0.07 and ks < 0.115


SENSEALGS = [
    pyode.DirectAdjoint(),
    pyode.BacksolveAdjoint(),
    pyode.InterpolatingAdjoint(),
    pyode.QuadratureAdjoint(C=1.0),  # C=0.1 leaves one node on these short intervals (3e-5 error)
    pyode.GaussAdjoint(),
]


@pytest.mark.parametrize("sensealg", SENSEALGS, ids=lambda s: type(s).__name__)
def test_local_works_with_every_sensealg(sensealg):
    net, prob = _local_problem()
    params = list(net.parameters())
    ts = torch.linspace(0.0, 2.0, 5)
    kw = dict(saveat=ts, rtol=1e-8, atol=1e-10, regularize=pyode.LocalRegularization())
    torch.manual_seed(11)
    ref = pyode.solve(prob, pyode.Tsit5(), sensealg=pyode.DirectAdjoint(), **kw)
    torch.manual_seed(11)
    sol = pyode.solve(prob, pyode.Tsit5(), sensealg=sensealg, **kw)
    assert sol.regularization_time == ref.regularization_time
    torch.testing.assert_close(sol.error_estimate, ref.error_estimate, rtol=1e-12, atol=0)
    g_reg = torch.autograd.grad(sol.error_estimate + sol.stiffness_estimate, params, retain_graph=True)
    g_ref = torch.autograd.grad(ref.error_estimate + ref.stiffness_estimate, params, retain_graph=True)
    for a, b in zip(g_reg, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    # The whole loss: the adjoint's gradient of the fit term (to its tolerance) plus the local terms.
    g = torch.autograd.grad(sol.y.pow(2).sum() + sol.error_estimate, params)
    g_ref = torch.autograd.grad(ref.y.pow(2).sum() + ref.error_estimate, params)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_local_without_saveat_reads_the_dense_output():
    _, prob = _local_problem()
    torch.manual_seed(5)
    sol = pyode.solve(prob, pyode.Tsit5(), regularize=pyode.LocalRegularization(stiffness=False))
    plain = pyode.solve(prob, pyode.Tsit5())
    assert torch.equal(sol.t, plain.t) and sol.stiffness_estimate is None and sol.error_estimate > 0


def test_local_errors():
    _, prob = _local_problem()
    with pytest.raises(ValueError, match="nothing to compute"):
        pyode.LocalRegularization(error=False, stiffness=False)
    with pytest.raises(TypeError, match="True or False"):
        pyode.LocalRegularization(error="sum")
    with pytest.raises(ValueError, match="require grad"):
        pyode.solve(
            prob,
            pyode.Tsit5(),
            saveat=torch.linspace(0, 2, 3, requires_grad=True),
            regularize=pyode.LocalRegularization(),
        )
    reversible = pyode.ODEProblem(lambda t, y: -y, torch.ones(2, dtype=torch.float64), (0.0, 1.0))
    with pytest.raises(ValueError, match="pass saveat="):
        pyode.solve(reversible, pyode.ReversibleHeun(), dt=0.1, regularize=pyode.LocalRegularization())
    # With the adjoints, the global regularizers point to the local ones.
    with pytest.raises(ValueError, match="LocalRegularization"):
        pyode.solve(prob, pyode.Tsit5(), sensealg=pyode.GaussAdjoint(), regularize=True)


def test_local_after_a_failed_solve_is_zero():
    _, prob = _local_problem()
    kw = dict(saveat=[2.0], rtol=1e-12, max_steps=1, throw=False)
    torch.manual_seed(1)
    sol = pyode.solve(prob, pyode.Tsit5(), regularize=pyode.LocalRegularization(), **kw)
    reached = pyode.solve(prob, pyode.Tsit5(), rtol=1e-12, max_steps=1, throw=False).t[-1].item()
    assert sol.retcode is pyode.ReturnCode.MaxIters and reached < sol.regularization_time
    assert sol.error_estimate.item() == 0.0 and sol.stiffness_estimate.item() == 0.0


def test_local_estimates_gradcheck(monkeypatch):
    # With the step size held (the heuristic is not differentiated), the local terms are smooth
    # functions of the parameters: their gradients against finite differences.
    from pyode import regularizers

    monkeypatch.setattr(regularizers, "initial_step", lambda *args: 0.05)
    torch.manual_seed(0)
    W = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0.3, -0.7], dtype=torch.float64)

    def terms(W, b):
        def f(t, y):
            return torch.tanh(W @ y + b)

        error, stiffness = regularizers.local_estimates(f, 0.2, y, 1.0, 1e-3, 1e-5, pyode.LocalRegularization())
        return error, stiffness

    assert torch.autograd.gradcheck(terms, (W, b))
