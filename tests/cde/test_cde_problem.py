"""Neural CDEs end to end: `CDEProblem` solved as the ODE dz/dt = f(t, z)·dX/dt.

Against the ODE it amounts to (a control X(t) = t), closed forms (the linear CDE dz = A z w·dX,
z(t) = expm(A w·(X(t) - X(t0))) z0), DirectAdjoint and finite differences for the gradients of
every sensitivity algorithm with respect to the vector field's parameters and to the data the
path is built from, and torchcde 0.2.5. Then where the steps land (the knots), the conventions
f may follow (`prod`, tuple states, extra state dimensions), `NeuralCDE`, bad input, grad modes,
events and `compile=True`.

The data: B = 2 series of L = 5 irregular observations of C = 2 channels on [0, 1], a state of
H = 2. The bugs these tests found (knots on a span's ends, the reversible solvers and Kvaerno5's
gradient hook at discontinuities, an uncompilable path lookup) each have a test here.
"""

from __future__ import annotations

import functools
import math
import warnings

import pytest
import torch

import pyode
from pyode import cde

F64, F32 = torch.float64, torch.float32
T_OBS = (0.0, 0.25, 0.6, 0.8, 1.0)  # irregular observation times: the knots
B, C, H = 2, 2, 2

PATHS = {
    "natural": cde.natural_cubic_spline,
    "hermite": cde.hermite_cubic_backward,
    "linear": cde.linear,
    "rectilinear": cde.rectilinear,
}


