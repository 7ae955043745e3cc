"""torchdiffeq's options in pyode.odeint / odeint_adjoint, side by side with torchdiffeq itself.

Fixed grids with the same method and grid do the same arithmetic as torchdiffeq (pyode holds
times in float64 and hands f t in y's dtype, torchdiffeq computes t in t's dtype), so they agree
to rounding. Adaptive solves agree to rounding only where the options pin every step (min_step,
max_step); otherwise pyode's PI controller and torchdiffeq's I controller take different steps.
"""

from __future__ import annotations

import itertools
import sys
import warnings

import pytest
import torch

import pyode
from pyode.compat import FIXED_GRID
from pyode.compat._options import _translate

from .problems import VAN_DER_POL

torchdiffeq = pytest.importorskip("torchdiffeq", reason="torchdiffeq is in the test extra; the comparisons need it")

DTYPES = [torch.float64, torch.float32]
# Same method, same grid: float64 agrees to rounding. In float32 every step can round
# differently (pyode's h is a float64 difference of grid times, torchdiffeq's a float32 one):
# ~1e-7 per step, 40 steps here.
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-5)}


def _y0(dtype=torch.float64):
    return torch.tensor(VAN_DER_POL.y0, dtype=dtype)


def _f(t, y):
    return VAN_DER_POL.f(t, y)


def _both(*args, **kwargs):
    return pyode.odeint(*args, **kwargs), torchdiffeq.odeint(*args, **kwargs)


# Output times at thirds, between the grid points of step_size=0.05.
T_OFF_GRID = torch.linspace(0, 2, 7, dtype=torch.float64)


# --- fixed grids: step_size, grid_constructor, interp ----------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interp", ["linear", "cubic"])
@pytest.mark.parametrize("method", ["euler", "midpoint", "heun2"])
def test_fixed_grid_interpolation_agrees(method, interp, dtype):
    ts = T_OFF_GRID.to(dtype)
    options = dict(step_size=0.05, interp=interp)
    ours, theirs = _both(_f, _y0(dtype), ts, method=method, options=options)
    assert ours.dtype == theirs.dtype == dtype
    torch.testing.assert_close(ours, theirs, **TOL[dtype])
    # The two interpolations differ by far more than the tolerance: the comparison tells them apart.
    other = pyode.odeint(_f, _y0(dtype), ts, method=method, options=dict(step_size=0.05, interp="cubic"))
    if interp == "linear":
        assert (other - ours).abs().max() > 1e-4


def test_linear_is_the_default_and_exact_on_the_grid():
    ts = T_OFF_GRID
    default = pyode.odeint(_f, _y0(), ts, method="euler", options=dict(step_size=0.05))
    linear = pyode.odeint(_f, _y0(), ts, method="euler", options=dict(step_size=0.05, interp="linear"))
    assert torch.equal(default, linear)
    # The grid's own states: output times on the grid need no interpolation.
    grid = torch.arange(41, dtype=torch.float64) * 0.05
    on_grid = pyode.odeint(_f, _y0(), grid, method="euler")
    y_third = pyode.odeint(_f, _y0(), ts[:3], method="euler", options=dict(step_size=0.05))[1]
    i = 6  # 1/3 lies in (0.30, 0.35]
    weight = (ts[1] - grid[i]) / (grid[i + 1] - grid[i])
    torch.testing.assert_close(y_third, on_grid[i] + weight * (on_grid[i + 1] - on_grid[i]), rtol=1e-14, atol=1e-14)


def test_rk4_interpolates_its_own_grid_linearly():
    # pyode's rk4 is the classical one and torchdiffeq's the 3/8 rule: compare the interpolation only.
    grid = torch.arange(41, dtype=torch.float64) * 0.05
    on_grid = pyode.odeint(_f, _y0(), grid, method="rk4")
    ours = pyode.odeint(_f, _y0(), T_OFF_GRID, method="rk4", options=dict(step_size=0.05))
    theirs = torchdiffeq.odeint(_f, _y0(), T_OFF_GRID, method="rk4", options=dict(step_size=0.05))
    torch.testing.assert_close(ours[-1], on_grid[-1], rtol=1e-14, atol=1e-14)
    i = 13  # 2/3 lies in (0.65, 0.70]
    weight = (T_OFF_GRID[2] - grid[i]) / (grid[i + 1] - grid[i])
    torch.testing.assert_close(ours[2], on_grid[i] + weight * (on_grid[i + 1] - on_grid[i]), rtol=1e-14, atol=1e-14)
    # Two fourth-order methods with h = 0.05: both within ~h⁴ of each other.
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_step_size_backward_in_time(dtype):
    ts = T_OFF_GRID.flip(0).to(dtype)
    # 0.07 does not divide 2: torchdiffeq's last step is shorter, and so is ours.
    ours, theirs = _both(_f, _y0(dtype), ts, method="euler", options=dict(step_size=0.07))
    torch.testing.assert_close(ours, theirs, **TOL[dtype])


