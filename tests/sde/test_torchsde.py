"""pyode.compat.sdeint / sdeint_adjoint against torchsde 0.2.6 on the same Brownian path.

Fixed steps run on torchsde's grid with the same operations in the same order, so the outputs
agree to rounding (measured: bitwise equal for every method but "srk", 1e-15 there, where pyode
reads the Lévy area as H = U/h − ΔW/2 rather than U itself). The bounds (1e-12 in float64,
1e-5 relative in float32) leave room for a reordered reduction, nothing more.
"""

import warnings

import pytest
import torch
import torchsde

import pyode
from pyode.compat import sdeint, sdeint_adjoint

F64 = torch.float64
# Output times off torchsde's grid of dt = 0.05 (interpolated linearly) and on it (0.5 is reached
# by ten additions of 0.05, to rounding: the grid is torchsde's, not 0.05·k).
TS = [0.0, 0.13, 0.5, 0.71, 1.0]


class SDE(torch.nn.Module):
    """Small nonlinear drift and diffusion of each noise type; for diagonal noise g_i reads y_i
    only (as the Itô methods and the adjoint's Itô correction assume)."""

    def __init__(self, noise: str, sde_type: str, d: int = 3, m: int = 2, dtype: torch.dtype = F64):
        super().__init__()
        self.noise_type, self.sde_type, self.d = noise, sde_type, d
        self.m = {"diagonal": d, "scalar": 1}.get(noise, m)
        self.W = torch.nn.Parameter(torch.randn(d, d, dtype=dtype) / 2)
        self.a = torch.nn.Parameter(torch.randn(d, self.m, dtype=dtype))
        self.b = torch.nn.Parameter(torch.randn(d, self.m, dtype=dtype) / 2)

    def f(self, t, y):
        return torch.tanh(y @ self.W.T) * torch.cos(t)

    def g(self, t, y):
        if self.noise_type == "diagonal":
            return 0.5 * torch.sin(y * self.a[:, 0] + self.b[:, 0])
        if self.noise_type == "additive":
            return (0.5 + 0.3 * torch.sin(t)) * torch.tanh(self.b).expand(y.shape[0], self.d, self.m)
        return 0.5 * torch.sin(y.unsqueeze(-1) * self.a + self.b + y.sum(-1, keepdim=True).unsqueeze(-1) / 3)


class GradientScalarSDE(torch.nn.Module):
    """Scalar noise with g = ∇φ, φ(y) = log cosh(a·y) + ½ yᵀSy: a symmetric ∂g/∂y, the case where
    torchsde's Milstein term (∂g/∂y)ᵀg equals the scheme's (∂g/∂y)g (see test_scalar_milstein_*)."""

    noise_type, sde_type, m = "scalar", "ito", 1

    def __init__(self, dtype: torch.dtype = F64):
        super().__init__()
        self.a = torch.nn.Parameter(torch.randn(3, dtype=dtype))
        S = torch.randn(3, 3, dtype=dtype) / 3
        self.S = torch.nn.Parameter(S + S.T)

    def f(self, t, y):
        return -0.3 * y + torch.sin(t)

    def g(self, t, y):
        return (torch.tanh(y @ self.a).unsqueeze(-1) * self.a + y @ self.S).unsqueeze(-1)


def brownian(sde, batch, dtype=F64, levy=False, t1=1.0):
    area = "space-time" if levy else "none"
    return torchsde.BrownianInterval(
        t0=0.0, t1=t1, size=(batch, sde.m), dtype=dtype, levy_area_approximation=area, entropy=1234
    )


def close(dtype):
    return dict(rtol=1e-12, atol=1e-12) if dtype == F64 else dict(rtol=1e-5, atol=1e-5)


def weighted_sum(ys):
    return (ys * torch.linspace(-1, 1, ys.numel(), dtype=ys.dtype).reshape(ys.shape)).sum()


