"""The Julia engine against the torch engine, on real Julia (skipped without it).

Written where no Julia runtime can be installed, so not yet run: see the engine
table in docs/julia.md. Tolerances: adaptive solves are compared at rtol 1e-10 (both engines' global errors are
then near 1e-9, so 1e-7 between them is the tolerance times the growth, with room); fixed
steps run the same tableau on the same grid, so they agree to rounding (1e-11).

pyode's fixed-step solvers are Euler, Midpoint and RK4. Heun is adaptive in pyode (and in
OrdinaryDiffEq, with the same Euler-embedded error estimate), so it is compared both ways:
stepped with adaptive=False on a fixed grid, and adaptively (see `test_heun_adaptive`).
"""

from __future__ import annotations

import numpy as np
import pytest

from .julia_status import JULIA_OK, WHY_NOT

pytestmark = pytest.mark.skipif(not JULIA_OK, reason=WHY_NOT)

if JULIA_OK:
    import torch

    import pyode
    from pyode.backends.julia import load
    from pyode.julia import Chain, Dense

ADAPTIVE = ["BS3", "DP5", "Tsit5", "DP8"]
FIXED = ["Euler", "Midpoint", "RK4"]  # no error estimate: fixed steps only
SENSEALGS = ["DirectAdjoint", "BacksolveAdjoint", "InterpolatingAdjoint", "GaussAdjoint"]


def problem(dtype=None, batch=(3,)):
    dtype = dtype or torch.float64
    torch.manual_seed(0)
    vf = Chain(Dense(2, 32, "tanh"), Dense(32, 2), dtype=dtype)
    y0 = torch.randn(*batch, 2, dtype=dtype, requires_grad=True)
    return vf, y0, pyode.ODEProblem(vf, y0, (0.0, 1.0))


@pytest.mark.parametrize("name", ADAPTIVE)
def test_adaptive_solves_agree(name):
    _, _, prob = problem()
    ts = torch.linspace(0, 1, 11)
    kw = dict(saveat=ts, rtol=1e-10, atol=1e-12)
    jl = pyode.solve(prob, getattr(pyode, name)(), backend="julia", **kw)
    pt = pyode.solve(prob, getattr(pyode, name)(), **kw)
    assert jl.retcode is pyode.ReturnCode.Success
    torch.testing.assert_close(jl.t, pt.t)
    torch.testing.assert_close(jl.y, pt.y, rtol=1e-7, atol=1e-7)
    assert jl.stats.nfe > 0 and jl.stats.naccept > 0


@pytest.mark.parametrize(("name", "kw"), [(name, {}) for name in FIXED] + [("Heun", {"adaptive": False})])
def test_fixed_step_solves_agree_to_rounding(name, kw):
    _, _, prob = problem()
    ts = torch.linspace(0, 1, 6)  # every second step of dt = 0.1
    jl = pyode.solve(prob, getattr(pyode, name)(), dt=0.1, saveat=ts, backend="julia", **kw)
    pt = pyode.solve(prob, getattr(pyode, name)(), dt=0.1, saveat=ts, **kw)
    torch.testing.assert_close(jl.y, pt.y, rtol=1e-11, atol=1e-11)
    assert jl.stats.naccept == pt.stats.naccept == 10