@pytest.mark.parametrize("decreasing", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_grid_constructor(dtype, decreasing):
    ts = T_OFF_GRID.to(dtype)
    ts = ts.flip(0) if decreasing else ts
    seen = []

    def grid_constructor(func, y0, t):
        seen.append((func, y0, t))
        # Uneven spacing, denser near t[0].
        s = torch.linspace(0, 1, 25, dtype=t.dtype) ** 2
        return t[0] + (t[-1] - t[0]) * s

    options = dict(grid_constructor=grid_constructor)
    ours, theirs = _both(_f, _y0(dtype), ts, method="midpoint", options=options)
    torch.testing.assert_close(ours, theirs, **TOL[dtype])
    # pyode calls it once, with the user's own func, y0 and t.
    assert seen[0][0] is _f and torch.equal(seen[0][1], _y0(dtype)) and torch.equal(seen[0][2], ts)


def test_tuple_state_on_a_fixed_grid():
    def f(t, y):
        x, v = y
        return v, -x - 0.1 * v

    y0 = (torch.tensor([1.0, 0.5], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64))
    ours, theirs = _both(f, y0, T_OFF_GRID, method="midpoint", options=dict(step_size=0.03))
    assert isinstance(ours, tuple) and len(ours) == 2
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@pytest.mark.parametrize("interp", ["linear", "cubic"])
@pytest.mark.parametrize("method", ["euler", "heun2"])
def test_fixed_grid_gradients_agree(method, interp):
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()
    y0 = torch.randn(3, 2, dtype=torch.float64)
    ts = torch.linspace(0, 1, 4, dtype=torch.float64)

    def gradients(odeint):
        net.zero_grad()
        y = y0.clone().requires_grad_()
        out = odeint(lambda t, y: net(y), y, ts, method=method, options=dict(step_size=0.1, interp=interp))
        out.pow(2).sum().backward()
        return torch.cat([p.grad.reshape(-1) for p in net.parameters()] + [y.grad.reshape(-1)])

    # Both differentiate the same discrete computation.
    torch.testing.assert_close(gradients(pyode.odeint), gradients(torchdiffeq.odeint), rtol=1e-12, atol=1e-12)


def test_output_time_gradients_between_grid_points():
    def time_gradient(odeint):
        ts = T_OFF_GRID.clone().requires_grad_()
        odeint(_f, _y0(), ts, method="euler", options=dict(step_size=0.05)).sum().backward()
        return ts.grad

    ours, theirs = time_gradient(pyode.odeint), time_gradient(torchdiffeq.odeint)
    # Between grid points (1/3, 2/3, 4/3, 5/3) both differentiate the linear interpolant.
    between = [1, 2, 4, 5]
    torch.testing.assert_close(ours[between], theirs[between], rtol=1e-12, atol=1e-12)
    # On grid points (0, 1, 2) pyode gives the flow's derivative f(y(t)), summed over y's
    # components here; torchdiffeq gives 0 at 1 (its output snaps to the grid point) and
    # differentiates its grid, which moves with t[0] and t[-1], at the ends.
    ys = pyode.odeint(_f, _y0(), T_OFF_GRID, method="euler", options=dict(step_size=0.05))
    torch.testing.assert_close(ours[3], _f(T_OFF_GRID[3], ys[3]).sum(), rtol=1e-12, atol=1e-12)
    assert theirs[3] == 0


def test_fixed_grid_adjoint_agrees_when_outputs_need_no_linear_interpolation():
    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()

        def forward(self, t, y):
            return self.net(y)

    field = Field()
    y0 = torch.randn(3, 2, dtype=torch.float64)
    ts = torch.linspace(0, 1, 4, dtype=torch.float64)

    def gradients(odeint_adjoint):
        field.zero_grad()
        odeint_adjoint(field, y0, ts, method="midpoint", options=dict(step_size=0.1, interp="cubic")).pow(
            2
        ).sum().backward()
        return torch.cat([p.grad.reshape(-1) for p in field.parameters()])

    # Both solve the adjoint backward over each output interval on a grid of step_size from its end.
    torch.testing.assert_close(
        gradients(pyode.odeint_adjoint), gradients(torchdiffeq.odeint_adjoint), rtol=1e-12, atol=1e-12
    )


def test_fixed_grids_have_no_step_limit():
    # torchdiffeq steps any grid to its end; solve's max_steps must not stop a fine one.
    ts = torch.tensor([0.0, 10.0], dtype=torch.float64)
    plan = _translate(_f, _y0(), ts, 1e-7, 1e-9, "euler", dict(step_size=1e-4), "odeint")
    assert plan.kwargs["max_steps"] >= 100_001
    assert len(plan.kwargs["tstops"]) == 99_999


@pytest.mark.parametrize(
    "options, error, match",
    [
        (dict(interp="quadratic"), ValueError, "option 'interp' must be 'linear'"),
        (dict(step_size=0.1, grid_constructor=lambda f, y, t: t), ValueError, "'step_size' and 'grid_constructor'"),
        (dict(step_size=-0.1), ValueError, "option 'step_size' must be > 0"),
        (dict(step_size=float("nan")), ValueError, "option 'step_size'"),
        (dict(step_size="0.1"), TypeError, "option 'step_size' must be a number"),
        (dict(grid_constructor=[0.0, 1.0]), TypeError, "option 'grid_constructor' must be callable"),
        (dict(grid_constructor=lambda f, y, t: t[1:]), ValueError, r"grid must start at t\[0\]"),
        (dict(grid_constructor=lambda f, y, t: t[:-1]), ValueError, r"and end at t\[-1\]"),
        (dict(grid_constructor=lambda f, y, t: t[[0, 2, 1, 3]]), ValueError, "strictly increasing"),
        (dict(grid_constructor=lambda f, y, t: t[:1]), ValueError, "1-D tensor of at least two times"),
        (dict(max_num_steps=0), ValueError, "option 'max_num_steps'"),
        (dict(first_step=0.1), ValueError, r"option\(s\) \['first_step'\] are not supported for method 'euler'"),
    ],
)
def test_bad_fixed_grid_options(options, error, match):
    with pytest.raises(error, match=match):
        pyode.odeint(_f, _y0(), torch.linspace(0, 1, 4, dtype=torch.float64), method="euler", options=options)


# --- adaptive methods: min_step, max_step, step_t, factors --------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_min_step_clamps_and_accepts(dtype):
    ts = torch.linspace(0, 1, 11, dtype=dtype)
    # rtol 1e-12 wants steps far below 0.02; min_step forces 0.02 and accepts it: both libraries
    # then take the same 50 dopri5 steps.
    options = dict(min_step=0.02, first_step=0.02)
    ours, theirs = _both(_f, _y0(dtype), ts, rtol=1e-12, atol=1e-12, options=options)
    torch.testing.assert_close(ours, theirs, **TOL[dtype])
    # pyode's own dtmin means something else: the solve fails when a rejected step falls below it.
    prob = pyode.ODEProblem(_f, _y0(dtype), (0.0, 1.0))
    with pytest.raises(pyode.SolveError, match="DtLessThanMin"):
        pyode.solve(prob, pyode.DP5(), rtol=1e-12, atol=1e-12, dt=0.02, dtmin=0.02)


def test_min_step_with_an_automatic_first_step():
    calls = []

    def f(t, y):
        calls.append(float(t))
        return _f(t, y)

    ys = pyode.odeint(f, _y0(), torch.linspace(0, 1, 3, dtype=torch.float64), rtol=1e-12, atol=1e-12,
                      options=dict(min_step=0.05))  # fmt: skip
    assert torch.isfinite(ys).all()
    # After the first step (chosen as usual, and accepted below min_step) every step is 0.05:
    # 7 evaluations a step at most, FSAL aside.
    assert len(calls) < 7 * (1 / 0.05 + 3)


def test_min_step_still_stops_on_nan():
    def f(t, y):
        return y * torch.where(t > 0.5, torch.tensor(float("nan"), dtype=y.dtype), torch.tensor(1.0, dtype=y.dtype))

    with pytest.raises(pyode.SolveError, match="Unstable"):
        pyode.odeint(f, _y0(), torch.linspace(0, 1, 3, dtype=torch.float64), options=dict(min_step=1e-3))


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_step(dtype):
    ts = torch.linspace(0, 1, 6, dtype=dtype)
    # At rtol 1e-3 every step wants to exceed 0.01: both take 100 steps of max_step exactly.
    ours, theirs = _both(_f, _y0(dtype), ts, rtol=1e-3, atol=1e-5, options=dict(max_step=0.01))
    torch.testing.assert_close(ours, theirs, **TOL[dtype])
    starts = []

    def f(t, y):
        starts.append(float(t))
        return _f(t, y)

    pyode.odeint(f, _y0(), torch.linspace(0, 5, 3, dtype=torch.float64), rtol=1e-3, options=dict(max_step=0.3))
    # dopri5's stages lie within its step: the evaluations never jump more than a step.
    assert max(b - a for a, b in itertools.pairwise(starts)) <= 0.3 + 1e-12


def test_step_t_outside_the_span_is_ignored():
    ts = torch.linspace(0, 1, 3, dtype=torch.float64)
    inside = pyode.odeint(_f, _y0(), ts, options=dict(step_t=torch.tensor([0.25])))
    # torchdiffeq drops step_t values before t[0] and never reaches those after t[-1].
    both = pyode.odeint(_f, _y0(), ts, options=dict(step_t=torch.tensor([-1.0, 0.0, 0.25, 1.0, 3.0])))
    assert torch.equal(inside, both)
    torchdiffeq.odeint(_f, _y0(), ts, options=dict(step_t=torch.tensor([-1.0, 0.0, 0.25, 1.0, 3.0])))


@pytest.mark.parametrize(
    "options, error, match",
    [
        (dict(min_step=-1.0), ValueError, "option 'min_step' must be ≥ 0"),
        (dict(max_step=0.0), ValueError, "option 'max_step' must be > 0"),
        (dict(min_step=0.5, max_step=0.1), ValueError, "option 'min_step' .* exceeds option 'max_step'"),
        (dict(first_step=0.0), ValueError, "option 'first_step' must be > 0"),
        (dict(safety=1.5), ValueError, r"option 'safety' must be in \(0, 1\]"),
        (dict(ifactor=0.5), ValueError, "option 'ifactor' must be > 1"),
        (dict(dfactor=2.0), ValueError, r"option 'dfactor' must be in \(0, 1\)"),
        (dict(max_num_steps=0), ValueError, "option 'max_num_steps' must be ≥ 1"),
        (dict(dtype=torch.int32), ValueError, "option 'dtype' must be torch.float32 or torch.float64"),
        (dict(norm="rms"), TypeError, "option 'norm' must be a callable"),
        (dict(step_size=0.1), ValueError, r"option\(s\) \['step_size'\] are not supported for method 'dopri5'"),
    ],
)
def test_bad_adaptive_options(options, error, match):
    with pytest.raises(error, match=match):
        pyode.odeint(_f, _y0(), torch.linspace(0, 1, 3, dtype=torch.float64), options=options)


def test_every_torchdiffeq_option_is_handled():
    # Every key torchdiffeq's solvers take, less those another change adds (jump_t, perturb).
    adaptive = {"first_step", "min_step", "max_step", "step_t", "safety", "ifactor", "dfactor", "max_num_steps"}
    adaptive |= {"dtype", "norm"}
    fixed = {"step_size", "grid_constructor", "interp", "norm"}
    assert adaptive <= pyode.compat._ADAPTIVE_OPTIONS
    assert fixed <= pyode.compat._FIXED_OPTIONS
    assert FIXED_GRID == {"euler", "midpoint", "heun2", "rk4"}


# --- scipy_solver ----------------------------------------------------------------------------


# torchdiffeq always passes min_step to solve_ivp, which warns that RK45, RK23 and DOP853 ignore it.
_SCIPY_WARNING = "ignore:The following arguments have no effect:UserWarning"


@pytest.mark.filterwarnings(_SCIPY_WARNING)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("solver", ["RK45", "LSODA", "DOP853"])
def test_scipy_solver_agrees(solver, dtype):
    pytest.importorskip("scipy")
    ts = torch.linspace(0, 2, 5, dtype=dtype)
    kwargs = dict(rtol=1e-6, atol=1e-8, method="scipy_solver", options=dict(solver=solver))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pyode passes scipy only the options it was given
        ours = pyode.odeint(_f, _y0(dtype), ts, **kwargs)
    theirs = torchdiffeq.odeint(_f, _y0(dtype), ts, **kwargs)
    assert ours.dtype == dtype
    # The same scipy call on the same function: identical.
    assert torch.equal(ours, theirs)


@pytest.mark.filterwarnings(_SCIPY_WARNING)
def test_scipy_solver_tuple_state_backward_time_and_options():
    pytest.importorskip("scipy")

    def f(t, y):
        x, v = y
        return v, -x

    y0 = (torch.tensor([1.0], dtype=torch.float64), torch.tensor([[0.0, 2.0]], dtype=torch.float64))
    ts = torch.linspace(3, 0, 4, dtype=torch.float64)
    options = dict(solver="RK23", max_step=0.1)
    ours, theirs = _both(f, y0, ts, rtol=1e-6, atol=1e-8, method="scipy_solver", options=options)
    assert isinstance(ours, tuple) and ours[1].shape == (4, 1, 2)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    # One tolerance per component: torchdiffeq rounds them to float32 (torch.as_tensor of a
    # Python float), pyode keeps them in float64, so the steps differ at rounding level.
    ours, theirs = _both(f, y0, ts, rtol=1e-6, atol=(1e-8, 1e-9), method="scipy_solver", options=options)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_scipy_solver_has_no_gradients():
    pytest.importorskip("scipy")
    y0 = _y0().requires_grad_()
    ys = pyode.odeint(_f, y0, torch.linspace(0, 1, 3, dtype=torch.float64), method="scipy_solver")
    assert not ys.requires_grad  # as in torchdiffeq: scipy integrates outside autograd
    assert torch.equal(pyode.odeint(_f, y0, torch.zeros(1, dtype=torch.float64), method="scipy_solver")[0], y0)
    field = torch.nn.Linear(2, 2).double()
    with pytest.raises(ValueError, match=r"scipy_solver.*no gradients"):
        pyode.odeint_adjoint(lambda t, y: field(y), _y0(), torch.linspace(0, 1, 3), method="scipy_solver",
                             adjoint_params=tuple(field.parameters()))  # fmt: skip


def test_scipy_solver_bad_options():
    pytest.importorskip("scipy")
    ts = torch.linspace(0, 1, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="option 'solver' must be one of scipy's"):
        pyode.odeint(_f, _y0(), ts, method="scipy_solver", options=dict(solver="rk45"))
    with pytest.raises(ValueError, match=r"option\(s\) \['step_size'\] are not supported for method 'scipy_solver'"):
        pyode.odeint(_f, _y0(), ts, method="scipy_solver", options=dict(step_size=0.1))
    with pytest.raises(ValueError, match="option 'max_step' must be > 0"):
        pyode.odeint(_f, _y0(), ts, method="scipy_solver", options=dict(max_step=-1.0))


def test_scipy_solver_without_scipy(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy.integrate", None)  # `import scipy.integrate` now fails
    with pytest.raises(ImportError, match="pip install scipy"):
        pyode.odeint(_f, _y0(), torch.linspace(0, 1, 3, dtype=torch.float64), method="scipy_solver")


# --- adjoint_options norm=callable --------------------------------------------------------------


class _Field(torch.nn.Module):
    def __init__(self, tuple_state: bool):
        super().__init__()
        self.tuple_state = tuple_state
        self.lin = torch.nn.Linear(3, 3).double()
        self.scale = torch.nn.Parameter(torch.tensor([0.5, -0.2], dtype=torch.float64))
        self.frozen = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64), requires_grad=False)

    def forward(self, t, y):
        if self.tuple_state:
            x, v = y
            return torch.tanh(self.lin(x)) * self.frozen, self.scale * v
        return torch.tanh(self.lin(y)) * self.frozen * self.scale[0]