def gradients(fn, sde, y0, **kwargs):
    """dL/dy0 and dL/dθ, flattened, of a fixed weighting L of every output."""
    y0 = y0.detach().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchsde's about ts off the grid of dt for reversible_heun
        ys = fn(sde, y0, **kwargs)
    grads = torch.autograd.grad(weighted_sum(ys), [y0, *sde.parameters()], allow_unused=True)
    return torch.cat(
        [g.reshape(-1) if g is not None else p.new_zeros(p.numel()) for g, p in zip(grads, [y0, *sde.parameters()])]
    )


# ---- forward solves: the same numbers as torchsde --------------------------------------------------

FIXED_CASES = [
    ("diagonal", "ito", "euler"),
    ("general", "ito", "euler"),
    ("scalar", "ito", "euler"),
    ("additive", "ito", "euler"),
    ("diagonal", "ito", "milstein"),
    ("additive", "ito", "srk"),
    ("diagonal", "stratonovich", "milstein"),
    ("diagonal", "stratonovich", "euler_heun"),
    ("general", "stratonovich", "euler_heun"),
    ("general", "stratonovich", "heun"),
    ("diagonal", "stratonovich", "midpoint"),
    ("general", "stratonovich", "midpoint"),
    ("general", "stratonovich", "reversible_heun"),
    ("diagonal", "stratonovich", "reversible_heun"),
]


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("noise,sde_type,method", FIXED_CASES)
def test_fixed_steps_match_torchsde(noise, sde_type, method, dtype):
    sde = SDE(noise, sde_type, dtype=dtype)
    y0 = torch.randn(4, 3, dtype=dtype)
    ts = torch.tensor(TS, dtype=dtype)
    bm = brownian(sde, 4, dtype, levy=method == "srk")
    expected = torchsde.sdeint(sde, y0, ts, bm=bm, method=method, dt=0.05)
    got = sdeint(sde, y0, ts, bm=bm, method=method, dt=0.05)
    assert got.shape == (5, 4, 3) and got.dtype == dtype
    torch.testing.assert_close(got, expected, **close(dtype))


@pytest.mark.parametrize("noise,sde_type,method", [c for c in FIXED_CASES if c[2] != "srk"][::2])
def test_sdeint_gradients_match_torchsde(noise, sde_type, method):
    """Autograd through the same operations: torchsde's gradients to rounding (measured ≤ 5e-16)."""
    sde = SDE(noise, sde_type)
    y0 = torch.randn(4, 3, dtype=F64)
    bm = brownian(sde, 4)
    kwargs = dict(ts=torch.tensor(TS, dtype=F64), bm=bm, method=method, dt=0.05)
    torch.testing.assert_close(
        gradients(sdeint, sde, y0, **kwargs), gradients(torchsde.sdeint, sde, y0, **kwargs), rtol=1e-12, atol=1e-12
    )


def test_step_grid_float32_accumulates_like_torchsde():
    """torchsde adds dt in ts's dtype: in float32, 0.1 + 0.1 + ... drifts off 0.1·k, and the grid
    must drift with it for the Brownian increments (queried on the grid) to be the same."""
    sde = SDE("diagonal", "stratonovich", dtype=torch.float32)
    y0 = torch.randn(2, 3, dtype=torch.float32)
    ts = torch.tensor([0.0, 0.3, 0.7, 2.9, 3.0], dtype=torch.float32)
    bm = brownian(sde, 2, torch.float32, t1=3.0)
    expected = torchsde.sdeint(sde, y0, ts, bm=bm, method="midpoint", dt=0.1)
    torch.testing.assert_close(sdeint(sde, y0, ts, bm=bm, method="midpoint", dt=0.1), expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    "noise,sde_type,torchsde_method",
    [("general", "ito", "euler"), ("additive", "ito", "srk"), ("diagonal", "stratonovich", "midpoint")],
)
def test_default_method_is_torchsdes(noise, sde_type, torchsde_method):
    sde = SDE(noise, sde_type)
    y0 = torch.randn(4, 3, dtype=F64)
    ts = torch.tensor(TS, dtype=F64)
    bm = brownian(sde, 4, levy=True)
    expected = torchsde.sdeint(sde, y0, ts, bm=bm, method=torchsde_method, dt=0.05)
    torch.testing.assert_close(torchsde.sdeint(sde, y0, ts, bm=bm, dt=0.05), expected, rtol=0, atol=0)
    torch.testing.assert_close(sdeint(sde, y0, ts, bm=bm, dt=0.05), expected, rtol=1e-12, atol=1e-12)