def test_heun_adaptive():
    # Heun's error estimate is Euler's, an order lower, so its own error is far below rtol:
    # 3e-9 against DP8 at rtol 1e-13 on this problem (torch engine, rtol 1e-6). OrdinaryDiffEq's
    # controller takes other steps; 1e-6 leaves it a factor of 300.
    _, _, prob = problem()
    ts = torch.linspace(0, 1, 11)
    jl = pyode.solve(prob, pyode.Heun(), saveat=ts, rtol=1e-6, atol=1e-8, backend="julia")
    ref = pyode.solve(prob, pyode.DP8(), saveat=ts, rtol=1e-13, atol=1e-13)
    assert jl.retcode is pyode.ReturnCode.Success and jl.stats.nreject >= 0
    torch.testing.assert_close(jl.y, ref.y, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("sensealg", SENSEALGS)
def test_gradients_agree_with_direct_backprop_on_the_torch_engine(sensealg):
    vf, y0, prob = problem()
    ts = torch.linspace(0, 1, 5)
    weights = torch.randn(5, 3, 2, dtype=torch.float64)
    kw = dict(saveat=ts, rtol=1e-10, atol=1e-12)
    jl = pyode.solve(prob, pyode.Tsit5(), backend="julia", sensealg=getattr(pyode, sensealg)(), **kw)
    pt = pyode.solve(prob, pyode.Tsit5(), sensealg=pyode.DirectAdjoint(), **kw)
    g_jl = torch.autograd.grad((jl.y * weights).sum(), (vf.theta, y0))
    g_pt = torch.autograd.grad((pt.y * weights).sum(), (vf.theta, y0))
    for a, b in zip(g_jl, g_pt):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    if sensealg != "DirectAdjoint":
        assert jl.adjoint_stats.nfe > 0


@pytest.mark.parametrize("sensealg", ["BacksolveAdjoint", "InterpolatingAdjoint"])
def test_seminorm_does_not_raise_backward_nfe(sensealg):
    counts = {}
    for seminorm in (False, True):
        _, _, prob = problem(batch=(16,))
        sol = pyode.solve(
            prob,
            pyode.Tsit5(),
            saveat=torch.linspace(0, 1, 5),
            rtol=1e-6,
            atol=1e-8,
            backend="julia",
            sensealg=getattr(pyode, sensealg)(seminorm=seminorm),
        )
        sol.y.pow(2).sum().backward()
        counts[seminorm] = sol.adjoint_stats.nfe
    print(f"{sensealg}: backward NFE full norm {counts[False]}, seminorm {counts[True]}")
    assert counts[True] <= counts[False]


def test_failed_solve_returns_partial_solution():
    _, _, prob = problem()
    ts = torch.linspace(0, 1, 11)
    sol = pyode.solve(prob, pyode.Tsit5(), saveat=ts, rtol=1e-12, max_steps=3, throw=False, backend="julia")
    assert sol.retcode is pyode.ReturnCode.MaxIters
    assert len(sol.t) < 11 and sol.y.shape[0] == len(sol.t)
    with pytest.raises(pyode.SolveError, match="MaxIters"):
        pyode.solve(prob, pyode.Tsit5(), saveat=ts, rtol=1e-12, max_steps=3, backend="julia")


@pytest.mark.parametrize("sensealg", SENSEALGS)
def test_float32(sensealg):
    # InterpolatingAdjoint and GaussAdjoint interpolate the save points in Float64 (issue 11,
    # finding 3); PyODE.jl converts the states back. Tolerance: both engines at rtol 1e-6 in
    # float32 agree to about 1e-5; 1e-4 leaves room.
    vf, y0, prob = problem(torch.float32)
    kw = dict(saveat=torch.linspace(0, 1, 5), sensealg=getattr(pyode, sensealg)())
    jl = pyode.solve(prob, pyode.Tsit5(), backend="julia", **kw)
    pt = pyode.solve(prob, pyode.Tsit5(), **kw)
    assert jl.y.dtype == torch.float32
    torch.testing.assert_close(jl.y, pt.y, rtol=1e-4, atol=1e-4)
    g_theta, g_y0 = torch.autograd.grad(jl.y.sum(), (vf.theta, y0))
    assert g_theta.dtype == g_y0.dtype == torch.float32 and torch.isfinite(g_theta).all()


@pytest.mark.parametrize("name", FIXED)
def test_fixed_steps_with_interpolating_adjoint(name):
    # Issue 11, finding 1: checkpointing (the default) is sent off for fixed steps, so the
    # reverse pass reads the forward steps. The continuous adjoint differs from the discrete
    # gradient (|g| ≈ 4) by the method's error at dt = 0.01; the torch engine's continuous
    # adjoints measure 5.5e-3 (Euler), 2e-6 (Midpoint) and 1e-13 (RK4) on this problem.
    # SciML interpolates the forward state its own way, so 2e-2 and 1e-4 leave room.
    vf, y0, prob = problem()
    ts = torch.linspace(0, 1, 5)
    weights = torch.randn(5, 3, 2, dtype=torch.float64)
    kw = dict(saveat=ts, dt=0.01)
    jl = pyode.solve(prob, getattr(pyode, name)(), backend="julia", sensealg=pyode.InterpolatingAdjoint(), **kw)
    pt = pyode.solve(prob, getattr(pyode, name)(), sensealg=pyode.DirectAdjoint(), **kw)
    g_jl = torch.autograd.grad((jl.y * weights).sum(), (vf.theta, y0))
    g_pt = torch.autograd.grad((pt.y * weights).sum(), (vf.theta, y0))
    tol = 2e-2 if name == "Euler" else 1e-4
    for a, b in zip(g_jl, g_pt):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_backsolve_without_t1_among_the_save_times():
    # Issue 11, finding 2: t1 is saved for the reverse solve's start and dropped again.
    vf, y0, prob = problem()
    ts = torch.linspace(0, 0.8, 5)
    weights = torch.randn(5, 3, 2, dtype=torch.float64)
    kw = dict(saveat=ts, rtol=1e-10, atol=1e-12)
    jl = pyode.solve(prob, pyode.Tsit5(), backend="julia", sensealg=pyode.BacksolveAdjoint(), **kw)
    pt = pyode.solve(prob, pyode.Tsit5(), sensealg=pyode.DirectAdjoint(), **kw)
    torch.testing.assert_close(jl.t, ts.double())
    g_jl = torch.autograd.grad((jl.y * weights).sum(), (vf.theta, y0))
    g_pt = torch.autograd.grad((pt.y * weights).sum(), (vf.theta, y0))
    for a, b in zip(g_jl, g_pt):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("sensealg", SENSEALGS)
def test_no_gradient_of_a_failed_solve(sensealg):
    # Issue 11, finding 4.
    vf, _, prob = problem()
    kw = dict(saveat=torch.linspace(0, 1, 11), rtol=1e-12, max_steps=3, throw=False)
    sol = pyode.solve(prob, pyode.Tsit5(), backend="julia", sensealg=getattr(pyode, sensealg)(), **kw)
    assert sol.retcode is pyode.ReturnCode.MaxIters
    with pytest.raises(pyode.SolveError, match="so it has no gradient"):
        sol.y.sum().backward()
    assert vf.theta.grad is None


def test_numpy_buffers_reach_julia_without_copy():
    module = load()
    a = np.zeros(3)
    assert "PyArray" in str(module.argument_type(a))
    module.write_entry_b(a, 2, 5.0)  # write_entry! in Julia; juliacall spells ! as _b
    assert a[1] == 5.0


def test_julia_arrays_come_back_as_views():
    import juliacall

    from pyode.backends.julia import _marshal

    x = juliacall.Main.seval("zeros(3, 2)")  # a column-major Julia Matrix
    ys = _marshal.from_julia_matrix(x, 3, torch.float64, "x")
    assert ys.shape == (2, 3) and ys.is_contiguous()
    x[2, 1] = 5.0  # juliacall indexes from 0: Julia's x[3, 2]
    assert ys[1, 2].item() == 5.0


def test_local_regularization_matches_the_torch_engine():
    # Same seed, same t_s; y(t_s) from each engine's own solve, the local step in torch on both.
    # The error estimate is a difference of Tsit5 stages divided by atol + rtol·|y|, close to
    # rounding: on the torch engine, y(t_s) from Tsit5, DP5 and DP8 solves moves it by 0.35% at
    # rtol 1e-8 and by 4e-4 at rtol 1e-6 (used here), so 1e-2. The stiffness estimate moves by
    # 2e-9: 1e-6.
    _, _, prob = problem()
    kw = dict(saveat=torch.linspace(0, 1, 5), rtol=1e-6, atol=1e-8, regularize=pyode.LocalRegularization())
    torch.manual_seed(2)
    jl = pyode.solve(prob, pyode.Tsit5(), backend="julia", sensealg=pyode.GaussAdjoint(), **kw)
    torch.manual_seed(2)
    pt = pyode.solve(prob, pyode.Tsit5(), **kw)
    assert jl.regularization_time == pt.regularization_time
    torch.testing.assert_close(jl.error_estimate, pt.error_estimate, rtol=1e-2, atol=0)
    torch.testing.assert_close(jl.stiffness_estimate, pt.stiffness_estimate, rtol=1e-6, atol=0)
    (jl.y.pow(2).sum() + jl.error_estimate).backward()
    assert torch.isfinite(prob.f.theta.grad).all()


def test_gradient_matches_finite_differences_of_the_julia_solve():
    # Independent of the torch engine: central differences of the Julia forward solve itself.
    torch.manual_seed(0)
    vf = Chain(Dense(2, 4, "tanh"), Dense(4, 2), dtype=torch.float64)
    y0 = torch.tensor([0.5, -0.2], dtype=torch.float64)
    kw = dict(saveat=[1.0], rtol=1e-12, atol=1e-14, backend="julia", sensealg=pyode.InterpolatingAdjoint())

    def loss():
        return pyode.solve(pyode.ODEProblem(vf, y0, (0.0, 1.0)), pyode.Tsit5(), **kw).y.sum()

    loss().backward()
    grad = vf.theta.grad.clone()
    with torch.no_grad():
        for i in (0, 3, 7, 12, vf.num_params - 1):
            vf.theta[i] += 1e-6
            up = loss().item()
            vf.theta[i] -= 2e-6
            down = loss().item()
            vf.theta[i] += 1e-6
            assert abs((up - down) / 2e-6 - grad[i].item()) < 1e-6