@pytest.mark.filterwarnings("ignore:An adjoint parameter was passed without requiring gradient:UserWarning")
@pytest.mark.parametrize("tuple_state", [False, True])
def test_adjoint_norm_receives_torchdiffeq_structure(tuple_state):
    field = _Field(tuple_state)
    x0 = torch.randn(4, 3, dtype=torch.float64)
    y0 = (x0, torch.randn(2, dtype=torch.float64)) if tuple_state else x0
    ts = torch.linspace(0, 1, 3, dtype=torch.float64)

    def run(odeint_adjoint):
        received = []

        def norm(state):
            received.append([(tuple(s.shape), s.dtype) for s in state])
            return max(s.abs().max() for s in state)

        field.zero_grad()
        ys = odeint_adjoint(field, y0, ts, rtol=1e-9, atol=1e-11, adjoint_options=dict(norm=norm))
        (sum(y.pow(2).sum() for y in ys) if tuple_state else ys.pow(2).sum()).backward()
        return received, torch.cat([p.grad.reshape(-1) for p in field.parameters() if p.requires_grad])

    ours, our_grads = run(pyode.odeint_adjoint)
    theirs, their_grads = run(torchdiffeq.odeint_adjoint)
    # (t, *y, *adj_y, *adj_params): the frozen parameter is left out in both.
    assert ours[0] == theirs[0]
    assert len({str(r) for r in ours}) == 1
    expected = 1 + 2 * (2 if tuple_state else 1) + 3
    assert len(ours[0]) == expected
    # Each is the continuous gradient to ~rtol x amplification.
    assert (our_grads - their_grads).abs().max() / their_grads.abs().max() < 1e-6