def test_default_for_ito_diagonal_is_milstein():
    """torchsde's default there is SRI2 ("srk"), which pyode lacks: Milstein, of the same strong order."""
    sde = SDE("diagonal", "ito")
    y0 = torch.randn(4, 3, dtype=F64)
    ts = torch.tensor(TS, dtype=F64)
    bm = brownian(sde, 4)
    expected = torchsde.sdeint(sde, y0, ts, bm=bm, method="milstein", dt=0.05)
    torch.testing.assert_close(sdeint(sde, y0, ts, bm=bm, dt=0.05), expected, rtol=1e-12, atol=1e-12)


def test_scalar_milstein_matches_torchsde_for_symmetric_jacobian():
    sde = GradientScalarSDE()
    y0 = torch.randn(4, 3, dtype=F64)
    ts = torch.tensor(TS, dtype=F64)
    bm = brownian(sde, 4)
    expected = torchsde.sdeint(sde, y0, ts, bm=bm, method="milstein", dt=0.05)
    torch.testing.assert_close(sdeint(sde, y0, ts, bm=bm, method="milstein", dt=0.05), expected, rtol=1e-12, atol=1e-12)


def test_scalar_milstein_strong_order_where_torchsde_differs():
    """For scalar noise torchsde's Milstein term is (∂g/∂y)ᵀg·(ΔW² − h)/2 (a VJP); the scheme's is
    (∂g/∂y)g (Kloeden & Platen §10.3), which pyode computes. With a non-symmetric ∂g/∂y torchsde's
    is then only of strong order 0.5: on 100 paths at h = 1/32, against Euler at h = 2⁻¹¹, pyode's
    mean error is measured 15x smaller (0.0014 against 0.021)."""
    A = torch.tensor([[0.0, 1.0], [-0.5, 0.2]], dtype=F64)

    class Rotating(torch.nn.Module):
        noise_type, sde_type, m = "scalar", "ito", 1

        def f(self, t, y):
            return -0.1 * y

        def g(self, t, y):
            return (0.6 * torch.sin(y @ A.T)).unsqueeze(-1)

    sde = Rotating()
    y0 = torch.full((100, 2), 0.5, dtype=F64)
    ts = torch.tensor([0.0, 1.0], dtype=F64)
    bm = brownian(sde, 100)
    with torch.no_grad():
        reference = sdeint(sde, y0, ts, bm=bm, method="euler", dt=2**-11)[-1]
        ours = sdeint(sde, y0, ts, bm=bm, method="milstein", dt=2**-5)[-1]
        theirs = torchsde.sdeint(sde, y0, ts, bm=bm, method="milstein", dt=2**-5)[-1]
    error, torchsde_error = ((y - reference).norm(dim=1).mean() for y in (ours, theirs))
    assert error < 0.2 * torchsde_error


def test_names_and_f_and_g():
    base = SDE("general", "stratonovich")
    y0 = torch.randn(4, 3, dtype=F64)
    ts = torch.tensor(TS, dtype=F64)
    bm = brownian(base, 4)
    expected = torchsde.sdeint(base, y0, ts, bm=bm, method="heun", dt=0.05)

    class Renamed:
        noise_type, sde_type = "general", "stratonovich"
        drift, diffusion = base.f, base.g

    class Joint:
        noise_type, sde_type = "general", "stratonovich"

        def f_and_g(self, t, y):
            return base.f(t, y), base.g(t, y)

    got = sdeint(Renamed(), y0, ts, bm=bm, method="heun", dt=0.05, names={"drift": "drift", "diffusion": "diffusion"})
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sdeint(Joint(), y0, ts, bm=bm, method="heun", dt=0.05), expected, rtol=1e-12, atol=1e-12)


def test_default_brownian_and_list_ts():
    sde = SDE("diagonal", "stratonovich")
    y0 = torch.randn(4, 3, dtype=F64)
    ys = sdeint(sde, y0, TS, dt=0.05)
    assert ys.shape == (5, 4, 3) and bool(ys.isfinite().all())
    torch.testing.assert_close(ys[0], y0, rtol=0, atol=0)
    torch.testing.assert_close(sdeint(sde, y0, [0.5]), y0.unsqueeze(0), rtol=0, atol=0)


