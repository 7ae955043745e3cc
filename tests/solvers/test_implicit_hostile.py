"""The implicit solvers attacked: threads, grad modes, second derivatives, float32 at tight
tolerances, stiff problems under every adjoint, and automatic switching. Each test here failed
against the first version of the code it names, or pins a refusal that must stay clear."""

from __future__ import annotations

import math
import threading
import warnings

import pytest
import torch

import pyode

MU = 100.0  # a Python float: under vmap, torch promotes `float * 0-d dual` to float64


def vdp(t, y):
    return torch.stack((y[1], MU * ((1 - y[0] ** 2) * y[1]) - y[0]))


def robertson(k):
    def f(t, y):
        y1, y2, y3 = y
        return torch.stack((-k[0] * y1 + k[1] * y2 * y3, k[0] * y1 - k[1] * y2 * y3 - k[2] * y2**2, k[2] * y2**2))

    return f


RATES = (0.04, 1e4, 3e7)


def robertson_loss(solver, sensealg, rtol=1e-9, atol=1e-13):
    k = torch.tensor(RATES, dtype=torch.float64, requires_grad=True)
    prob = pyode.ODEProblem(robertson(k), torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), (0.0, 100.0), params=[k])
    sol = pyode.solve(prob, solver, rtol=rtol, atol=atol, saveat=[1.0, 10.0, 100.0], sensealg=sensealg)
    weights = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    loss = (sol.y[:, 0] * weights).sum() + 1e4 * sol.y[:, 1].sum()
    (grad,) = torch.autograd.grad(loss, k)
    return grad, sol


@pytest.mark.parametrize(
    "solver", [pyode.Rodas5P(), pyode.Kvaerno5(), pyode.Rosenbrock23(), pyode.KenCarp4()], ids=repr
)
def test_float32_jacobian_keeps_the_state_dtype(solver):
    # vdp multiplies by a Python float; torch.func promoted the Jacobian to float64 and the LU
    # solve refused the float32 right-hand side.
    prob = pyode.ODEProblem(vdp, torch.tensor([2.0, 0.0]), (0.0, 5.0))
    sol = pyode.solve(prob, solver, rtol=1e-4, atol=1e-6)
    ref = pyode.solve(pyode.ODEProblem(vdp, torch.tensor([2.0, 0.0], dtype=torch.float64), (0.0, 5.0)), solver)
    assert sol.y.dtype == torch.float32
    # Both within their tolerances of the true solution (rtol 1e-4 on an O(1) state, carried
    # over a span where errors are damped): 1e-3 is ten times that.
    assert (sol.y[-1].double() - ref.y[-1]).abs().max() < 1e-3


def test_float32_newton_stops_at_rounding():
    # At rtol 1e-5 on an O(1) float32 state the Newton correction stalls at a few ulps, above
    # κ·tol: it counted as non-convergence and shrank the steps ~100x (3963 steps, 215 s).
    prob = pyode.ODEProblem(vdp, torch.tensor([2.0, 0.0]), (0.0, 50.0))
    sol32 = pyode.solve(prob, pyode.Kvaerno5(), rtol=1e-5, atol=1e-7)
    prob64 = pyode.ODEProblem(vdp, torch.tensor([2.0, 0.0], dtype=torch.float64), (0.0, 50.0))
    sol64 = pyode.solve(prob64, pyode.Kvaerno5(), rtol=1e-5, atol=1e-7)
    assert sol32.stats.naccept < 2 * sol64.stats.naccept


def test_threads_take_jacobians_by_autodiff_without_interfering():
    # torch's forward-AD levels are global: two threads in torch.func.jvp corrupted each other,
    # and the solver fell back to finite differences with a warning.
    A = torch.tensor([[-1.0, 0.5], [0.0, -1e3]], dtype=torch.float64)

    def f(t, y):
        return torch.tanh(y) @ A.T

    def solve(i):
        return pyode.solve(
            pyode.ODEProblem(f, torch.tensor([1.0, float(i)], dtype=torch.float64), (0.0, 1.0)), pyode.Rodas5P()
        )

    out, errors = {}, []

    def run(i):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", RuntimeWarning)
                out[i] = solve(i).y[-1]
        except Exception as err:
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    for i in range(6):
        assert torch.equal(out[i], solve(i).y[-1])


