"""AutoAdjoint: which algorithm it picks under which budget and problem, that the gradient is
the chosen algorithm's, and that its memory estimate matches the graph DirectAdjoint records."""

from __future__ import annotations

import math
import weakref

import pytest
import torch

import pyode

HUGE, TINY = 1e12, 1.0  # bytes: every graph fits, none does


class Field(torch.nn.Module):
    """A tanh MLP vector field."""

    def __init__(self, state: int, width: int, dtype: torch.dtype):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(state, width), torch.nn.Tanh(), torch.nn.Linear(width, state)
        ).to(dtype)

    def forward(self, t, y):
        return self.net(y)


def _problem(state=2, batch=4, width=64, dtype=torch.float64, span=2.0):
    """Many parameters per state entry by default (322 for 8 entries: 40x)."""
    field = Field(state, width, dtype)
    y0 = torch.randn(batch, state, dtype=dtype, requires_grad=True)
    return pyode.ODEProblem(field, y0, (0.0, span)), field, y0


def _solve(prob, sensealg, solver=None, **kwargs):
    kwargs = {"saveat": torch.linspace(0.0, float(prob.tspan[1]), 5), "rtol": 1e-6, "atol": 1e-8, **kwargs}
    return pyode.solve(prob, solver or pyode.DP5(), sensealg=sensealg, **kwargs)


def _gradients(prob, field, y0, sensealg, **kwargs):
    """The solution and (dL/dy0, dL/dθ...) of L = mean(y²) over the save points."""
    for p in field.parameters():
        p.grad = None
    y0.grad = None
    sol = _solve(prob, sensealg, **kwargs)
    sol.y.pow(2).mean().backward()
    return sol, [y0.grad.clone()] + [p.grad.clone() for p in field.parameters()]


def _same_gradients_as_chosen(prob, field, y0, auto, **kwargs):
    sol, auto_grads = _gradients(prob, field, y0, auto, **kwargs)
    chosen = sol.sensealg.chosen
    _, grads = _gradients(prob, field, y0, chosen, **kwargs)
    for got, expected in zip(auto_grads, grads):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    return sol


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_direct_when_the_graph_fits(dtype):
    prob, field, y0 = _problem(dtype=dtype)
    sol = _same_gradients_as_chosen(prob, field, y0, pyode.AutoAdjoint(memory_budget=HUGE))
    assert sol.sensealg.chosen == pyode.DirectAdjoint()
    assert "fits" in sol.sensealg.reason
    assert 0 < sol.sensealg.estimate.graph <= HUGE
    assert sol.sensealg.estimate.budget_source == "given"