def _data(dtype=F64, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, x): the knots (L,) and observations (B, L, C), the same for every test."""
    g = torch.Generator().manual_seed(seed)
    return torch.tensor(T_OBS, dtype=dtype), torch.randn(B, len(T_OBS), C, generator=g, dtype=torch.float64).to(dtype)


class Field(torch.nn.Module):
    """A small MLP vector field z (..., H) -> (..., H, channels), initialized from a fixed seed."""

    def __init__(self, channels: int = C, dtype=F64, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)  # the same weights in either dtype (drawn in float64)
            self.l1 = torch.nn.Linear(H, 4, dtype=F64).to(dtype)
            self.l2 = torch.nn.Linear(4, H * channels, dtype=F64).to(dtype)
        self.channels = channels

    def forward(self, t, z):
        return torch.tanh(self.l2(torch.tanh(self.l1(z)))).view(*z.shape[:-1], H, self.channels)


def _relative(got: torch.Tensor, expected: torch.Tensor) -> float:
    """max |got - expected| / max |expected|: one number for a whole gradient vector."""
    return float((got.double() - expected.double()).abs().max() / expected.double().abs().max())


def _linear_cde(channels: int, dtype=F64):
    """f(t, z) = (A z) ⊗ w: dz = A z (w·dX), whose solution is z(t) = expm(A w·(X(t) - X(t0))) z0.
    A is a damped rotation, so the solution turns with the data instead of only scaling."""
    A = torch.tensor([[-0.2, 1.5], [-1.5, -0.2]], dtype=dtype)
    w = torch.linspace(0.8, -0.6, channels, dtype=dtype)

    def f(t, z):
        return (z @ A.T).unsqueeze(-1) * w

    def exact(increments: torch.Tensor, z0: torch.Tensor) -> torch.Tensor:
        """increments (B, T, channels) of X since t0, z0 (B, H) -> z (T, B, H), in float64."""
        s = increments.double() @ w.double()  # (B, T)
        return torch.einsum("btij,bj->tbi", torch.linalg.matrix_exp(A.double() * s[..., None, None]), z0.double())

    return f, exact


def _mixing() -> torch.Tensor:
    """A fixed (H, H, C) tensor for linear vector fields z -> einsum("bh,hkc->bkc", z, M)."""
    return 0.5 * torch.randn(H, H, C, generator=torch.Generator().manual_seed(2), dtype=F64)


def _observed(path: str, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """X at the observation times, from the data alone: x itself, with time prepended for the
    rectilinear path (its X(t_i) is the observation at t_i)."""
    if path == "rectilinear":
        return torch.cat([t.view(1, -1, 1).expand(x.shape[0], -1, 1), x], dim=-1)
    return x


# ------------------------------------------------------------------------------------------------
# 1. A control X(t) = t is the ODE dz/dt = f(t, z)


@pytest.mark.parametrize("dtype", [F64, F32], ids=str)
@pytest.mark.parametrize("path", ["natural", "hermite", "linear"])
def test_control_equal_to_time_is_the_ode(path, dtype):
    """X(t) = t makes dX/dt = 1. The linear and Hermite paths through (t_i, t_i) have slopes
    (t_{i+1} - t_i)/(t_{i+1} - t_i) = 1 exactly and zero curvature, so the CDE is the ODE bit for
    bit, provided the ODE lands on the same knots: as d_discontinuities for the linear path (the
    solve restarts there: one more evaluation of f per knot) and as tstops for the C¹ Hermite path.
    The natural spline's slopes come out of a tridiagonal solve, 1 to rounding: the step sequence
    may differ by rounding, the values by ~1e-15 (float64) / 1e-6 (float32) (measured 1.6e-15)."""
    t, _ = _data(dtype)
    x = t.view(1, -1, 1).expand(B, -1, 1)
    W = torch.tensor([[0.3, -0.8], [0.5, 0.1]], dtype=dtype)
    z0 = torch.tensor([[0.5, -1.0], [1.5, 0.2]], dtype=dtype)

    def ode(t, z):
        return torch.tanh(z @ W + torch.sin(3 * t))

    def cde_field(t, z):
        return ode(t, z).unsqueeze(-1)

    rtol, atol = (1e-10, 1e-12) if dtype == F64 else (1e-5, 1e-7)
    sol = pyode.solve(pyode.CDEProblem(cde_field, PATHS[path](t, x), z0), pyode.Tsit5(), rtol=rtol, atol=atol)
    knots = t[1:-1].tolist()  # the knots in the data's dtype (0.6 in float32 is not 0.6)
    stops = {"hermite": dict(tstops=knots), "linear": dict(d_discontinuities=knots), "natural": {}}[path]
    ref = pyode.solve(pyode.ODEProblem(ode, z0, (0.0, 1.0)), pyode.Tsit5(), rtol=rtol, atol=atol, **stops)
    assert sol.retcode is pyode.ReturnCode.Success
    if path == "natural":
        torch.testing.assert_close(sol.y[-1], ref.y[-1], rtol=0, atol=1e-13 if dtype == F64 else 1e-5)
    else:
        assert torch.equal(sol.t, ref.t)
        assert torch.equal(sol.y, ref.y)
        assert (sol.stats.nfe, sol.stats.naccept, sol.stats.nreject) == (
            ref.stats.nfe,
            ref.stats.naccept,
            ref.stats.nreject,
        )


def test_rectilinear_control_of_time_is_the_ode_at_the_knots():
    """The rectilinear path of x = t (its only channel the time channel) runs time at twice the
    speed on [t_i, m_i] and holds it on [m_i, t_{i+1}]: X is a reparametrization of t with
    X(t_i) = t_i. For an autonomous f the CDE's solution is then y(X(t)), so at the knots it is
    the ODE's y(t_i), to the tolerance (rtol 1e-10 here; measured 1e-12; bound 1e-8)."""
    t, _ = _data()
    x = t.view(1, -1, 1).expand(B, -1, 1)
    W = torch.tensor([[0.3, -0.8], [0.5, 0.1]], dtype=F64)
    z0 = torch.tensor([[0.5, -1.0], [1.5, 0.2]], dtype=F64)

    def ode(t, z):
        return torch.tanh(z @ W)

    X = cde.rectilinear(t, x, time_channel=0)
    assert X.channels == 1
    sol = pyode.solve(
        pyode.CDEProblem(lambda t, z: ode(t, z).unsqueeze(-1), X, z0), pyode.Tsit5(), saveat=t, rtol=1e-10, atol=1e-12
    )
    ref = pyode.solve(pyode.ODEProblem(ode, z0, (0.0, 1.0)), pyode.DP8(), saveat=t, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(sol.y, ref.y, rtol=0, atol=1e-8)


# ------------------------------------------------------------------------------------------------
# 2. The linear CDE against its closed form


@pytest.mark.parametrize("dtype", [F64, F32], ids=str)
@pytest.mark.parametrize("path", list(PATHS))
def test_linear_cde_closed_form(path, dtype):
    """dz = A z (w·dX) for batched data (B, L, C), saved at the knots, against
    expm(A w·(x_i - x_0)) z0 computed from the data (not from the path). Every path passes
    through the observations, so this holds for all four whatever their shape between knots.
    float64 at rtol 1e-10: the global error is a few rtol·|z| (|z| ≲ 3; measured 1e-11, 1.2e-9
    for the natural spline, whose knots the steps straddle; bound 1e-8). float32 at rtol 1e-5:
    measured 1e-6 to 4e-6 (1e-4 for the natural spline, whose float32 coefficients come from a
    tridiagonal solve); bound 5e-4."""
    t, x = _data(dtype)
    X = PATHS[path](t, x)
    f, exact = _linear_cde(X.channels, dtype)
    z0 = torch.tensor([[1.0, -0.5], [0.3, 0.8]], dtype=dtype)
    rtol, atol, bound = (1e-10, 1e-12, 1e-8) if dtype == F64 else (1e-5, 1e-7, 5e-4)
    sol = pyode.solve(pyode.CDEProblem(f, X, z0), pyode.Tsit5(), saveat=t, rtol=rtol, atol=atol)
    assert sol.y.shape == (len(T_OBS), B, H) and sol.y.dtype == dtype
    observed = _observed(path, t, x)
    expected = exact(observed - observed[:, :1], z0)
    torch.testing.assert_close(sol.y.double(), expected, rtol=0, atol=bound)


# ------------------------------------------------------------------------------------------------
# 3. Gradients: every sensitivity algorithm against DirectAdjoint and finite differences

SAVE = (0.1, 0.45, 0.7, 1.0)  # between the knots but the last (save points on knots: their own tests below)
_V = torch.tensor([[0.7, -0.3], [0.2, 0.9]], dtype=F64)  # the data's first row to z0


def _gradients(path, sensealg, solver=None, *, rtol=1e-9, atol=1e-10, dtype=F64, saveat=SAVE, **solve_kwargs):
    """dL/dx and dL/dθ, concatenated: the path is built from x (requires grad) inside, z0 is read
    from x's first row (as a neural CDE does), and L weighs every save point (`SAVE`)."""
    t, x = _data(dtype)
    x.requires_grad_()
    func = Field(dtype=dtype)
    X = PATHS[path](t, x)
    z0 = torch.tanh(x[:, 0] @ _V.to(dtype))
    sol = pyode.solve(
        pyode.CDEProblem(func, X, z0),
        solver or pyode.Tsit5(),
        saveat=saveat,
        rtol=rtol,
        atol=atol,
        sensealg=sensealg,
        **solve_kwargs,
    )
    loss = (sol.y**2).sum() + sol.y[-1].sum()
    loss.backward()
    grads = torch.cat([x.grad.reshape(-1)] + [p.grad.reshape(-1) for p in func.parameters()])
    return grads, sol


@functools.cache
def _direct(path: str) -> torch.Tensor:
    """DirectAdjoint through Tsit5 at rtol 1e-9: the discrete gradient the others are held to."""
    grads, _ = _gradients(path, pyode.DirectAdjoint())
    return grads


@functools.cache
def _reference(path: str) -> torch.Tensor:
    """DirectAdjoint through DP8 at rtol 1e-12: the gradient to ~1e-11, for methods solved at
    looser tolerances (the implicit solvers)."""
    grads, _ = _gradients(path, pyode.DirectAdjoint(), pyode.DP8(), rtol=1e-12, atol=1e-14)
    return grads


_QUADRATURE = pyode.QuadratureAdjoint(C=10, max_nodes=1000)  # the default cap of 64 nodes is too few for rough paths
SENSEALGS = {
    "backsolve": pyode.BacksolveAdjoint(),
    "backsolve-full-norm": pyode.BacksolveAdjoint(seminorm=False),
    "interpolating": pyode.InterpolatingAdjoint(),
    "interpolating-full-norm": pyode.InterpolatingAdjoint(seminorm=False),
    "gauss": pyode.GaussAdjoint(),
    "gauss-checkpointing": pyode.GaussAdjoint(checkpointing=True),
    "quadrature": _QUADRATURE,
    "direct-checkpointed": pyode.DirectAdjoint(checkpoint_every=3),
    "auto": pyode.AutoAdjoint(),
}
# One path per algorithm runs by default (each path meets three); the full matrix (27 gradients,
# ~45 s on 2 cores; the quadrature adjoint with C=10 alone ~5 s a cubic path) is slow.
_DEFAULT = {
    ("natural", "backsolve"),
    ("natural", "gauss-checkpointing"),
    ("natural", "auto"),
    ("hermite", "interpolating"),
    ("hermite", "gauss"),
    ("linear", "backsolve-full-norm"),
    ("linear", "interpolating-full-norm"),
    ("linear", "quadrature"),
    ("linear", "direct-checkpointed"),
}


def _matrix():
    for path in ("natural", "hermite", "linear"):
        for name in SENSEALGS:
            marks = () if (path, name) in _DEFAULT else (pytest.mark.slow,)
            yield pytest.param(path, name, marks=marks, id=f"{path}-{name}")


@pytest.mark.parametrize("path, name", list(_matrix()))
def test_sensealg_matches_direct(path, name):
    """Both at rtol 1e-9, atol 1e-10. The continuous adjoints and the discrete gradient each
    approximate the exact gradient to a few tolerances times its growth over the span: measured
    3e-10 (Hermite), 6e-9 (linear), 9e-9 to 3.4e-8 (natural spline, whose knots the steps
    straddle); bound 2e-7 of the largest entry (200 rtol). The checkpointed DirectAdjoint
    replays the same steps (measured 1e-15; bound 1e-12), and AutoAdjoint picks DirectAdjoint
    within its memory budget here (bound 1e-12 too; else 2e-7)."""
    sensealg = SENSEALGS[name]
    grads, sol = _gradients(path, sensealg)
    assert sol.retcode is pyode.ReturnCode.Success
    exact = name in ("direct-checkpointed", "auto") and not (
        name == "auto" and not isinstance(sol.sensealg.chosen, pyode.DirectAdjoint)
    )
    assert _relative(grads, _direct(path)) < (1e-12 if exact else 2e-7)
    if isinstance(sensealg, pyode.QuadratureAdjoint | pyode.GaussAdjoint):
        assert sol.adjoint_stats.nquad > 0


@pytest.mark.parametrize(
    "path, sensealg",
    [
        ("natural", pyode.DirectAdjoint()),
        pytest.param("natural", pyode.GaussAdjoint(), marks=pytest.mark.slow),
        pytest.param("hermite", pyode.DirectAdjoint(), marks=pytest.mark.slow),
        ("hermite", pyode.GaussAdjoint()),
    ],
    ids=lambda v: repr(v) if not isinstance(v, str) else v,
)
def test_per_sample_gradients_match_the_joint_solve(path, sensealg):
    """batch_axis=0: each series steps on its own, the path read at its own time (t of shape
    (B,)). The gradient approximates the same exact one as the joint solve's (rtol 1e-9:
    measured 1e-9 (Hermite) to 2.6e-8 (natural); bound 2e-7 as above)."""
    grads, sol = _gradients(path, sensealg, batch_axis=0)
    assert sol.stats.per_element is not None and sol.y.shape == (len(SAVE), B, H)
    assert _relative(grads, _direct(path)) < 2e-7


@pytest.mark.parametrize("path", [pytest.param("natural", marks=pytest.mark.slow), "hermite"])
def test_reversible_adjoint(path):
    """ReversibleAdjoint reconstructs the steps of Reversible(Tsit5()) backward: the gradient of
    the same discrete computation as DirectAdjoint through that solver, to round-off (measured
    7e-16; bound 1e-11). Against the DP8 reference, on the cubic paths (the linear one is an
    refused, below): measured 3e-10 (Hermite), 1.3e-7 (natural spline: the reversible coupling's
    own error, which the base method's estimate does not see); bound 1e-6."""
    solver = pyode.Reversible(pyode.Tsit5())
    direct, _ = _gradients(path, pyode.DirectAdjoint(), solver)
    reversible, sol = _gradients(path, pyode.ReversibleAdjoint(), solver)
    assert sol.adjoint_stats.nfe > 0
    assert _relative(reversible, direct) < 1e-11
    assert _relative(reversible, _reference(path)) < 1e-6


@pytest.mark.parametrize(
    "solver, kwargs",
    [
        (pyode.Reversible(pyode.Tsit5()), dict(rtol=1e-10, atol=1e-12, bound=1e-8)),
        (pyode.ReversibleHeun(), dict(dt=1e-3, adaptive=False, bound=1e-4)),
    ],
    ids=["Reversible(Tsit5())", "ReversibleHeun()"],
)
def test_reversible_solver_on_a_linear_path_is_refused(solver, kwargs):
    """The reversible solvers cannot restart a step at a discontinuity (Reversible(base) evaluates
    f itself after a jump, ReversibleHeun carries f across it in its state: both read the slope
    before each knot, measured 8e-3 relative error on the closed form), so a linear path's knots,
    like d_discontinuities on an ODE, are refused by name."""
    kwargs = dict(kwargs)
    kwargs.pop("bound")
    t, x = _data()
    f, _ = _linear_cde(C)
    z0 = torch.tensor([[1.0, -0.5], [0.3, 0.8]], dtype=F64)
    with pytest.raises(ValueError, match="cannot restart"):
        pyode.solve(pyode.CDEProblem(f, cde.linear(t, x), z0), solver, saveat=t, **kwargs)
    with pytest.raises(ValueError, match="cannot restart"):
        pyode.solve(pyode.ODEProblem(lambda t, y: -y, z0, (0.0, 1.0)), solver, d_discontinuities=[0.5], **kwargs)


def test_reversible_heun_fixed_steps():
    """ReversibleHeun at fixed steps (second order: adaptive at rtol 1e-9 it runs out of steps):
    ReversibleAdjoint against DirectAdjoint through it, the same discrete gradient to round-off
    (bound 1e-11)."""
    solver = pyode.ReversibleHeun()
    direct, _ = _gradients("hermite", pyode.DirectAdjoint(), solver, dt=0.02, adaptive=False)
    reversible, _ = _gradients("hermite", pyode.ReversibleAdjoint(), solver, dt=0.02, adaptive=False)
    assert _relative(reversible, direct) < 1e-11


@pytest.mark.parametrize(
    "solver, path",
    [
        (pyode.Rodas5P(), "hermite"),
        pytest.param(pyode.Rodas5P(), "natural", marks=pytest.mark.slow),
        pytest.param(pyode.Rodas5P(), "linear", marks=pytest.mark.slow),
        pytest.param(pyode.Kvaerno5(), "natural", marks=pytest.mark.slow),
        pytest.param(pyode.Kvaerno5(), "hermite", marks=pytest.mark.slow),
        pytest.param(pyode.Kvaerno5(), "linear", marks=pytest.mark.slow),
    ],
    ids=lambda v: repr(v) if not isinstance(v, str) else v,
)
def test_implicit_solver_with_interpolating_adjoint(solver, path):
    """InterpolatingAdjoint through an implicit solver at rtol 1e-8, atol 1e-10 (the backward
    adjoint ODE solved by the same implicit method), against the DP8 reference: measured 5e-9 to
    2e-8 (Rodas5P), 1.5e-7 to 2.6e-7 (Kvaerno5); bound 1e-5, i.e. a thousand rtol."""
    grads, sol = _gradients(path, pyode.InterpolatingAdjoint(), solver, rtol=1e-8, atol=1e-10)
    assert sol.stats.njac > 0
    assert _relative(grads, _reference(path)) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("path", ["hermite", "natural"])
def test_implicit_solver_with_direct_adjoint(path):
    """Rodas5P is differentiated exactly as a discrete map (measured 7e-9 to 5e-8 from the
    reference at rtol 1e-8; bound 1e-5). Kvaerno5 on the linear path has its own test below."""
    grads, _ = _gradients(path, pyode.DirectAdjoint(), pyode.Rodas5P(), rtol=1e-8, atol=1e-10)
    assert _relative(grads, _reference(path)) < 1e-5


def test_kvaerno5_direct_adjoint_on_a_linear_path():
    grads, _ = _gradients("linear", pyode.DirectAdjoint(), pyode.Kvaerno5(), rtol=1e-8, atol=1e-10)
    assert _relative(grads, _reference("linear")) < 1e-5


def test_float32_gradients():
    """float32 at rtol 1e-5: BacksolveAdjoint and DirectAdjoint agree to the tolerance and
    rounding, as DirectAdjoint does with the float64 one (a relative error of rtol times the
    growth, plus float32 rounding over ~50 steps: measured 8e-6 and 9e-6; bound 1e-4)."""
    direct, _ = _gradients("hermite", pyode.DirectAdjoint(), rtol=1e-5, atol=1e-7, dtype=F32)
    adjoint, _ = _gradients("hermite", pyode.BacksolveAdjoint(), rtol=1e-5, atol=1e-7, dtype=F32)
    assert direct.dtype == F32
    assert _relative(adjoint, direct) < 1e-4
    assert _relative(direct, _direct("hermite")) < 1e-4


def _loss_at(path, x, func, **kwargs):
    """The loss of `_gradients`, without gradients (for finite differences)."""
    t, _ = _data()
    with torch.no_grad():
        z0 = torch.tanh(x[:, 0] @ _V)
        sol = pyode.solve(pyode.CDEProblem(func, PATHS[path](t, x), z0), pyode.DP8(), saveat=SAVE, **kwargs)
        return float((sol.y**2).sum() + sol.y[-1].sum())


@pytest.mark.parametrize("path", ["linear", pytest.param("natural", marks=pytest.mark.slow)])
def test_gradients_match_finite_differences(path):
    """Central differences of the loss, DP8 at rtol 1e-12, with eps = 1e-4: truncation
    eps²·|L'''| ~ 1e-8, and the step sizes switching with the inputs moves L by ~rtol·|L| =
    1e-11, 1e-7 in the quotient; bound 1e-5 relative, for three data entries (one at a knot
    interior to the span, one at each end) and one weight of f. Measured ≤ 4e-9 (linear), ≤ 6e-7
    (natural spline, whose straddled knots make the step sequence, so the quotient, noisier). The
    gradients: DirectAdjoint and GaussAdjoint, independently of each other."""
    _, x = _data()
    func = Field()
    weight = func.l1.weight
    entries = [(0, 0, 0), (1, 2, 1), (0, len(T_OBS) - 1, 1)]
    for sensealg in (pyode.DirectAdjoint(), pyode.GaussAdjoint()):
        grads, _ = _gradients(path, sensealg, pyode.DP8(), rtol=1e-12, atol=1e-14)
        grad_x = grads[: x.numel()].view_as(x)
        grad_w = grads[x.numel() : x.numel() + weight.numel()].view_as(weight)
        kw = dict(rtol=1e-12, atol=1e-14)
        eps = 1e-4
        for index in entries:
            plus, minus = x.clone(), x.clone()
            plus[index] += eps
            minus[index] -= eps
            fd = (_loss_at(path, plus, func, **kw) - _loss_at(path, minus, func, **kw)) / (2 * eps)
            assert grad_x[index].item() == pytest.approx(fd, rel=1e-5, abs=1e-8), (sensealg, index)
        with torch.no_grad():
            weight[1, 0] += eps
            up = _loss_at(path, x, func, **kw)
            weight[1, 0] -= 2 * eps
            down = _loss_at(path, x, func, **kw)
            weight[1, 0] += eps
        assert grad_w[1, 0].item() == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-8), sensealg