# ---- gradients by the adjoints ----------------------------------------------------------------------


def test_reversible_heun_adjoint_is_the_exact_gradient():
    """ReversibleAdjoint differentiates the discrete forward solve exactly, also with ts off the
    grid of dt: torchsde's backprop through its own solver to 1e-10 (measured 5e-16 relative;
    torchsde's own adjoint is off by 9e-9 here, as it warns)."""
    sde = SDE("general", "stratonovich")
    y0 = torch.randn(4, 3, dtype=F64)
    kwargs = dict(ts=torch.tensor(TS, dtype=F64), bm=brownian(sde, 4), method="reversible_heun", dt=0.01)
    expected = gradients(torchsde.sdeint, sde, y0, **kwargs)
    got = gradients(sdeint_adjoint, sde, y0, **kwargs)
    assert float((got - expected).norm() / expected.norm()) < 1e-10


# (noise, sde_type, method, adjoint_method, bound against backprop, bound against torchsde's adjoint),
# relative to the gradient's norm, at dt = 0.01. Both adjoints solve the adjoint SDE backward on
# the forward path; backprop differentiates the forward discretization, so the adjoints differ
# from it by the backward discretization error: O(dt) for these commutative (diagonal) noises,
# O(√dt) for general noise (test_stochastic_adjoint_converges checks the rate). Measured
# (against backprop / against torchsde's adjoint), bounds about 3x those:
# - Stratonovich midpoint: 6.1e-4 / 2.3e-7: the same method on the same Stratonovich adjoint SDE;
#   they differ only where the backward solve restarts (pyode: at the grid points around each
#   output time, torchsde: at the output times);
# - Stratonovich euler_heun: 1.3e-2 / 9.4e-5, likewise;
# - Itô milstein: 1.3e-2 / 6.9e-4: pyode's EulerHeun on the Stratonovich form of the adjoint SDE
#   against torchsde's Milstein on its Itô form, both first order;
# - Itô euler, general noise: 2.5e-2 / 4.0e-2 (torchsde's own adjoint is 5.8e-2 from backprop).
ADJOINT_CASES = [
    ("diagonal", "stratonovich", "midpoint", None, 2e-3, 1e-6),
    ("diagonal", "stratonovich", "euler_heun", "euler_heun", 4e-2, 3e-4),
    ("diagonal", "ito", "milstein", None, 4e-2, 2e-3),
    ("general", "ito", "euler", None, 0.1, 0.15),
]


@pytest.mark.parametrize("noise,sde_type,method,adjoint_method,vs_backprop,vs_torchsde", ADJOINT_CASES)
def test_stochastic_adjoint_against_torchsde(noise, sde_type, method, adjoint_method, vs_backprop, vs_torchsde):
    sde = SDE(noise, sde_type)
    y0 = torch.randn(4, 3, dtype=F64)
    kwargs = dict(ts=torch.tensor(TS, dtype=F64), bm=brownian(sde, 4), method=method, dt=0.01)
    backprop = gradients(torchsde.sdeint, sde, y0, **kwargs)
    theirs = gradients(torchsde.sdeint_adjoint, sde, y0, adjoint_method=adjoint_method, **kwargs)
    ours = gradients(sdeint_adjoint, sde, y0, adjoint_method=adjoint_method, **kwargs)
    scale = backprop.norm()
    assert float((ours - backprop).norm() / scale) < vs_backprop
    assert float((ours - theirs).norm() / scale) < vs_torchsde


def test_stochastic_adjoint_converges():
    """Itô Milstein with diagonal noise, whose adjoint is solved by EulerHeun on the Stratonovich
    form: first order, so a quarter of dt divides the distance to backprop by ~4 (measured 4.0)."""
    sde = SDE("diagonal", "ito")
    y0 = torch.randn(4, 3, dtype=F64)
    errors = []
    for dt in (0.01, 0.0025):
        kwargs = dict(ts=torch.tensor(TS, dtype=F64), bm=brownian(sde, 4), method="milstein", dt=dt)
        backprop = gradients(sdeint, sde, y0, **kwargs)
        errors.append(float((gradients(sdeint_adjoint, sde, y0, **kwargs) - backprop).norm() / backprop.norm()))
    assert errors[1] < errors[0] / 3