def _between(prob, **kwargs) -> float:
    """A budget between InterpolatingAdjoint's dense interval and DirectAdjoint's graph."""
    measured = _solve(prob, pyode.AutoAdjoint(memory_budget=HUGE), **kwargs).sensealg.estimate
    assert 0 < measured.interval < measured.graph
    return math.sqrt(measured.interval * measured.graph)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_gauss_when_parameters_dominate(dtype):
    prob, field, y0 = _problem(dtype=dtype)  # 322 parameters, 8 state entries
    sparse = {"saveat": [1.0, 2.0]}  # save points far apart: the parameter count decides
    auto = pyode.AutoAdjoint(memory_budget=_between(prob, **sparse))
    sol = _same_gradients_as_chosen(prob, field, y0, auto, **sparse)
    assert sol.sensealg.chosen == pyode.GaussAdjoint()
    assert "exceeds" in sol.sensealg.reason and "322 parameters ≥ 20 × the state's 8 entries" in sol.sensealg.reason
    assert sol.adjoint_stats is not None and sol.adjoint_stats.nquad > 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_interpolating_when_state_dominates(dtype):
    """Few parameters per state entry (1.1 here), save points far apart (2 over ~12 steps),
    and a budget between InterpolatingAdjoint's dense interval and DirectAdjoint's graph."""
    prob, field, y0 = _problem(state=16, batch=64, width=32, dtype=dtype)
    sparse = {"saveat": [1.0, 2.0]}
    budget = _between(prob, **sparse)
    sol = _same_gradients_as_chosen(prob, field, y0, pyode.AutoAdjoint(memory_budget=budget), **sparse)
    assert sol.sensealg.chosen == pyode.InterpolatingAdjoint(seminorm=True)
    measured = sol.sensealg.estimate
    assert measured.params < pyode.sensitivity.auto.PARAMS_PER_STATE * measured.state
    assert measured.steps >= pyode.sensitivity.auto.STEPS_PER_INTERVAL * measured.intervals
    # Below even the interval's dense output: GaussAdjoint, whose memory does not grow with steps.
    sol = _solve(prob, pyode.AutoAdjoint(memory_budget=measured.interval / 2), **sparse)
    assert sol.sensealg.chosen == pyode.GaussAdjoint()
    assert "InterpolatingAdjoint's dense output" in sol.sensealg.reason
    # Save points at every step or so: InterpolatingAdjoint would restart on each; GaussAdjoint.
    dense_saves = {"saveat": torch.linspace(0.0, 2.0, 41)}
    sol = _solve(prob, pyode.AutoAdjoint(memory_budget=_between(prob, **dense_saves)), **dense_saves)
    assert sol.sensealg.chosen == pyode.GaussAdjoint()
    assert "a save point every" in sol.sensealg.reason


@pytest.mark.parametrize("budget, expected", [(TINY, pyode.ReversibleAdjoint()), (HUGE, pyode.DirectAdjoint())])
def test_reversible_solvers(budget, expected):
    """Over the budget ReversibleAdjoint; within it DirectAdjoint, the same gradient faster."""
    prob, field, y0 = _problem()
    solver = pyode.Reversible(pyode.Tsit5())
    sol = _same_gradients_as_chosen(prob, field, y0, pyode.AutoAdjoint(memory_budget=budget), solver=solver)
    assert sol.sensealg.chosen == expected


def test_regularize_keeps_direct_over_the_budget():
    prob, field, _ = _problem()
    with pytest.warns(UserWarning, match="regularize"):
        sol = _solve(prob, pyode.AutoAdjoint(memory_budget=TINY), regularize=True)
    assert sol.sensealg.chosen == pyode.DirectAdjoint()
    assert "exceeds" in sol.sensealg.reason and "regularize" in sol.sensealg.reason
    (sol.error_estimate + sol.stiffness_estimate).backward()
    assert field.net[0].weight.grad is not None
    # LocalRegularization works with every algorithm: the budget decides as usual.
    sol = _solve(prob, pyode.AutoAdjoint(memory_budget=TINY), regularize=pyode.LocalRegularization())
    assert sol.sensealg.chosen == pyode.GaussAdjoint()


def test_tensors_outside_params_keep_direct_over_the_budget():
    """The adjoints would refuse f closing over a tensor not in prob.params: DirectAdjoint
    reaches it, so AutoAdjoint falls back to DirectAdjoint and says why."""
    net = torch.nn.Linear(2, 2).double()
    y0 = torch.randn(4, 2, dtype=torch.float64)
    prob = pyode.ODEProblem(lambda t, y: torch.tanh(net(y)), y0, (0.0, 1.0))  # params: none listed
    with pytest.warns(UserWarning, match="prob.params"):
        sol = _solve(prob, pyode.AutoAdjoint(memory_budget=TINY))
    assert sol.sensealg.chosen == pyode.DirectAdjoint()
    sol.y.pow(2).sum().backward()
    assert net.weight.grad is not None and net.weight.grad.abs().sum() > 0