# ------------------------------------------------------------------------------------------------
# 4. Refusals


@pytest.mark.parametrize("path", ["linear", "rectilinear"])
def test_per_sample_with_a_piecewise_linear_path_is_refused(path):
    t, x = _data()
    X = PATHS[path](t, x)
    prob = pyode.CDEProblem(Field(channels=X.channels), X, torch.zeros(B, H, dtype=F64))
    with pytest.raises(ValueError, match="batch_axis"):
        pyode.solve(prob, pyode.Tsit5(), batch_axis=0)
    # stop_at_knots=False: the steps no longer restart at the knots, and per-sample is allowed
    sol = pyode.solve(
        pyode.CDEProblem(prob.f, X, prob.y0, stop_at_knots=False), pyode.Tsit5(), batch_axis=0, saveat=[1.0]
    )
    assert sol.retcode is pyode.ReturnCode.Success


def test_julia_backend_is_refused():
    t, x = _data()
    prob = pyode.CDEProblem(Field(), cde.natural_cubic_spline(t, x), torch.zeros(B, H, dtype=F64))
    with pytest.raises(ValueError, match="torch"):
        pyode.solve(prob, pyode.Tsit5(), backend="julia")


# ------------------------------------------------------------------------------------------------
# 5. Where the steps land


@pytest.mark.parametrize("path", ["hermite", "linear", "rectilinear"])
def test_steps_land_on_the_knots(path):
    """Every knot inside the span is a step end (saveat=None saves every step) for the paths
    that are not C², and with the linear ones the solution is accurate there, kinks and all
    (closed form, rtol 1e-10: bound 1e-8 as above)."""
    t, x = _data()
    X = PATHS[path](t, x)
    f, exact = _linear_cde(X.channels)
    z0 = torch.tensor([[1.0, -0.5], [0.3, 0.8]], dtype=F64)
    prob = pyode.CDEProblem(f, X, z0)
    assert prob.knot_stops() == (
        ([], X.knots[1:-1].tolist()) if path in ("linear", "rectilinear") else (X.knots[1:-1].tolist(), [])
    )
    sol = pyode.solve(prob, pyode.Tsit5(), rtol=1e-10, atol=1e-12)
    assert sol.dense is not None
    steps = sol.t.tolist()
    assert all(k in steps for k in X.knots.tolist())
    at_obs = [steps.index(k) for k in T_OBS]
    observed = _observed(path, t, x)
    torch.testing.assert_close(sol.y[at_obs], exact(observed - observed[:, :1], z0), rtol=0, atol=1e-8)
    # dense output between the knots, with gradients off (DirectAdjoint's dense output has them anyway)
    mid = 0.5 * (T_OBS[1] + T_OBS[2])
    with torch.no_grad():
        torch.testing.assert_close(
            sol(mid), exact(X.evaluate(mid).unsqueeze(-2) - X.evaluate(0.0).unsqueeze(-2), z0)[0], rtol=0, atol=1e-8
        )