def test_adjoint_params_are_the_only_ones_differentiated():
    sde = SDE("diagonal", "stratonovich")
    y0 = torch.randn(4, 3, dtype=F64, requires_grad=True)
    ys = sdeint_adjoint(sde, y0, torch.tensor(TS, dtype=F64), bm=brownian(sde, 4), dt=0.05, adjoint_params=(sde.a,))
    grads = torch.autograd.grad(weighted_sum(ys), [y0, sde.a, sde.W], allow_unused=True)
    assert grads[0] is not None and grads[1] is not None and grads[2] is None


# ---- adaptive stepping ------------------------------------------------------------------------------


@pytest.mark.parametrize("sde_type,method", [("stratonovich", "midpoint"), ("ito", "milstein")])
def test_adaptive_matches_torchsde_loosely(sde_type, method):
    """Different error estimates (pyode's embedded ones, torchsde's step doubling) and controllers
    take different steps; both approximate the solution on the same path to their tolerance.
    They are compared at the last time, where torchsde's steps end exactly too (between output
    times torchsde interpolates linearly across its adaptive steps, an error of order g·√h,
    measured up to 0.1). Against a fixed-step solve at h = 5e-4 (error ~5e-4 at strong order 1),
    with rtol = atol = τ = 1e-3 the global errors are measured 5.1e-3 (pyode) and 3.4e-3
    (torchsde) for midpoint, 1.6e-2 and 9.3e-3 for Milstein: a local error test at τ gives a
    pathwise global error of 3–16τ here. The bounds are 50τ (twice that between the two)."""
    sde = SDE("diagonal", sde_type)
    y0 = torch.randn(4, 3, dtype=F64)
    ts = torch.tensor([0.0, 0.3, 0.77, 1.0], dtype=F64)
    bm = brownian(sde, 4)
    options = dict(bm=bm, method=method, dt=0.01, adaptive=True, rtol=1e-3, atol=1e-3)
    with torch.no_grad():
        reference = sdeint(sde, y0, ts, bm=bm, method=method, dt=5e-4)
        ours = sdeint(sde, y0, ts, **options)
        theirs = torchsde.sdeint(sde, y0, ts, **options)
    bound = 50 * 1e-3
    assert float((ours - reference).abs().max()) < bound  # pyode lands on every output time
    assert float((theirs[-1] - reference[-1]).abs().max()) < bound
    assert float((ours[-1] - theirs[-1]).abs().max()) < 2 * bound


def test_adaptive_adjoint_runs():
    """The adaptive backward solve (rtol = atol = 1e-3) against backprop through fixed steps of
    0.01: measured 1.8e-3 relative (each has its own discretization error); bound 10x."""
    sde = SDE("diagonal", "stratonovich")
    y0 = torch.randn(4, 3, dtype=F64)
    kwargs = dict(ts=torch.tensor(TS, dtype=F64), bm=brownian(sde, 4), method="midpoint", dt=0.01)
    backprop = gradients(sdeint, sde, y0, **kwargs)
    adjoint = gradients(sdeint_adjoint, sde, y0, adaptive=True, rtol=1e-3, atol=1e-3, **kwargs)
    assert float((adjoint - backprop).norm() / backprop.norm()) < 0.02


# ---- refusals ---------------------------------------------------------------------------------------


def _args(**overrides):
    sde = SDE("diagonal", "ito")
    args = dict(sde=sde, y0=torch.randn(2, 3, dtype=F64), ts=torch.tensor([0.0, 0.5], dtype=F64), dt=0.1)
    args.update(overrides)
    return args


