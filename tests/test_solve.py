"""The integration loop end to end: accuracy against references, dense output, dtypes, backward
time, tuple and batched states, statistics, failures and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pyode

from .problems import ALL, LINEAR, OSCILLATING_GROWTH, VAN_DER_POL, reference

ADAPTIVE = [pyode.BS3(), pyode.DP5(), pyode.Tsit5(), pyode.DP8()]


def _prob(problem, dtype=torch.float64, tspan=None):
    return pyode.ODEProblem(problem.f, torch.tensor(problem.y0, dtype=dtype), tspan or problem.tspan)


def _relative_error(ys, ref) -> float:
    ys = np.asarray(ys, dtype=np.float64)
    return float(np.abs(ys - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("problem", ALL, ids=lambda p: p.name)
@pytest.mark.parametrize("solver", ADAPTIVE, ids=repr)
def test_matches_reference_at_tight_tolerance(problem, solver):
    ts = np.linspace(*problem.tspan, 41)
    sol = pyode.solve(_prob(problem), solver, saveat=torch.tensor(ts), rtol=1e-9, atol=1e-12)
    assert sol.retcode is pyode.ReturnCode.Success
    assert torch.equal(sol.t, torch.tensor(ts))
    # Global error is the tolerance times the problem's error amplification (≲ 100 here).
    assert _relative_error(sol.y, reference(problem, ts)) < 1e-6


@pytest.mark.parametrize("problem", ALL, ids=lambda p: p.name)
def test_heun_matches_reference_at_its_tolerances(problem):
    # Heun is second order: at rtol 1e-5 it already takes about a thousand steps.
    ts = np.linspace(*problem.tspan, 11)
    sol = pyode.solve(_prob(problem), pyode.Heun(), saveat=torch.tensor(ts), rtol=1e-5, atol=1e-8)
    assert _relative_error(sol.y, reference(problem, ts)) < 1e-3


@pytest.mark.parametrize("solver", ADAPTIVE, ids=repr)
def test_dense_output_between_steps(solver):
    sol = pyode.solve(_prob(VAN_DER_POL), solver, rtol=1e-9, atol=1e-12)  # saves every step, dense
    steps = sol.t.numpy()
    mids = (steps[:-1] + steps[1:]) / 2  # the worst place for an interpolant: mid-step
    ys = sol(torch.tensor(mids))
    assert ys.shape == (len(mids), 2)
    assert _relative_error(ys, reference(VAN_DER_POL, mids)) < 1e-6
    # A scalar query returns one state, and the step ends reproduce the saved states.
    assert sol(float(mids[3])).shape == (2,)
    assert torch.allclose(sol(sol.t[5]), sol.y[5], rtol=1e-12, atol=1e-12)


def test_dense_output_needs_dense_and_stays_in_span():
    sol = pyode.solve(_prob(LINEAR), pyode.Tsit5(), saveat=[1.0, 2.0])
    with pytest.raises(ValueError, match="dense=True"):
        sol(1.5)
    sol = pyode.solve(_prob(LINEAR), pyode.Tsit5(), saveat=[1.0, 2.0], dense=True)
    assert sol(1.5).shape == (2,)
    with pytest.raises(ValueError, match="outside the solved span"):
        sol(11.0)


@pytest.mark.parametrize("solver", [pyode.DP5(), pyode.Tsit5()], ids=repr)
def test_float32(solver):
    ts = np.linspace(*LINEAR.tspan, 11)
    sol = pyode.solve(_prob(LINEAR, torch.float32), solver, saveat=torch.tensor(ts), rtol=1e-5, atol=1e-6)
    assert sol.y.dtype == torch.float32
    assert sol.t.dtype == torch.float64  # time keeps its own dtype
    # float32 round-off (6e-8 per step, ~100 steps) stays below the tolerance-driven error.
    assert _relative_error(sol.y, reference(LINEAR, ts)) < 1e-4
    sol = pyode.solve(_prob(LINEAR, torch.float32), solver, saveat=torch.tensor(ts), time_dtype=torch.float32)
    assert sol.t.dtype == torch.float32


def test_vector_field_sees_t_in_state_dtype():
    seen = []

    def f(t, y):
        seen.append((t.dtype, t.shape))
        return -y

    pyode.solve(pyode.ODEProblem(f, torch.ones(3, dtype=torch.float32), (0.0, 1.0)), pyode.Tsit5())
    assert set(seen) == {(torch.float32, torch.Size([]))}


@pytest.mark.parametrize("solver", [pyode.Tsit5(), pyode.DP8()], ids=repr)
def test_backward_in_time(solver):
    t_end = LINEAR.tspan[1]
    y_end = torch.tensor(LINEAR.exact(t_end))
    ts = np.linspace(t_end, 0.0, 21)
    prob = pyode.ODEProblem(LINEAR.f, y_end, (t_end, 0.0))
    sol = pyode.solve(prob, solver, saveat=torch.tensor(ts), rtol=1e-10, atol=1e-12)
    assert _relative_error(sol.y, reference(LINEAR, ts)) < 1e-7
    assert (sol.t[1:] < sol.t[:-1]).all()
    dense = pyode.solve(prob, solver, rtol=1e-10, atol=1e-12)
    assert (dense.t[1:] < dense.t[:-1]).all()
    assert (
        _relative_error(dense(torch.tensor([7.3, 2.1], dtype=torch.float64)), reference(LINEAR, np.array([7.3, 2.1])))
        < 1e-7
    )
    with pytest.raises(ValueError, match="strictly decreasing"):
        pyode.solve(prob, solver, saveat=[1.0, 2.0])


def test_tuple_state_matches_tensor_state():
    def f_tuple(t, y):
        x, v = y
        return v, -x - 0.1 * v

    def f_tensor(t, y):
        return torch.stack((y[1], -y[0] - 0.1 * y[1]))

    x0, v0 = torch.tensor([1.0], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64)
    ts = torch.linspace(0, 5, 7, dtype=torch.float64)
    tup = pyode.solve(pyode.ODEProblem(f_tuple, (x0, v0), (0.0, 5.0)), pyode.DP5(), saveat=ts)
    ten = pyode.solve(pyode.ODEProblem(f_tensor, torch.cat((x0, v0)), (0.0, 5.0)), pyode.DP5(), saveat=ts)
    assert isinstance(tup.y, tuple) and tup.y[0].shape == (7, 1)
    # RMS over a tuple equals RMS over the concatenation, so the same steps are taken.
    assert tup.stats == ten.stats
    torch.testing.assert_close(torch.cat(tup.y, dim=1), ten.y, rtol=0, atol=1e-15)
    mixed = pyode.solve(
        pyode.ODEProblem(f_tuple, (x0, v0), (0.0, 5.0)), pyode.DP5(), saveat=ts, internalnorm=pyode.mixed_norm
    )
    torch.testing.assert_close(torch.cat(mixed.y, dim=1), ten.y, rtol=1e-6, atol=1e-6)


def test_tuple_state_of_different_shapes_and_dense():
    def f(t, y):
        a, b = y
        return -a, b.sum() * torch.ones_like(b) * 0.0 - b

    y0 = (torch.ones(2, 3, dtype=torch.float64), torch.ones(4, dtype=torch.float64))
    sol = pyode.solve(pyode.ODEProblem(f, y0, (0.0, 1.0)), pyode.Tsit5(), rtol=1e-10, atol=1e-12)
    a, b = sol(0.5)
    assert a.shape == (2, 3) and b.shape == (4,)
    torch.testing.assert_close(a, torch.full((2, 3), math.exp(-0.5), dtype=torch.float64), rtol=1e-8, atol=0)


def test_batched_state_is_one_solve():
    # A batch is a leading dimension; each row solves its own problem under a shared step size.
    y0 = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    ts = torch.linspace(0, 10, 6, dtype=torch.float64)
    sol = pyode.solve(pyode.ODEProblem(LINEAR.f, y0, (0.0, 10.0)), pyode.Tsit5(), saveat=ts, rtol=1e-10, atol=1e-12)
    assert sol.y.shape == (6, 3, 2)
    for i in range(3):
        alone = pyode.solve(
            pyode.ODEProblem(LINEAR.f, y0[i], (0.0, 10.0)), pyode.Tsit5(), saveat=ts, rtol=1e-10, atol=1e-12
        )
        torch.testing.assert_close(sol.y[:, i], alone.y, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("solver", [*ADAPTIVE, pyode.Heun()], ids=repr)
@pytest.mark.parametrize("saveat", [None, "points"])
def test_nfe_counts_every_call(solver, saveat):
    calls = []

    def f(t, y):
        calls.append(float(t))
        return VAN_DER_POL.f(t, y)

    ts = torch.linspace(0, 10, 17, dtype=torch.float64) if saveat else None
    sol = pyode.solve(
        pyode.ODEProblem(f, torch.tensor([2.0, 0.0], dtype=torch.float64), (0.0, 10.0)), solver, saveat=ts, rtol=1e-4
    )
    assert sol.stats.nfe == len(calls)
    assert sol.stats.naccept > 0


def test_fsal_costs_stages_minus_one_per_step():
    calls = []

    def f(t, y):
        calls.append(1)
        return -y

    sol = pyode.solve(pyode.ODEProblem(f, torch.ones(2, dtype=torch.float64), (0.0, 1.0)), pyode.DP5(), saveat=[1.0])
    # One evaluation at t0, one for the initial step heuristic, then 6 per attempted step.
    assert sol.stats.nfe == 2 + 6 * (sol.stats.naccept + sol.stats.nreject)


def test_saveat_semantics():
    prob = _prob(OSCILLATING_GROWTH)
    sol = pyode.solve(prob, pyode.Tsit5())
    assert sol.t[0] == 0.0 and sol.t[-1] == 3.0 and len(sol.t) == sol.stats.naccept + 1
    sol = pyode.solve(prob, pyode.Tsit5(), saveat=[0.5, 3.0])
    assert sol.t.tolist() == [0.5, 3.0] and sol.y.shape == (2, 1)
    sol = pyode.solve(prob, pyode.Tsit5(), saveat=[0.0])
    assert sol.y[0].item() == 1.0


def test_tstops_are_landed_on_exactly():
    stops = [0.3, 1.7, 2.25]
    sol = pyode.solve(_prob(OSCILLATING_GROWTH), pyode.Tsit5(), tstops=stops)
    assert set(stops) <= set(sol.t.tolist())
    fixed = pyode.solve(_prob(OSCILLATING_GROWTH), pyode.RK4(), dt=0.5, tstops=[0.75])
    assert fixed.t.tolist() == [0.0, 0.5, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0]


def test_dtmax_bounds_the_steps():
    sol = pyode.solve(_prob(OSCILLATING_GROWTH), pyode.Tsit5(), dtmax=0.01, rtol=1e-3)
    assert (sol.t[1:] - sol.t[:-1]).max() <= 0.01 + 1e-15


def test_zero_length_span():
    sol = pyode.solve(pyode.ODEProblem(lambda t, y: -y, torch.ones(2), (1.0, 1.0)), pyode.Tsit5())
    assert sol.t.tolist() == [1.0] and torch.equal(sol.y[0], torch.ones(2))


def test_given_dt_is_the_first_step():
    sol = pyode.solve(_prob(OSCILLATING_GROWTH), pyode.Tsit5(), dt=1e-3)
    assert math.isclose(sol.t[1].item(), 1e-3)


# --- failures -----------------------------------------------------------------------------


def test_max_iters():
    prob = _prob(VAN_DER_POL)
    with pytest.raises(pyode.SolveError, match="MaxIters") as info:
        pyode.solve(prob, pyode.Tsit5(), max_steps=5)
    assert info.value.retcode is pyode.ReturnCode.MaxIters
    assert 0 < info.value.t < 10
    sol = pyode.solve(prob, pyode.Tsit5(), max_steps=5, throw=False)
    assert sol.retcode is pyode.ReturnCode.MaxIters
    assert sol.stats.naccept + sol.stats.nreject == 5
    assert sol.t[-1].item() == pytest.approx(info.value.t)
    assert len(sol.t) == sol.y.shape[0] == sol.stats.naccept + 1


def test_blow_up_ends_with_dt_less_than_min():
    # y' = y², y(0) = 1 has y = 1/(1 - t): a singularity at t = 1.
    prob = pyode.ODEProblem(lambda t, y: y * y, torch.ones(1, dtype=torch.float64), (0.0, 2.0))
    sol = pyode.solve(prob, pyode.DP5(), saveat=[0.5, 0.9, 1.5], throw=False)
    assert sol.retcode in (pyode.ReturnCode.DtLessThanMin, pyode.ReturnCode.Unstable)
    assert sol.t.tolist() == [0.5, 0.9]
    torch.testing.assert_close(sol.y[:, 0], torch.tensor([2.0, 10.0], dtype=torch.float64), rtol=1e-4, atol=0)


def test_nan_from_f_is_unstable():
    def f(t, y):
        return -y if t < 0.5 else y * float("nan")

    prob = pyode.ODEProblem(f, torch.ones(2, dtype=torch.float64), (0.0, 1.0))
    with pytest.raises(pyode.SolveError) as info:
        pyode.solve(prob, pyode.Tsit5())
    assert info.value.retcode is pyode.ReturnCode.Unstable
    assert info.value.t == pytest.approx(0.5, abs=1e-6)
    # Fixed steps have no error test; the save points are checked instead.
    sol = pyode.solve(prob, pyode.RK4(), dt=0.1, saveat=[0.2, 0.4, 0.8, 1.0], throw=False)
    assert sol.retcode is pyode.ReturnCode.Unstable
    assert sol.t.tolist() == [0.2, 0.4] and torch.isfinite(sol.y).all()


def test_nan_at_start_is_unstable():
    prob = pyode.ODEProblem(lambda t, y: y * float("nan"), torch.ones(2, dtype=torch.float64), (0.0, 1.0))
    sol = pyode.solve(prob, pyode.Tsit5(), throw=False)
    assert sol.retcode is pyode.ReturnCode.Unstable


# --- bad input ----------------------------------------------------------------------------


def _good():
    return pyode.ODEProblem(lambda t, y: -y, torch.ones(2, dtype=torch.float64), (0.0, 1.0))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(saveat=[0.5, 0.2]), ValueError, "strictly increasing"),
        (dict(saveat=[0.5, 0.5]), ValueError, "duplicated"),
        (dict(saveat=[0.5, 1.5]), ValueError, "outside tspan"),
        (dict(saveat=torch.ones(2, 2)), ValueError, "1-D"),
        (dict(saveat=[0.1, float("nan")]), ValueError, "not finite"),
        (dict(rtol=-1e-3), ValueError, "rtol must be non-negative"),
        (dict(atol=-1.0), ValueError, "atol must be non-negative"),
        (dict(rtol=0, atol=0), ValueError, "both 0"),
        (dict(rtol="tight"), TypeError, "rtol must be a number"),
        (dict(dt=-0.1), ValueError, "dt must be positive"),
        (dict(max_steps=0), ValueError, "max_steps"),
        (dict(internalnorm="rms"), TypeError, "internalnorm must be callable"),
        (dict(controller="pi"), TypeError, "controller"),
        (dict(adaptive=False), ValueError, "pass dt="),
        (dict(sensealg="direct"), TypeError, "sensealg"),
        (dict(time_dtype=torch.int32), ValueError, "time_dtype"),
    ],
)
def test_bad_solve_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        pyode.solve(_good(), pyode.Tsit5(), **kwargs)


def test_fixed_step_solver_needs_dt():
    with pytest.raises(ValueError, match=r"RK4\(\) has no error estimate"):
        pyode.solve(_good(), pyode.RK4())
    with pytest.raises(ValueError, match="cannot step adaptively"):
        pyode.solve(_good(), pyode.Euler(), adaptive=True)


def test_bad_solver_and_problem():
    with pytest.raises(TypeError, match="solver must be a pyode solver"):
        pyode.solve(_good(), "dopri5")
    with pytest.raises(TypeError, match=r"prob must be a pyode\.ODEProblem"):
        pyode.solve(lambda t, y: y, pyode.Tsit5())


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((lambda t, y: y, torch.tensor([1.0, float("nan")]), (0, 1)), ValueError, "y0 contains NaN"),
        ((lambda t, y: y, torch.tensor([1, 2]), (0, 1)), TypeError, "floating-point"),
        ((lambda t, y: y, [1.0, 2.0], (0, 1)), TypeError, "got a list"),
        ((lambda t, y: y, (torch.ones(2), torch.ones(2, dtype=torch.float64)), (0, 1)), TypeError, "share one dtype"),
        ((lambda t, y: y, torch.ones(2), (0, 1, 2)), ValueError, "pair"),
        ((lambda t, y: y, torch.ones(2), (0, float("inf"))), ValueError, "finite"),
        ((lambda t, y: y, torch.ones(2), ("a", 1)), TypeError, "real number"),
        (("f", torch.ones(2), (0, 1)), TypeError, "callable"),
    ],
)
def test_bad_problem(args, error, match):
    with pytest.raises(error, match=match):
        pyode.ODEProblem(*args)


@pytest.mark.parametrize(
    "f, y0, match",
    [
        (
            lambda t, y: torch.ones(3, dtype=torch.float64),
            torch.ones(2, dtype=torch.float64),
            r"returned shape \(3,\) at t = 0, but the state has shape \(2,\)",
        ),
        (
            lambda t, y: y.float(),
            torch.ones(2, dtype=torch.float64),
            "returned dtype torch.float32, but the state has dtype torch.float64",
        ),
        (lambda t, y: [y], torch.ones(2), "must return a tensor"),
        (lambda t, y: y[0], (torch.ones(2), torch.ones(2)), "tuple of 2 tensors"),
        (lambda t, y: (y[0], y[1][:1]), (torch.ones(2), torch.ones(2)), r"f\(t, y\)\[1\] returned shape"),
    ],
)
def test_f_returning_the_wrong_thing_is_named(f, y0, match):
    with pytest.raises((ValueError, TypeError), match=match):
        pyode.solve(pyode.ODEProblem(f, y0, (0.0, 1.0)), pyode.Tsit5())


def test_caller_objects_are_not_modified():
    y0 = torch.ones(2, dtype=torch.float64)
    ts = torch.linspace(0, 1, 3, dtype=torch.float64)
    y0_copy, ts_copy = y0.clone(), ts.clone()
    pyode.solve(pyode.ODEProblem(lambda t, y: -y, y0, (0.0, 1.0)), pyode.Tsit5(), saveat=ts)
    assert torch.equal(y0, y0_copy) and torch.equal(ts, ts_copy)


def test_solvers_are_values():
    assert pyode.Tsit5() == pyode.Tsit5() and pyode.Tsit5() != pyode.DP5()
    assert repr(pyode.DP8()) == "DP8()"
    assert hash(pyode.Tsit5()) == hash(pyode.Tsit5())