def test_natural_spline_does_not_stop_at_knots_unless_asked():
    """The C² natural spline needs no stops: its knots are (generically) not step ends; with
    stop_at_knots=True they are, as tstops (no restart); stop_at_knots=False on a linear path
    drops its discontinuities."""
    t, x = _data()
    X = cde.natural_cubic_spline(t, x)
    z0 = torch.zeros(B, H, dtype=F64) + 0.3
    interior = X.knots[1:-1].tolist()
    plain = pyode.CDEProblem(Field(), X, z0)
    assert plain.knot_stops() == ([], [])
    sol = pyode.solve(plain, pyode.Tsit5(), rtol=1e-8, atol=1e-10)
    assert not any(k in sol.t.tolist() for k in interior)
    forced = pyode.CDEProblem(Field(), X, z0, stop_at_knots=True)
    assert forced.knot_stops() == (interior, [])
    sol = pyode.solve(forced, pyode.Tsit5(), rtol=1e-8, atol=1e-10)
    assert all(k in sol.t.tolist() for k in interior)
    linear = pyode.CDEProblem(Field(), cde.linear(t, x), z0, stop_at_knots=False)
    assert linear.knot_stops() == ([], [])


@pytest.mark.parametrize(
    "sensealg",
    [
        pyode.BacksolveAdjoint(),
        pyode.InterpolatingAdjoint(),
        pyode.GaussAdjoint(),
        pyode.QuadratureAdjoint(C=10, max_nodes=1000),
    ],
    ids=repr,
)
def test_adjoint_backward_solve_lands_on_the_knots(sensealg):
    """A linear path at the moderate rtol 1e-6, saved at the end only, so that every knot lies
    inside the one backward interval. Measured: relative error 6e-7 to 2e-6 against the DP8
    reference, 3 rejected backward steps. With the backward solve straddling the kinks (its stops
    removed) the same runs give 8e-5 to 3e-4 and ~200 rejections: bounds 2e-5 and 20."""
    t, x = _data()
    x.requires_grad_()
    func = Field()

    def gradient(solver, **kw):
        x.grad = None
        func.zero_grad()
        sol = pyode.solve(pyode.CDEProblem(func, cde.linear(t, x), torch.tanh(x[:, 0] @ _V)), solver, **kw)
        sol.y[-1].pow(2).sum().backward()
        return torch.cat([x.grad.reshape(-1)] + [p.grad.reshape(-1) for p in func.parameters()]), sol

    reference, _ = gradient(pyode.DP8(), saveat=[1.0], rtol=1e-12, atol=1e-14)
    grads, sol = gradient(pyode.Tsit5(), saveat=[1.0], rtol=1e-6, atol=1e-8, sensealg=sensealg)
    assert _relative(grads, reference) < 2e-5
    assert sol.adjoint_stats.nreject <= 20