def test_events_route_the_chosen_algorithm():
    """AutoAdjoint resolves before solve() routes adjoints with events segment by segment; the
    event time's gradient is the chosen algorithm's."""

    calls = []

    def run(sensealg):
        a = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
        y0 = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
        prob = pyode.ODEProblem(lambda t, y: (calls.append(t), a * y)[1], y0, (0.0, 5.0), params=[a])
        event = pyode.Event(lambda t, y: y[0] - 2.0)
        calls.clear()
        sol = pyode.solve(prob, pyode.Tsit5(), rtol=1e-8, atol=1e-10, events=event, sensealg=sensealg)
        forward = len(calls)
        sol.event_time.backward()
        return sol, forward, a.grad.item(), y0.grad.item()

    sol, forward, *auto = run(pyode.AutoAdjoint(memory_budget=TINY))
    assert isinstance(sol.sensealg.chosen, pyode.InterpolatingAdjoint | pyode.GaussAdjoint)
    assert forward == sol.stats.nfe + sol.sensealg.estimate.nfe  # one probe, not one per segment
    _, _, *chosen = run(sol.sensealg.chosen)
    assert auto == chosen
    # t* = ln(2)/a: dt*/da = -ln 2/a², dt*/dy0 = -1/(a y0).
    assert auto[0] == pytest.approx(-math.log(2) / 0.25, rel=1e-6)
    assert auto[1] == pytest.approx(-2.0, rel=1e-6)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_no_gradient_wanted_is_the_plain_forward_solve(mode):
    prob, field, _ = _problem()
    calls = []
    prob = pyode.ODEProblem(lambda t, y: (calls.append(1), field(t, y))[1], prob.y0, prob.tspan)
    with mode():
        sol = _solve(prob, pyode.AutoAdjoint(memory_budget=TINY))
    assert sol.sensealg.chosen == pyode.DirectAdjoint()
    assert "gradients are off" in sol.sensealg.reason and sol.sensealg.estimate is None
    assert len(calls) == sol.stats.nfe  # no probe ran


def test_nothing_requires_grad():
    prob, field, _ = _problem()
    field.requires_grad_(False)
    prob = pyode.ODEProblem(field, prob.y0.detach(), prob.tspan)
    sol = _solve(prob, pyode.AutoAdjoint(memory_budget=TINY))
    assert sol.sensealg.chosen == pyode.DirectAdjoint()
    assert "nothing" in sol.sensealg.reason


class _SavedBytes:
    """Bytes of the saved tensors a graph still holds, each storage once (independent of the
    counter in pyode.sensitivity.auto)."""

    def __init__(self):
        self.live = weakref.WeakValueDictionary()
        self.count = 0

    def pack(self, tensor):
        box = _Box(tensor.detach())  # no cycle through the grad_fn of a saved output
        self.count += 1
        self.live[self.count] = box
        return box

    def total(self):
        return sum(
            {
                box.t.untyped_storage().data_ptr(): box.t.untyped_storage().nbytes() for box in self.live.values()
            }.values()
        )


class _Box:
    def __init__(self, t):
        self.t = t


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("shape", [(2, 16, 64), (8, 64, 48)], ids=["small", "wide-state"])
def test_estimate_matches_the_recorded_graph(dtype, shape):
    state, batch, width = shape
    prob, _, _ = _problem(state=state, batch=batch, width=width, dtype=dtype, span=5.0)
    estimate = _solve(prob, pyode.AutoAdjoint(memory_budget=HUGE)).sensealg.estimate
    saved = _SavedBytes()
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda box: box.t):
        sol = _solve(prob, pyode.DirectAdjoint())
        recorded = saved.total()
    assert sol.y.requires_grad
    assert 1 / 2 < estimate.graph / recorded < 2
    # The per-step model alone, at the real step count: within 10%.
    assert estimate.shared + sol.stats.naccept * estimate.per_step == pytest.approx(recorded, rel=0.1)
    assert estimate.steps >= sol.stats.naccept  # the step count errs high, never low here


def test_fixed_steps_are_counted_exactly():
    prob, _, _ = _problem()
    estimate = _solve(prob, pyode.AutoAdjoint(memory_budget=HUGE), solver=pyode.RK4(), dt=0.05).sensealg.estimate
    assert estimate.steps == 40