@pytest.mark.parametrize(
    "overrides,error,match",
    [
        (dict(method="log_ode"), ValueError, "method='log_ode' is not available.*'euler'"),
        (dict(method="adjoint_reversible_heun"), ValueError, "adjoint_method of sdeint_adjoint"),
        (dict(method="rk4"), ValueError, "method='rk4' is not available"),
        (dict(method="midpoint"), ValueError, "'midpoint' is for Stratonovich SDEs"),
        (dict(method="srk"), ValueError, "additive noise only.*'milstein'"),
        (dict(logqp=True), ValueError, "logqp"),
        (dict(extra=True), ValueError, "extra=True"),
        (dict(extra_solver_state=(torch.zeros(1),)), ValueError, "extra_solver_state"),
        (dict(y0=torch.zeros(3, dtype=F64)), ValueError, "y0 must be a 2-D tensor"),
        (dict(y0=torch.zeros(1, 2, 3, dtype=F64)), ValueError, "y0 must be a 2-D tensor"),
        (dict(ts=torch.tensor([0.0, 0.5, 0.4], dtype=F64)), ValueError, "ts must be strictly increasing"),
        (dict(ts=torch.tensor([[0.0, 0.5]], dtype=F64)), ValueError, "ts must be a 1-D tensor"),
        (dict(ts=torch.tensor([0.0, 0.5], dtype=F64, requires_grad=True)), ValueError, "ts must not require"),
        (dict(dt=0.0), ValueError, "dt must be positive"),
        (dict(method="euler", adaptive=True), ValueError, "no error estimate"),
        (dict(method="milstein", options={"grad_free": True}), ValueError, "grad_free"),
        (dict(options={"levy_area_approximation": "davie"}), ValueError, "space-time Lévy area"),
        (dict(options={"step_size": 0.1}), ValueError, r"options \['step_size'\] are not supported"),
    ],
)
def test_sdeint_refuses(overrides, error, match):
    with pytest.raises(error, match=match):
        sdeint(**_args(**overrides))


def test_sde_attributes_are_checked():
    class NoNoise:
        sde_type = "ito"

        def f(self, t, y):
            return y

        def g(self, t, y):
            return y

    with pytest.raises(ValueError, match="no attribute noise_type"):
        sdeint(**_args(sde=NoNoise()))
    bad = NoNoise()
    bad.noise_type, bad.sde_type = "diagonal", "ito-ish"
    with pytest.raises(ValueError, match=r"sde\.sde_type must be one of"):
        sdeint(**_args(sde=bad))

    class ProductOnly:
        noise_type, sde_type = "diagonal", "stratonovich"

        def f(self, t, y):
            return y

        def g_prod(self, t, y, v):
            return y * v

    with pytest.raises(ValueError, match=r"diffusion g\(t, y\).*defines g_prod"):
        sdeint(**_args(sde=ProductOnly()))


def test_srk_needs_levy_area_on_given_bm():
    sde = SDE("additive", "ito")
    with pytest.raises(ValueError, match="levy_area_approximation='space-time'"):
        sdeint(**_args(sde=sde, method="srk", bm=brownian(sde, 2)))


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(adjoint_method="milstein"), "not available.*'euler_heun'.*correspond"),
        (dict(adjoint_method="adjoint_reversible_heun"), "runs method='reversible_heun' backward"),
        (dict(adjoint_adaptive=True), "adjoint_adaptive=True needs adaptive=True"),
        (dict(adjoint_options={"foo": 1}), r"adjoint_options \['foo'\] are not supported"),
    ],
)
def test_sdeint_adjoint_refuses(overrides, match):
    with pytest.raises(ValueError, match=match):
        sdeint_adjoint(**_args(**overrides))


def test_sdeint_adjoint_needs_a_module_or_params():
    module = SDE("diagonal", "ito")

    class Plain:
        noise_type, sde_type = "diagonal", "ito"
        f, g = module.f, module.g

    with pytest.raises(ValueError, match=r"sde must be an nn\.Module"):
        sdeint_adjoint(**_args(sde=Plain()))
    ys = sdeint_adjoint(**_args(sde=Plain(), adjoint_params=()))
    assert ys.shape == (2, 2, 3)


def test_compat_exports():
    assert pyode.compat.sdeint is sdeint and pyode.compat.sdeint_adjoint is sdeint_adjoint