@pytest.mark.parametrize("tspan", [(0.25, 1.0), (1.0, 0.6)], ids=["forward-from-a-knot", "backward-to-a-knot"])
def test_span_with_an_end_on_an_interior_knot(tspan):
    """The linear CDE's closed form on a span with an end on an interior knot, RK4 at dt = 0.01:
    measured 2.3e-7 and 1.1e-7, as on the whole span (2.9e-7), falling 16-fold at dt = 0.005 (fourth
    order); bound 1e-6. A stage with the wrong slope costs O(dt): 0.14 measured with that bug."""
    t, x = _data()
    X = cde.linear(t, x)
    f, exact = _linear_cde(C)
    z0 = torch.tensor([[1.0, -0.5], [0.3, 0.8]], dtype=F64)
    sol = pyode.solve(pyode.CDEProblem(f, X, z0, tspan), pyode.RK4(), dt=0.01, saveat=[tspan[1]])
    increment = X.evaluate(tspan[1]) - X.evaluate(tspan[0])
    torch.testing.assert_close(sol.y[-1], exact(increment.unsqueeze(1), z0)[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "sensealg", [pyode.BacksolveAdjoint(), pyode.InterpolatingAdjoint(), pyode.GaussAdjoint()], ids=repr
)
def test_adjoint_with_save_points_on_the_knots_fixed_steps(sensealg):
    """Save points on the knots of a linear path, RK4 at dt = 0.02 forward and backward: the
    continuous adjoint agrees with DirectAdjoint to the discretization (O(dt⁴), measured 1e-5
    with the save point at the end only; bound 1e-3). Measured with the bug: 0.14."""
    grads, _ = _gradients("linear", sensealg, pyode.RK4(), dt=0.02, saveat=T_OBS)
    direct, _ = _gradients("linear", pyode.DirectAdjoint(), pyode.RK4(), dt=0.02, saveat=T_OBS)
    assert _relative(grads, direct) < 1e-3


def test_adjoint_with_save_points_on_the_knots_adaptive():
    """The same, adaptive at rtol 1e-8: each backward interval ends on a knot, where the last
    (FSAL) stage reads the wrong slope. Tsit5's solution does not use that stage, but its error
    estimate does: the backward solve rejects ~40 steps per knot (measured 297 rejections against
    3 with the save point at the end only). Bound: 30."""
    _, sol = _gradients("linear", pyode.BacksolveAdjoint(), rtol=1e-8, atol=1e-10, saveat=T_OBS)
    assert sol.adjoint_stats.nreject <= 30


# ------------------------------------------------------------------------------------------------
# 6. torchcde


def _torchcde_pair(path: str):
    import torchcde

    coeffs, cls = {
        "natural": (torchcde.natural_cubic_coeffs, torchcde.CubicSpline),
        "hermite": (torchcde.hermite_cubic_coefficients_with_backward_differences, torchcde.CubicSpline),
        "linear": (torchcde.linear_interpolation_coeffs, torchcde.LinearInterpolation),
    }[path]
    # What a careful torchcde user passes: the kinks as jump_t, the Hermite knots as step_t.
    options = {"natural": {}, "hermite": {"step_t": None}, "linear": {"jump_t": None}}[path]
    return coeffs, cls, options


@pytest.mark.parametrize(
    "path, adjoint",
    [
        ("natural", False),
        pytest.param("natural", True, marks=pytest.mark.slow),
        ("hermite", False),
        pytest.param("hermite", True, marks=pytest.mark.slow),
        ("linear", False),
        ("linear", True),
    ],
)
def test_cdeint_matches_torchcde(path, adjoint):
    """pyode.cdeint against torchcde.cdeint on the same data and vector field, both dopri5 at
    rtol 1e-10, atol 1e-12: values (measured 3e-9 for the natural spline, whose knots both
    straddle; 7e-11 otherwise) and gradients with respect to x and θ (measured ≤ 5e-8 relative)
    within 1e-6; output (B, T, H)."""
    torchcde = pytest.importorskip("torchcde")
    coeffs_of, cls, options = _torchcde_pair(path)
    t, x_data = _data()
    func = Field()
    z0 = torch.tensor([[0.4, -0.2], [0.1, 0.6]], dtype=F64)
    kw = dict(method="dopri5", rtol=1e-10, atol=1e-12)
    results = []
    for library in ("torchcde", "pyode"):
        x = x_data.clone().requires_grad_()
        func.zero_grad()
        if library == "torchcde":
            coeffs = coeffs_of(x, t)
            X = cls(coeffs, t)
            extra = dict(options={k: t for k in options})
            if adjoint:
                extra["adjoint_params"] = (*func.parameters(), coeffs)
            z = torchcde.cdeint(X, func, z0, t, adjoint=adjoint, **kw, **extra)
        else:
            z = pyode.cdeint(PATHS[path](t, x), func, z0, t, adjoint=adjoint, **kw)
        assert z.shape == (B, len(T_OBS), H)
        (z**2).sum().backward()
        results.append((z.detach(), torch.cat([x.grad.reshape(-1)] + [p.grad.reshape(-1) for p in func.parameters()])))
    (z_tc, g_tc), (z_py, g_py) = results
    torch.testing.assert_close(z_py, z_tc, rtol=0, atol=1e-6)
    assert _relative(g_py, g_tc) < 1e-6


def test_cdeint_takes_torchcde_paths():
    """torchcde's own CubicSpline (an nn.Module with `derivative`) drives pyode.cdeint: the same
    path as pyode's natural spline (coefficients equal to ~1e-14), so the same solution to the
    tolerance (measured 4e-12; bound 1e-9); the data gets gradients through it without adjoint."""
    torchcde = pytest.importorskip("torchcde")
    t, x_data = _data()
    x = x_data.clone().requires_grad_()
    func = Field()
    z0 = torch.tensor([[0.4, -0.2], [0.1, 0.6]], dtype=F64)
    X = torchcde.CubicSpline(torchcde.natural_cubic_coeffs(x, t), t)
    z = pyode.cdeint(X, func, z0, t, adjoint=False, method="dopri5", rtol=1e-10, atol=1e-12)
    ref = pyode.cdeint(cde.natural_cubic_spline(t, x_data), func, z0, t, adjoint=False, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(z.detach(), ref.detach(), rtol=0, atol=1e-9)
    z.sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all()) and x.grad.abs().sum() > 0
    # and with the compat module's coefficient layout
    import pyode.compat.torchcde as compat

    coeffs = compat.natural_cubic_coeffs(x_data, t)
    torch.testing.assert_close(coeffs, torchcde.natural_cubic_coeffs(x_data, t), rtol=0, atol=1e-12)
    z2 = pyode.cdeint(compat.CubicSpline(coeffs, t), func, z0, t, adjoint=False, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(z2, ref, rtol=0, atol=1e-10)  # rounding of 2c/2, 3d/3 moves the steps


# ------------------------------------------------------------------------------------------------
# 7. What f may be


def test_prod_convention_is_used():
    """f with `prod(t, z, dXdt)` is called through prod only (its __call__ raises), and gives the
    matrix form's solution: the same arithmetic up to the order of the sums, whose rounding may
    move the steps, so agreement to the tolerance (rtol 1e-10: measured 4e-12 here, 4e-9 with
    another M; bound 1e-7)."""
    t, x = _data()
    X = cde.natural_cubic_spline(t, x)
    M = _mixing()
    z0 = torch.tensor([[0.4, -0.2], [0.1, 0.6]], dtype=F64)

    class Prod:
        calls = 0

        def __call__(self, t, z):
            raise AssertionError("f itself was called although it has prod")

        def prod(self, t, z, dXdt):
            assert dXdt.shape == (B, C)
            Prod.calls += 1
            return torch.einsum("bh,hkc,bc->bk", z, M, dXdt)

    def matrix(t, z):
        return torch.einsum("bh,hkc->bkc", z, M)

    a = pyode.solve(pyode.CDEProblem(Prod(), X, z0), pyode.Tsit5(), rtol=1e-10, atol=1e-12, saveat=t)
    b = pyode.solve(pyode.CDEProblem(matrix, X, z0), pyode.Tsit5(), rtol=1e-10, atol=1e-12, saveat=t)
    assert Prod.calls == a.stats.nfe > 0
    torch.testing.assert_close(a.y, b.y, rtol=0, atol=1e-7)


def test_tuple_state():
    """A tuple state (z1, z2) with f returning a tuple of matrices: the linear CDE split in
    two coupled parts, against its closed form (rtol 1e-10: bound 1e-8), with gradients."""
    t, x = _data()
    X = cde.hermite_cubic_backward(t, x)
    f, exact = _linear_cde(C)
    z0 = torch.tensor([[1.0, -0.5], [0.3, 0.8]], dtype=F64, requires_grad=True)

    def split(t, z):
        m = f(t, torch.stack(z, dim=-1))  # (B, H, C)
        return m[:, 0], m[:, 1]

    sol = pyode.solve(
        pyode.CDEProblem(split, X, (z0[:, 0], z0[:, 1])),
        pyode.Tsit5(),
        saveat=t,
        rtol=1e-10,
        atol=1e-12,
        sensealg=pyode.BacksolveAdjoint(),
    )
    assert isinstance(sol.y, tuple) and sol.y[0].shape == (len(T_OBS), B)
    torch.testing.assert_close(torch.stack(sol.y, dim=-1), exact(x - x[:, :1], z0.detach()), rtol=0, atol=1e-8)
    sum(y.sum() for y in sol.y).backward()
    assert z0.grad is not None and bool(torch.isfinite(z0.grad).all())


def test_state_with_extra_dimensions():
    """z of shape (B, K, H) with a path of batch (B,): f returns (B, K, H, C) and each of the K
    states is driven by its series' path. Against K separate solves of (B, H) states: the step
    sequences differ, so tolerance-level agreement (rtol 1e-10; measured ≤ 2e-8; bound 1e-7)."""
    t, x = _data()
    X = cde.natural_cubic_spline(t, x)
    M = _mixing()
    zk = torch.randn(B, 3, H, generator=torch.Generator().manual_seed(1), dtype=F64)
    big = pyode.solve(
        pyode.CDEProblem(lambda t, z: torch.einsum("bkh,hjc->bkjc", z, M), X, zk),
        pyode.Tsit5(),
        saveat=t,
        rtol=1e-10,
        atol=1e-12,
    )
    assert big.y.shape == (len(T_OBS), B, 3, H)
    for k in range(3):
        one = pyode.solve(
            pyode.CDEProblem(lambda t, z: torch.einsum("bh,hjc->bjc", z, M), X, zk[:, k]),
            pyode.Tsit5(),
            saveat=t,
            rtol=1e-10,
            atol=1e-12,
        )
        torch.testing.assert_close(big.y[:, :, k], one.y, rtol=0, atol=1e-7)


# ------------------------------------------------------------------------------------------------
# 8. NeuralCDE


def test_neural_cde_forward_and_training():
    """A Solution from forward; a few Adam steps on a tiny regression (predict each series' final
    value of channel 0 from z(T)) reduce the loss; the data gets gradients through the path."""
    torch.manual_seed(0)
    t = torch.linspace(0, 1, 6, dtype=F64)
    x = torch.randn(16, 6, C, dtype=F64).cumsum(dim=1) * 0.3
    target = x[:, -1, :1].clone()
    model = pyode.nn.NeuralCDE(Field().double(), rtol=1e-5, atol=1e-7)
    initial = torch.nn.Linear(C, H, dtype=F64)
    readout = torch.nn.Linear(H, 1, dtype=F64)
    params = [*model.parameters(), *initial.parameters(), *readout.parameters()]
    optimizer = torch.optim.Adam(params, lr=5e-2)
    losses = []
    for _ in range(8):
        X = cde.hermite_cubic_backward(t, x)
        sol = model(X, initial(x[:, 0]), saveat=[1.0])
        assert isinstance(sol, pyode.Solution) and sol.y.shape == (1, 16, H)
        loss = (readout(sol.y[-1]) - target).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # measured: 0.78 -> 0.37 in 8 steps
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.parametrize(
    "sensealg", [None, pyode.BacksolveAdjoint(seminorm=True), pyode.GaussAdjoint()], ids=lambda s: repr(s)
)
def test_neural_cde_differentiates_the_data(sensealg):
    """With x.requires_grad the path's tensors are params of the solve, so every sensealg (the
    adjoints included) gives x a gradient, equal to DirectAdjoint's to the tolerance (rtol 1e-9:
    measured 1.8e-8; bound 1e-6)."""
    t, x_data = _data()

    def run(sensealg):
        x = x_data.clone().requires_grad_()
        model = pyode.nn.NeuralCDE(Field(), sensealg=sensealg, rtol=1e-9, atol=1e-11)
        sol = model(cde.natural_cubic_spline(t, x), torch.tanh(x[:, 0] @ _V), saveat=t)
        sol.y.pow(2).sum().backward()
        assert all(p.grad is not None for p in model.parameters())
        return x.grad

    direct = run(None)
    assert direct.abs().sum() > 0
    if sensealg is not None:
        assert _relative(run(sensealg), direct) < 1e-6


def test_neural_cde_tspan():
    t, x = _data()
    model = pyode.nn.NeuralCDE(Field())
    sol = model(cde.linear(t, x), torch.zeros(B, H, dtype=F64), tspan=(0.1, 0.9))
    assert float(sol.t[0]) == 0.1 and float(sol.t[-1]) == 0.9
    with pytest.raises(ValueError, match="outside the path's knots"):
        model(cde.linear(t, x), torch.zeros(B, H, dtype=F64), tspan=(0.0, 1.5))


# ------------------------------------------------------------------------------------------------
# 9. Bad input


def test_wrong_shape_from_f_names_the_shapes():
    """Three channels here, so that none of the mistakes lines up with the state by chance."""
    t, _ = _data()
    X = cde.natural_cubic_spline(t, torch.randn(B, len(T_OBS), 3, dtype=F64))
    z0 = torch.zeros(B, H, dtype=F64)
    cases = [
        (lambda t, z: z, r"returned shape \(2, 2\) for a state of shape \(2, 2\).*\(2, 2, 3\)"),  # no channel dim
        (lambda t, z: z.unsqueeze(-1).expand(-1, -1, 2), r"\(2, 2, 2\).*\(\*state, 3\)"),  # wrong channels
        (lambda t, z: torch.zeros(3, H, 3, dtype=F64), r"returned shape \(3, 2, 3\) for a state of shape \(2, 2\)"),
        (lambda t, z: torch.zeros(B, H + 1, 3, dtype=F64), r"returned shape \(2, 3, 3\) for a state of shape \(2, 2\)"),
    ]
    for f, message in cases:
        with pytest.raises(ValueError, match=message):
            pyode.solve(pyode.CDEProblem(f, X, z0), pyode.Tsit5())


def test_wrong_shape_when_the_hidden_size_equals_the_channels():
    t, x = _data()  # C == H == 2
    X = cde.natural_cubic_spline(t, x)
    with pytest.raises(ValueError, match=r"\(\*state, 2\)|returned shape \(2, 2\)"):
        pyode.solve(pyode.CDEProblem(lambda t, z: z, X, torch.zeros(B, H, dtype=F64)), pyode.Tsit5())


def test_f_returning_a_tuple_for_a_tensor_state_is_refused():
    t, x = _data()
    X = cde.natural_cubic_spline(t, x)
    with pytest.raises((TypeError, ValueError)):
        pyode.solve(pyode.CDEProblem(lambda t, z: (z.unsqueeze(-1),), X, torch.zeros(B, H, dtype=F64)), pyode.Tsit5())


@pytest.mark.parametrize("tspan", [(0.0, 1.5), (-0.1, 1.0), (0.2, 1.0 + 1e-6)])
def test_tspan_outside_the_knots(tspan):
    t, x = _data()
    with pytest.raises(ValueError, match="outside the path's knots"):
        pyode.CDEProblem(Field(), cde.linear(t, x), torch.zeros(B, H, dtype=F64), tspan)


def test_tspan_defaults_to_the_knots_and_may_run_backward():
    t, x = _data()
    X = cde.natural_cubic_spline(t, x)
    assert pyode.CDEProblem(Field(), X, torch.zeros(B, H, dtype=F64)).tspan == (0.0, 1.0)
    prob = pyode.CDEProblem(Field(), X, torch.zeros(B, H, dtype=F64), (1.0, 0.3))
    assert pyode.solve(prob, pyode.Tsit5()).retcode is pyode.ReturnCode.Success


def test_dtype_mismatch_between_path_and_state():
    t, x = _data()
    with pytest.raises(TypeError, match=r"X\.to"):
        pyode.CDEProblem(Field(), cde.linear(t, x), torch.zeros(B, H, dtype=F32))
    # the fix the message suggests
    X = cde.linear(t, x).to(torch.zeros((), dtype=F32))
    prob = pyode.CDEProblem(Field(dtype=F32), X, torch.zeros(B, H, dtype=F32))
    assert pyode.solve(prob, pyode.Tsit5()).y.dtype == F32


def test_control_without_derivative_or_knots():
    z0 = torch.zeros(B, H, dtype=F64)

    class NoDerivative:
        knots = torch.tensor(T_OBS, dtype=F64)

        def evaluate(self, t):
            return torch.zeros(B, C, dtype=F64)

    class NoKnots(NoDerivative):
        knots = None

        def derivative(self, t):
            return torch.zeros(B, C, dtype=F64)

    with pytest.raises(TypeError, match="derivative"):
        pyode.CDEProblem(Field(), NoDerivative(), z0)
    with pytest.raises(TypeError, match="knots"):
        pyode.CDEProblem(Field(), NoKnots(), z0)
    with pytest.raises(TypeError, match="evaluate"):
        pyode.CDEProblem(Field(), torch.zeros(B, len(T_OBS), C, dtype=F64), z0)
    with pytest.raises(ValueError, match="derivative"):
        pyode.cdeint(object(), Field(), z0, torch.tensor(T_OBS, dtype=F64))


@pytest.mark.parametrize("value", [1, 0, "yes", torch.tensor(True)])
def test_stop_at_knots_must_be_a_bool(value):
    t, x = _data()
    with pytest.raises(TypeError, match="stop_at_knots"):
        pyode.CDEProblem(Field(), cde.linear(t, x), torch.zeros(B, H, dtype=F64), stop_at_knots=value)


def test_f_not_callable():
    t, x = _data()
    with pytest.raises(TypeError, match="callable"):
        pyode.CDEProblem("not a function", cde.linear(t, x), torch.zeros(B, H, dtype=F64))


# ------------------------------------------------------------------------------------------------
# 10. Grad modes, events, compile


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("sensealg", [pyode.DirectAdjoint(), pyode.BacksolveAdjoint()], ids=repr)
def test_grad_modes(mode, sensealg):
    """The solve under torch.no_grad / torch.inference_mode (the path built inside too, from data
    that requires grad) gives the grad-enabled values exactly, without a graph."""
    t, x_data = _data()
    x = x_data.clone().requires_grad_()
    func = Field()

    def run():
        X = cde.hermite_cubic_backward(t, x)
        return pyode.solve(pyode.CDEProblem(func, X, torch.tanh(x[:, 0] @ _V)), pyode.Tsit5(), sensealg=sensealg)

    with_grad = run()
    assert with_grad.y.requires_grad
    with torch.no_grad() if mode == "no_grad" else torch.inference_mode():
        sol = run()
    assert not sol.y.requires_grad
    assert torch.equal(sol.t, with_grad.t)
    torch.testing.assert_close(sol.y, with_grad.y.detach(), rtol=0, atol=0)


def test_events():
    """A terminal event on z[0, 0] crossing zero: the solve stops where the event-free solution's
    component is zero (located to ~1e-12 in t; bound 1e-8 on the value there), and the event
    time carries a gradient to the data."""
    t, x_data = _data()
    x = x_data.clone().requires_grad_()
    X = cde.hermite_cubic_backward(t, x)
    f, _ = _linear_cde(C)
    z0 = torch.tensor([[1.0, -0.5], [0.3, 0.8]], dtype=F64)
    event = pyode.Event(lambda t, z: z[0, 0])
    sol = pyode.solve(pyode.CDEProblem(f, X, z0), pyode.Tsit5(), rtol=1e-10, atol=1e-12, events=event)
    assert sol.retcode is pyode.ReturnCode.Terminated and sol.event_index == 0
    t_event = float(sol.event_time.detach())
    assert 0.0 < t_event < 1.0
    assert abs(float(sol.y[-1][0, 0].detach())) < 1e-8
    with torch.no_grad():
        free = pyode.solve(pyode.CDEProblem(f, X, z0), pyode.Tsit5(), rtol=1e-10, atol=1e-12)
        assert abs(float(free(t_event)[0, 0])) < 1e-8
        assert float((free.y[:, 0, 0] * free.y[0, 0, 0] < 0).nonzero()[0]) > 0  # it does cross
    sol.event_time.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_events_with_an_adjoint_on_a_linear_path():
    """Events with an adjoint solve in segments between events; the knots still are stops."""
    t, x_data = _data()
    x = x_data.clone().requires_grad_()
    f, _ = _linear_cde(C)
    z0 = torch.tensor([[1.0, -0.5], [0.3, 0.8]], dtype=F64)
    event = pyode.Event(lambda t, z: z[0, 0], terminal=False)
    for sensealg in (pyode.DirectAdjoint(), pyode.GaussAdjoint()):
        x.grad = None
        sol = pyode.solve(
            pyode.CDEProblem(f, cde.linear(t, x), z0),
            pyode.Tsit5(),
            saveat=[1.0],
            rtol=1e-10,
            atol=1e-12,
            events=event,
            sensealg=sensealg,
        )
        assert sol.retcode is pyode.ReturnCode.Success and len(sol.event_log) >= 1
        sol.y[-1].sum().backward()
        if isinstance(sensealg, pyode.DirectAdjoint):
            direct = x.grad.clone()
        else:
            assert _relative(x.grad, direct) < 1e-7


def _compiled_and_eager(path: str):
    t, x = _data()
    X = PATHS[path](t, x)
    M = _mixing()

    def f(t, z):
        return torch.tanh(torch.einsum("bh,hkc->bkc", z, M))

    prob = pyode.CDEProblem(f, X, torch.tensor([[0.4, -0.2], [0.1, 0.6]], dtype=F64))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = pyode.solve(prob, pyode.Tsit5(), compile=True, rtol=1e-8, atol=1e-10)
    eager = pyode.solve(prob, pyode.Tsit5(), rtol=1e-8, atol=1e-10)
    return compiled, eager, [str(w.message) for w in caught]


def test_compile_matches_eager():
    """compile=True on a natural spline: the steps and values of eager stepping, up to the
    compiled kernels' rounding, which the step-size control turns into step times that differ
    by ~2e-8 and values by the variation of the global error at rtol 1e-8 (measured 1.6e-7 over
    63 steps; bound 1e-6, far below what a wrong stage or slope would cost)."""
    compiled, eager, messages = _compiled_and_eager("natural")
    assert not any("could not be compiled" in m for m in messages), messages
    assert compiled.stats.naccept == eager.stats.naccept
    torch.testing.assert_close(compiled.t, eager.t, rtol=0, atol=1e-6)
    torch.testing.assert_close(compiled.y, eager.y, rtol=0, atol=1e-6)


def test_compile_actually_compiles_a_cde_step():
    """Read from the compiled-step cache, since its failures are cached and warned about once.
    The attempt costs ~1-3 s on 2 cores before it gives up."""
    from pyode.integrate import compiled as compiled_steps
    from pyode.terms import ControlledField

    _compiled_and_eager("hermite")
    failures = [e.failure for key, e in compiled_steps._cache.items() if key[1][0] is ControlledField and e.failure]
    assert not failures, failures


def test_problem_attributes():
    """as_ode is the lowered problem, with the path's grad-requiring tensors in params."""
    t, x_data = _data()
    x = x_data.clone().requires_grad_()
    func = Field()
    X = cde.natural_cubic_spline(t, x)
    prob = pyode.CDEProblem(func, X, torch.zeros(B, H, dtype=F64))
    assert prob.z0 is prob.y0 and prob.control is X
    assert len(prob.params) == len(list(func.parameters())) + 1 and prob.params[-1] is X.coeffs
    ode = prob.as_ode()
    assert isinstance(ode, pyode.ODEProblem) and ode.params == prob.params and ode.tspan == prob.tspan
    z = torch.randn(B, H, dtype=F64)
    s = torch.tensor(0.37, dtype=F64)
    expected = (func(s, z) @ X.derivative(s).unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(ode.f(s, z), expected, rtol=0, atol=1e-15)
    # data that does not require grad adds nothing
    assert len(pyode.CDEProblem(func, cde.linear(t, x_data), prob.y0).params) == len(list(func.parameters()))
    sol = pyode.solve(prob, pyode.Tsit5())
    assert sol.prob is prob
    assert math.isclose(float(sol.t[-1]), 1.0)


@pytest.mark.parametrize("adjoint", [False, True])
def test_cdeint_from_an_interior_knot_of_a_linear_path(adjoint):
    """cdeint over a span that starts on an interior knot of a linear path restarts there with
    the slope after the knot, as solve(CDEProblem) does (torchdiffeq drops jump_t on the span's
    ends). Tsit5 at rtol 1e-8 against DP8 at 1e-13: measured 3e-9; bound 2e-8, which the first
    step with the slope before the knot misses (1.1e-7 measured)."""
    t, x = _data()
    X = cde.linear(t, x)
    f = Field()
    z0 = torch.tensor([[0.4, -0.2], [0.1, 0.6]], dtype=F64)
    span = torch.tensor([0.25, 0.8], dtype=F64)  # both interior knots
    ref = pyode.solve(pyode.CDEProblem(f, X, z0, (0.25, 0.8)), pyode.DP8(), saveat=[0.25, 0.8], rtol=1e-13, atol=1e-13)
    out = pyode.cdeint(X, f, z0, span, adjoint=adjoint, method="tsit5", rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(out, ref.y.movedim(0, -2), rtol=0, atol=2e-8)