def test_second_derivatives():
    # Rodas5P is differentiable twice (its Jacobian is on the graph); an ESDIRK stage's
    # implicit-function gradient is not, and says so instead of returning a wrong Hessian.
    def f(t, y):
        return -(y**3)

    y0 = torch.tensor([1.0, 0.5], dtype=torch.float64, requires_grad=True)
    sol = pyode.solve(pyode.ODEProblem(f, y0, (0.0, 1.0)), pyode.Rodas5P(), rtol=1e-10, atol=1e-12)
    (g,) = torch.autograd.grad(sol.y[-1].sum(), y0, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), y0)
    # y(1) = y0 / sqrt(1 + 2 y0²): d²y/dy0² = -6 y0 / (1 + 2 y0²)^(5/2).
    exact = -6 * y0.detach() / (1 + 2 * y0.detach() ** 2) ** 2.5
    assert torch.allclose(h, exact, rtol=1e-6)
    sol = pyode.solve(pyode.ODEProblem(f, y0, (0.0, 1.0)), pyode.Kvaerno3())
    # create_graph=True asks for a differentiable gradient: refused where it is computed.
    with pytest.raises(RuntimeError, match="second derivatives through an ESDIRK stage"):
        torch.autograd.grad(sol.y[-1].sum(), y0, create_graph=True)
    (g,) = torch.autograd.grad(sol.y[-1].sum(), y0)  # a first derivative still works
    assert torch.allclose(g, (1 + 2 * y0.detach() ** 2) ** -1.5, rtol=1e-3)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_grad_modes(mode):
    prob = pyode.ODEProblem(vdp, torch.tensor([2.0, 0.0], dtype=torch.float64), (0.0, 3.0))
    ref = pyode.solve(prob, pyode.Kvaerno5())
    ctx = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with ctx:
        sol = pyode.solve(prob, pyode.Kvaerno5())
    # The same Newton iterates, with or without the graph: bit for bit.
    assert torch.equal(sol.y, ref.y.detach())


def test_integrating_the_state_backward_fails_clearly_on_a_stiff_problem():
    with pytest.raises(pyode.SolveError) as info:
        robertson_loss(pyode.Rodas5P(), pyode.GaussAdjoint())
    assert any("GaussAdjoint(checkpointing=True)" in note for note in info.value.__notes__)


@pytest.mark.slow
@pytest.mark.parametrize(
    "sensealg",
    [pyode.InterpolatingAdjoint(), pyode.GaussAdjoint(checkpointing=True), pyode.AutoAdjoint()],
    ids=repr,
)
def test_stiff_adjoints_agree_with_direct(sensealg):
    ref, _ = robertson_loss(pyode.Rodas5P(), pyode.DirectAdjoint())
    grad, _ = robertson_loss(pyode.Rodas5P(), sensealg)
    # Both continuous gradients to rtol 1e-9 on a span where Robertson's sensitivities stay
    # O(1)-conditioned: 1e-6 relative is a thousand times the tolerance (measured 9e-10).
    assert ((grad - ref) / ref).abs().max() < 1e-6


def test_checkpointed_gauss_adjoint_on_a_stiff_problem():
    ref, _ = robertson_loss(pyode.Rodas5P(), pyode.DirectAdjoint(), rtol=1e-7, atol=1e-11)
    grad, sol = robertson_loss(pyode.Rodas5P(), pyode.GaussAdjoint(checkpointing=True), rtol=1e-7, atol=1e-11)
    assert sol.adjoint_stats.njac > 0 and sol.adjoint_stats.nquad > 0
    # rtol 1e-7: agreement to 1e-4 relative (measured ~1e-8 at rtol 1e-9).
    assert ((grad - ref) / ref).abs().max() < 1e-4