@pytest.mark.parametrize(
    "budget, error, match",
    [
        (-1.0, ValueError, "non-negative"),
        (math.nan, ValueError, "non-negative"),
        ("1GB", TypeError, "number of bytes"),
        (True, TypeError, "number of bytes"),
        ([1e9], TypeError, "number of bytes"),
    ],
)
def test_bad_memory_budget(budget, error, match):
    with pytest.raises(error, match=rf"memory_budget must be a .*{match}"):
        pyode.AutoAdjoint(memory_budget=budget)


def test_budget_edges_and_default():
    prob, _, _ = _problem()
    assert _solve(prob, pyode.AutoAdjoint(memory_budget=math.inf)).sensealg.chosen == pyode.DirectAdjoint()
    assert _solve(prob, pyode.AutoAdjoint(memory_budget=0)).sensealg.chosen == pyode.GaussAdjoint()
    sol = _solve(prob, pyode.AutoAdjoint())  # half the free memory: a few hundred KiB fit
    assert sol.sensealg.chosen == pyode.DirectAdjoint()
    assert sol.sensealg.estimate.budget > 0 and sol.sensealg.estimate.budget_source != "given"


def test_solution_records_the_algorithm():
    prob, _, _ = _problem()
    assert _solve(prob, None).sensealg == pyode.DirectAdjoint()
    assert _solve(prob, pyode.GaussAdjoint()).sensealg == pyode.GaussAdjoint()
    auto = pyode.AutoAdjoint(memory_budget=TINY)
    resolved = _solve(prob, auto).sensealg
    assert auto.chosen is None  # the caller's object is not modified
    assert repr(resolved).startswith("AutoAdjoint(memory_budget=1.0, chosen=GaussAdjoint(), reason=")


def test_julia_backend_refuses_by_name():
    prob, _, _ = _problem()
    with pytest.raises(ValueError, match=r'AutoAdjoint.*backend="julia"'):
        pyode.solve(prob, pyode.DP5(), sensealg=pyode.AutoAdjoint(), backend="julia")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; CI machines have none")
def test_cuda_budget_and_estimate():
    """On CUDA the default budget is read from the device, and the estimate matches the memory
    the recorded graph takes there (the allocator's count, not the saved-tensor hooks)."""
    field = Field(16, 128, torch.float32).cuda()
    y0 = torch.randn(256, 16, device="cuda", requires_grad=True)
    prob = pyode.ODEProblem(field, y0, (0.0, 5.0))
    estimate = _solve(prob, pyode.AutoAdjoint()).sensealg.estimate
    _, total = torch.cuda.mem_get_info()
    assert estimate.budget_source == "half the free CUDA memory" and 0 < estimate.budget <= total / 2
    torch.cuda.synchronize()
    start = torch.cuda.memory_allocated()
    sol = _solve(prob, pyode.DirectAdjoint())
    torch.cuda.synchronize()
    recorded = torch.cuda.memory_allocated() - start
    assert sol.y.requires_grad
    assert 1 / 2 < estimate.graph / recorded < 2


def test_the_probe_frees_its_graph():
    """Every tensor the probe's graph saved is freed with it (a saved output, such as tanh's,
    once kept its graph alive through a reference cycle that Python's gc cannot see)."""
    import gc

    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()
    outputs = []

    def f(t, y):
        out = torch.tanh(net(y))
        outputs.append(weakref.ref(out))
        return out

    y0 = torch.randn(8, 2, dtype=torch.float64)
    prob = pyode.ODEProblem(f, y0, (0.0, 1.0), params=list(net.parameters()))
    sol = pyode.solve(prob, pyode.DP5(), saveat=[1.0], sensealg=pyode.AutoAdjoint(memory_budget=1e12))
    sol.y.sum().backward()
    del sol
    gc.collect()
    assert outputs and all(ref() is None for ref in outputs)