def test_auto_adjoint_avoids_backward_state_integration_for_implicit_solvers():
    _, sol = robertson_loss(pyode.Rodas5P(), pyode.AutoAdjoint(memory_budget=1), rtol=1e-6, atol=1e-10)
    assert isinstance(sol.sensealg.chosen, pyode.InterpolatingAdjoint)


def test_auto_switch_switches_on_a_problem_that_turns_stiff_and_not_otherwise():
    # Van der Pol with mu = 1000 is stiff along its slow manifold and not in the fast jumps.
    global MU
    # From y = (2, 0) on the slow manifold, the first fast jump comes near t = 800.
    prob = pyode.ODEProblem(vdp, torch.tensor([2.0, 0.0], dtype=torch.float64), (0.0, 1000.0))
    saved, MU = MU, 1e3
    try:
        sol = pyode.solve(prob, pyode.AutoSwitch(pyode.Tsit5(), pyode.Rodas5P()), rtol=1e-6, atol=1e-8)
        ref = pyode.solve(prob, pyode.Rodas5P(), rtol=1e-9, atol=1e-11)
    finally:
        MU = saved
    assert sol.stats.nswitch >= 2 and sol.stats.njac > 0
    assert (sol.y[-1] - ref.y[-1]).abs().max() < 1e-3
    osc = pyode.ODEProblem(
        lambda t, y: torch.stack((y[1], -y[0])), torch.tensor([1.0, 0.0], dtype=torch.float64), (0.0, 100.0)
    )
    sol = pyode.solve(osc, pyode.AutoSwitch(pyode.Tsit5(), pyode.Rodas5P()), rtol=1e-6, atol=1e-8)
    assert sol.stats.nswitch == 0 and sol.stats.njac == 0
    assert abs(float(sol.y[-1][0]) - math.cos(100.0)) < 1e-4


def test_solver_arguments_are_checked():
    with pytest.raises(TypeError, match="autodiff must be True or False"):
        pyode.Rodas5P(autodiff="yes")
    assert repr(pyode.Kvaerno5(autodiff=False)) == "Kvaerno5(autodiff=False)"
    assert repr(pyode.AutoSwitch(pyode.Tsit5(), pyode.Rodas5P())) == "AutoSwitch(Tsit5(), Rodas5P())"


def test_auto_switch_validates_its_methods():
    with pytest.raises(TypeError, match="explicit method must be"):
        pyode.AutoSwitch(pyode.BS3(), pyode.Rodas5P())
    with pytest.raises(TypeError, match="implicit method must be"):
        pyode.AutoSwitch(pyode.Tsit5(), pyode.DP5())
    with pytest.raises(ValueError, match="max_stiff_steps"):
        pyode.AutoSwitch(pyode.Tsit5(), pyode.Rodas5P(), max_stiff_steps=0)


def test_refusals_name_what_does_not_combine():
    prob = pyode.ODEProblem(vdp, torch.ones(2, 2, dtype=torch.float64), (0.0, 1.0))
    with pytest.raises(ValueError, match="batch_axis=0 steps explicit"):
        pyode.solve(prob, pyode.Rodas5P(), batch_axis=0)
    with pytest.raises(ValueError, match="stiffness regularizer"):
        pyode.solve(
            pyode.ODEProblem(vdp, torch.ones(2, dtype=torch.float64), (0.0, 1.0)), pyode.Kvaerno5(), regularize=True
        )
    with pytest.raises(TypeError, match="ReversibleAdjoint needs a reversible solver"):
        pyode.solve(
            pyode.ODEProblem(vdp, torch.ones(2, dtype=torch.float64), (0.0, 1.0)),
            pyode.Rodas5P(),
            sensealg=pyode.ReversibleAdjoint(),
        )
    with pytest.warns(RuntimeWarning, match="steps eagerly"):
        pyode.solve(
            pyode.ODEProblem(vdp, torch.ones(2, dtype=torch.float64), (0.0, 1.0)), pyode.Rodas5P(), compile=True
        )
