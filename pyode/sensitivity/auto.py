"""AutoAdjoint: choose the gradient method from what can be measured before the solve."""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
import warnings
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from ..integrate import Observer, StateLayout, integrate
from ..integrate.options import time_span
from ..problem import ReturnCode, Stats
from ..solvers.auto_switch import AutoSwitch
from ..solvers.implicit import AbstractImplicitSolver
from ..solvers.reversible import AbstractReversibleSolver
from .base import AbstractSensitivityAlgorithm
from .direct import DirectAdjoint
from .gauss import GaussAdjoint
from .interpolating import InterpolatingAdjoint
from .reversible import ReversibleAdjoint
from .vector_field import VectorField, _check_independent

if TYPE_CHECKING:
    from ..integrate import AcceptedStep, SolveOptions
    from ..problem import ODEProblem, Solution
    from ..solvers.base import AbstractSolver

# GaussAdjoint when the parameters that require grad number at least this many times the entries
# of the flat state (batch included); measured with `python benchmarks/auto_adjoint.py --sweep`
# (docs/sensitivity.md, "AutoAdjoint").
PARAMS_PER_STATE = 20.0
# InterpolatingAdjoint re-solves each save interval forward from its start (a fresh first step
# and controller start-up): with fewer steps than this per interval on average it was slower
# than GaussAdjoint at every parameter count measured (same benchmark).
STEPS_PER_INTERVAL = 4.0
# The default budget is this fraction of the memory free now: backward needs room of its own
# (one step's recomputed graph, the gradients, the optimizer's state), and allocators fragment.
BUDGET_FRACTION = 0.5
FALLBACK_BUDGET = 2.0**30  # where free memory cannot be read (CPU without /proc/meminfo, MPS, ...)
# The probe: attempted steps at tolerances loosened this much (but no looser than rtol 1e-2).
PROBE_STEPS = 3
PROBE_LOOSEN = 1000.0
PROBE_LOOSEST_RTOL = 1e-2


@dataclass(frozen=True)
class MemoryEstimate:
    """What `AutoAdjoint` measured before choosing. Bytes and step counts are host floats.

    Attributes:
        graph: DirectAdjoint's recorded graph, `shared + steps · per_step` bytes.
        budget: the memory budget compared against, in bytes.
        budget_source: where the budget came from: "given" (`memory_budget=`), or the
            free-memory reading it is a fraction of.
        steps: accepted steps the solve is expected to take.
        per_step: bytes of saved tensors one accepted step adds to the graph.
        shared: bytes saved once: the first evaluation of f and what every step shares (the
            parameters, f's constants).
        interval: InterpolatingAdjoint's dense output over the longest save interval (bytes),
            what its backward pass holds at a time.
        intervals: save intervals (save points after t0; every step when all are saved).
        params: entries of `prob.params` that require grad.
        state: entries of the flat state (batch included).
        nfe: evaluations of f the probe made (not counted in `sol.stats`).
    """

    graph: float
    budget: float
    budget_source: str
    steps: float
    per_step: float
    shared: float
    interval: float
    intervals: int
    params: int
    state: int
    nfe: int


@dataclass(frozen=True, repr=False)
class AutoAdjoint(AbstractSensitivityAlgorithm):
    """Choose the gradient method for each solve from what can be measured before it.

    The rule, in order:

    1. No gradient wanted (grad disabled by `torch.no_grad()`/inference mode, or nothing the
       solve reads requires grad): `DirectAdjoint()`, which is then the plain forward solve.
    2. DirectAdjoint's recorded graph fits `memory_budget`: `DirectAdjoint()`, the fastest
       method on CPU and GPU alike whenever its memory fits (docs/benchmarks.md). This includes
       reversible solvers: through them DirectAdjoint computes the same gradient as
       ReversibleAdjoint, about twice as fast.
    3. `regularize=` (the global regularizers) or f closing over tensors outside `prob.params`:
       only DirectAdjoint differentiates those, so it is chosen even over the budget, with a
       `UserWarning` (the budget is an estimate; `pyode.LocalRegularization()` or listing the
       tensors in `params=` lifts the restriction).
    4. Reversible solvers: `ReversibleAdjoint()` (the others cannot use them).
    5. `GaussAdjoint()`, whose backward ODE carries no parameter channels, when it is the
       faster adjoint: the parameters that require grad number at least `PARAMS_PER_STATE` (20)
       times the entries of the flat state (batch included), or the save points come more often
       than every `STEPS_PER_INTERVAL` (4) steps (InterpolatingAdjoint re-solves each interval
       from a fresh start). Measured (`benchmarks/auto_adjoint.py --sweep`: about 20 steps, with
       20, 5 or 1 steps per save interval): from 24 parameters per state entry up GaussAdjoint
       was faster in every run (1.05–1.8x); from 1.5 to 12 the two were within ±15% with 5 or
       more steps per interval, and InterpolatingAdjoint 1.2–1.5x slower with one.
    6. Otherwise `InterpolatingAdjoint(seminorm=True)`: as fast, and it reads z from the forward
       solution where GaussAdjoint integrates z backward, as backsolve does (unstable for
       dissipative systems). If even its dense output over the longest save interval exceeds
       the budget, `GaussAdjoint()`, whose memory is independent of the number of steps.

    Every choice computes the gradient to the solve's tolerances: `QuadratureAdjoint` (accurate
    to its node count, not to the tolerance) and `BacksolveAdjoint` (unstable for dissipative
    systems) are never chosen.

    How the graph is estimated: a probe runs the forward loop itself for at most 3 attempted
    steps under autograd, with tolerances loosened 1000-fold (to rtol 1e-2 at most), counting
    the bytes of the tensors autograd saves (`torch.autograd.graph.saved_tensors_hooks`, each
    storage once) before the first step and after the last. That gives the bytes an accepted step
    adds and the bytes shared by all steps. The expected number of steps extrapolates the probe
    to the end of the span with its last step size, scaled by 1000^(1/(q+1)) for an error
    estimate of order q (steps grow as tol^(-1/(q+1))); on benchmarks/core.py-style neural ODEs
    this came within 1.1–2.7x of the real count (1.5x typically), and the whole estimate within
    1.1–1.8x of the graph DirectAdjoint then recorded. It can err low: dynamics that speed up
    after the probe's first steps (a late transient) take more steps than the probe's pace
    predicts (4.7x more in one such test), so a budget is a guide, not a guarantee. The
    budget's default (the memory free now) can also change between solves, and with it the
    choice. Fixed steps are
    counted exactly. The probe costs 3 recorded steps (plus one evaluation of f to check
    `prob.params` when an adjoint is considered): a few percent of a training step on long
    solves, up to a third on solves of a handful of steps. Its graph is freed before the solve; it
    runs f, so it draws from the random generator (dropout) and updates BatchNorm's statistics.
    To skip it in a training loop, pass `sol.sensealg.chosen` on later iterations.

    After the solve, `sol.sensealg` is this AutoAdjoint with `chosen` (the concrete algorithm
    that computed the gradient), `reason` (a sentence) and `estimate` (a `MemoryEstimate`,
    None when nothing was measured) filled in. Events and the solve's routing see `chosen`.
    The Julia engine builds no torch graph to measure, so `backend="julia"` refuses AutoAdjoint.

    Args:
        memory_budget: bytes the recorded graph may take; `math.inf` always allows
            DirectAdjoint, 0 never does. None: half the memory free now on the state's device:
            on CUDA the free device memory plus what PyTorch's allocator has cached unused
            (`torch.cuda.mem_get_info`), on CPU `MemAvailable` in /proc/meminfo, and 1 GiB
            where neither can be read.

    Raises:
        TypeError: `memory_budget` is not a number (a bool, a string, a list).
        ValueError: `memory_budget` is negative or NaN.
    """

    memory_budget: float | None = None
    chosen: AbstractSensitivityAlgorithm | None = dataclasses.field(default=None, init=False, compare=False)
    reason: str | None = dataclasses.field(default=None, init=False, compare=False)
    estimate: MemoryEstimate | None = dataclasses.field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        budget = self.memory_budget
        if budget is None:
            return
        if isinstance(budget, bool) or not isinstance(budget, numbers.Real):
            raise TypeError(
                f"AutoAdjoint: memory_budget must be a number of bytes (or None for half the free memory); "
                f"got {type(budget).__name__} {budget!r}"
            )
        try:
            float(budget)
        except OverflowError:
            raise ValueError(
                f"AutoAdjoint: memory_budget={budget} does not fit a float; pass math.inf for no limit"
            ) from None
        if math.isnan(budget) or budget < 0:
            raise ValueError(f"AutoAdjoint: memory_budget must be a non-negative number of bytes; got {budget!r}")

    def choose(self, prob: ODEProblem, solver: AbstractSolver, opts: SolveOptions) -> AutoAdjoint:
        """This AutoAdjoint with `chosen`, `reason` and `estimate` filled in for this solve."""
        outcome = self._measured(prob, solver, opts, _measure, "the recorded graph", "steps")
        if isinstance(outcome, AutoAdjoint):
            return outcome
        estimate, over, budget = outcome
        layout = StateLayout(prob.y0)
        params = estimate.params
        only_direct = None
        if opts.regularize is not None:
            only_direct = (
                "regularize= is differentiated through the solver's own steps, which only DirectAdjoint records"
            )
        else:
            t0 = time_span(prob)[0]
            nfe = Stats()
            only_direct = _closure_problem(prob, layout, layout.flatten(prob.y0), t0, nfe)
            estimate = dataclasses.replace(estimate, nfe=estimate.nfe + nfe.nfe)
        if only_direct is not None:
            reason = f"{over}, but DirectAdjoint is chosen anyway: {only_direct}"
            warnings.warn(f"AutoAdjoint: {reason}", UserWarning, stacklevel=4)
            return self._resolved(DirectAdjoint(), reason, estimate)
        if isinstance(solver, (AbstractImplicitSolver, AutoSwitch)):
            # GaussAdjoint re-integrates the state backward, unstable on a stiff problem.
            reason = (
                f"{over}; with the implicit solver {solver!r}: InterpolatingAdjoint, which reads the forward solution"
            )
            return self._resolved(InterpolatingAdjoint(seminorm=True), reason, estimate)
        if isinstance(solver, AbstractReversibleSolver):
            reason = (
                f"{over}; with the reversible solver {solver!r}: ReversibleAdjoint, memory independent of the steps"
            )
            return self._resolved(ReversibleAdjoint(), reason, estimate)
        ratio = f"{params:,} parameters {{}} {PARAMS_PER_STATE:g} × the state's {layout.numel:,} entries"
        if params >= PARAMS_PER_STATE * layout.numel:
            reason = f"{over}; {ratio.format('≥')}: GaussAdjoint, whose backward ODE carries no parameter channels"
            return self._resolved(GaussAdjoint(), reason, estimate)
        if estimate.steps < STEPS_PER_INTERVAL * estimate.intervals:
            reason = (
                f"{over}; {ratio.format('<')}, but a save point every {estimate.steps / estimate.intervals:.1f} "
                "steps: GaussAdjoint, as InterpolatingAdjoint would re-solve each short interval from a fresh start"
            )
            return self._resolved(GaussAdjoint(), reason, estimate)
        if estimate.interval > budget:
            reason = (
                f"{over}, and so does InterpolatingAdjoint's dense output over the longest save interval "
                f"(≈ {_size(estimate.interval)}): GaussAdjoint, memory independent of the steps"
            )
            return self._resolved(GaussAdjoint(), reason, estimate)
        reason = f"{over}; {ratio.format('<')}: InterpolatingAdjoint(seminorm=True)"
        return self._resolved(InterpolatingAdjoint(seminorm=True), reason, estimate)

    def solve(self, prob: ODEProblem, solver: AbstractSolver, opts: SolveOptions, throw: bool) -> Solution:
        resolved = self.choose(prob, solver, opts)
        sol = resolved.chosen.solve(prob, solver, opts, throw)
        sol.sensealg = resolved
        return sol

    def choose_per_sample(self, prob: ODEProblem, solver: AbstractSolver, opts: SolveOptions) -> AutoAdjoint:
        """The choice for a per-sample solve (`batch_axis=0`), which DirectAdjoint and
        GaussAdjoint differentiate: DirectAdjoint when the per-sample loop's graph, measured by
        probing that loop, fits the budget; else GaussAdjoint (per element), or DirectAdjoint
        with a warning where GaussAdjoint does not apply (per-element saveat, tensors f uses
        outside `prob.params`)."""
        outcome = self._measured(
            prob, solver, opts, _measure_per_sample, "the per-sample loop's recorded graph", "batched steps"
        )
        if isinstance(outcome, AutoAdjoint):
            return outcome
        estimate, over, _ = outcome
        layout = StateLayout(prob.y0)
        if opts.saveat_batch is not None:
            only_direct = "GaussAdjoint per element needs save times shared by the batch"
        else:
            batch = prob.y0.shape[0]
            joint_f = dataclasses.replace(prob, f=lambda t, y: prob.f(t.expand(batch), y))  # f reads (B,) times
            nfe = Stats()
            only_direct = _closure_problem(joint_f, layout, layout.flatten(prob.y0), time_span(prob)[0], nfe)
            estimate = dataclasses.replace(estimate, nfe=estimate.nfe + nfe.nfe)
        if only_direct is not None:
            reason = f"{over}, but DirectAdjoint is chosen anyway: {only_direct}"
            warnings.warn(f"AutoAdjoint: {reason}", UserWarning, stacklevel=4)
            return self._resolved(DirectAdjoint(), reason, estimate)
        reason = f"{over}: with batch_axis=0 the adjoint per element is GaussAdjoint, memory independent of the steps"
        return self._resolved(GaussAdjoint(), reason, estimate)

    def _measured(
        self, prob: ODEProblem, solver: AbstractSolver, opts: SolveOptions, measure: Callable, what: str, steps: str
    ) -> AutoAdjoint | tuple[MemoryEstimate, str, float]:
        """DirectAdjoint resolved where it needs no measurement or the graph fits the budget;
        otherwise (the estimate, "<the graph> exceeds <the budget>", the budget)."""
        if not torch.is_grad_enabled():
            reason = (
                "gradients are off (torch.no_grad() or inference mode), so DirectAdjoint is the plain forward solve"
            )
            return self._resolved(DirectAdjoint(), reason, None)
        if self.memory_budget == math.inf:
            return self._resolved(DirectAdjoint(), "memory_budget is unlimited: DirectAdjoint, the fastest", None)
        device = StateLayout(prob.y0).device
        budget, source = (
            (float(self.memory_budget), "given") if self.memory_budget is not None else _default_budget(device)
        )
        estimate = measure(prob, solver, opts, budget, source)
        if estimate is None:
            reason = "nothing the solve reads requires grad, so DirectAdjoint is the plain forward solve"
            return self._resolved(DirectAdjoint(), reason, None)
        graph = (
            f"{what} (≈ {_size(estimate.graph)}: {estimate.steps:.0f} {steps} × "
            f"{_size(estimate.per_step)} + {_size(estimate.shared)})"
        )
        limit = f"the memory budget of {_size(budget)} ({source})"
        if estimate.graph <= budget:
            return self._resolved(DirectAdjoint(), f"{graph} fits {limit}: DirectAdjoint, the fastest", estimate)
        return estimate, f"{graph} exceeds {limit}", budget

    def _resolved(
        self, chosen: AbstractSensitivityAlgorithm, reason: str, estimate: MemoryEstimate | None
    ) -> AutoAdjoint:
        resolved = AutoAdjoint(memory_budget=self.memory_budget)
        object.__setattr__(resolved, "chosen", chosen)
        object.__setattr__(resolved, "reason", reason)
        object.__setattr__(resolved, "estimate", estimate)
        return resolved


class _Held:
    """A saved tensor as the autograd graph keeps it: alive exactly as long as that graph."""

    __slots__ = ("__weakref__", "tensor")

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor


class SavedBytes:
    """The bytes of the tensors autograd has saved for backward and still holds, each storage
    once (a tensor saved by several operations, or a view of a saved storage, counts once).

    Use as `with counter.hooks(): ...`, then `counter.total()`: graphs freed since (a rejected
    step's) no longer count.
    """

    def __init__(self) -> None:
        self._live: weakref.WeakSet[_Held] = weakref.WeakSet()

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        def pack(tensor: torch.Tensor) -> _Held:
            # Detached: a tensor an operation saved of its own output (tanh's) has that operation
            # as its grad_fn, which would hold this record, which would hold the tensor: a cycle
            # through C++ that Python's gc cannot free, keeping the probe's graph alive.
            held = _Held(tensor.detach())
            self._live.add(held)
            return held

        return torch.autograd.graph.saved_tensors_hooks(pack, lambda held: held.tensor)

    def total(self) -> int:
        storages = {}
        for held in list(self._live):
            storage = held.tensor.untyped_storage()
            storages[(held.tensor.device, storage.data_ptr())] = storage.nbytes()
        return sum(storages.values())


class _Meter(Observer):
    """Reads the saved bytes before the first step and the probe's progress after each accepted one."""

    def __init__(self, saved: SavedBytes):
        self.saved = saved
        self.start_bytes = 0
        self.naccept = 0
        self.records_graph = False  # whether an accepted step's state requires grad
        self.t: float | None = None
        self.last: AcceptedStep | None = None

    def start(self, t0: float, y0: torch.Tensor) -> None:
        self.start_bytes = self.saved.total()
        self.t = t0

    def accepted(self, step: AcceptedStep) -> None:
        self.naccept += 1
        self.records_graph |= step.state1.requires_grad
        self.t = step.t_new
        self.last = step
        return None


def _measure(
    prob: ODEProblem, solver: AbstractSolver, opts: SolveOptions, budget: float, source: str
) -> MemoryEstimate | None:
    """Run the forward loop for a few steps under autograd at loosened tolerances, counting the
    saved bytes, and extrapolate to the whole solve; None if the solve records no graph. The
    user's observers, events and progress bar do not see the probe; its graph is freed on return."""
    layout = StateLayout(prob.y0)
    t0, t1 = time_span(prob)
    rtol = float(torch.as_tensor(opts.rtol).max())
    loosen = max(1.0, min(PROBE_LOOSEN, PROBE_LOOSEST_RTOL / rtol)) if opts.adaptive and rtol > 0 else 1.0
    probe_opts = dataclasses.replace(
        opts,
        rtol=opts.rtol * loosen,
        atol=opts.atol * loosen,
        max_steps=min(PROBE_STEPS, opts.max_steps),
        saveat_tensor=None,
        regularize=None,
        events=(),
        observers=(),
        progress=False,
    )
    saved = SavedBytes()
    meter = _Meter(saved)
    with saved.hooks():
        probe = integrate(prob, solver, probe_opts, throw=False, observers=[meter])
        end_bytes = saved.total()
        # Dense coefficients per step, for InterpolatingAdjoint's interval (usually cached already).
        with torch.no_grad():
            r = meter.last.coefficients() if meter.last is not None else None
        rows = 0 if r is None else r.shape[0]
    times = [t for t in prob.tspan if isinstance(t, torch.Tensor)]
    times_want_grad = opts.saveat_tensor is not None or any(t.requires_grad for t in times)
    # Without an accepted step the probe cannot tell whether f reaches a tensor that requires grad.
    if not (meter.records_graph or meter.naccept == 0 or times_want_grad):
        return None

    steps = float(meter.naccept)
    if probe.retcode is not ReturnCode.Success:
        reached = meter.t if meter.t is not None else t0
        remaining = abs(t1 - reached)
        # The step the controller proposed last, else (no step accepted) the whole span in one.
        h = abs(probe.dt_next) if probe.dt_next and math.isfinite(probe.dt_next) else remaining
        steps += math.ceil(remaining / h) if h > 0 else 0
        steps += sum(1 for s in opts.tstops if (s - reached) * (t1 - reached) > 0)  # each may split a step
    if loosen > 1:
        steps *= loosen ** (1.0 / ((solver.error_order or 1) + 1))
    steps = max(steps, 1.0)
    # Without an accepted step, price each step as the first evaluation: conservatively high.
    per_step = (end_bytes - meter.start_bytes) / meter.naccept if meter.naccept else float(meter.start_bytes)
    # InterpolatingAdjoint re-solves one save interval at a time, keeping its dense output.
    span = abs(t1 - t0)
    if opts.saveat is None or span == 0:
        longest, intervals = 1.0 / steps, math.ceil(steps)
    else:
        ends = [t0, *opts.saveat]
        longest = max(abs(b - a) for a, b in itertools.pairwise(ends)) / span if len(ends) > 1 else 0.0
        intervals = max(1, sum(1 for s in opts.saveat if s != t0))
    state_bytes = layout.numel * torch.empty((), dtype=layout.dtype).element_size()
    return MemoryEstimate(
        graph=meter.start_bytes + steps * per_step,
        budget=budget,
        budget_source=source,
        steps=steps,
        per_step=per_step,
        shared=float(meter.start_bytes),
        interval=float(math.ceil(steps * longest) * rows * state_bytes),
        intervals=intervals,
        params=sum(p.numel() for p in prob.params if p.requires_grad),
        state=layout.numel,
        nfe=probe.stats.nfe,
    )


def _measure_per_sample(
    prob: ODEProblem, solver: AbstractSolver, opts: SolveOptions, budget: float, source: str
) -> MemoryEstimate | None:
    """`_measure` for the per-sample loop: a few batched steps under autograd at loosened
    tolerances; the loop then runs until its slowest element ends, each batched step recording
    every row, so the graph is priced at the slowest element's estimated steps."""
    from ..integrate.per_sample import integrate_per_sample

    layout = StateLayout(prob.y0)
    t1 = time_span(prob)[1]
    rtol = float(torch.as_tensor(opts.rtol).max())
    loosen = max(1.0, min(PROBE_LOOSEN, PROBE_LOOSEST_RTOL / rtol)) if opts.adaptive and rtol > 0 else 1.0
    probe_opts = dataclasses.replace(
        opts, rtol=opts.rtol * loosen, atol=opts.atol * loosen, max_steps=min(PROBE_STEPS, opts.max_steps)
    )
    saved = SavedBytes()
    sizes: list[int] = []
    records_graph = False

    def on_step(t, h, y, r, accepted) -> None:
        nonlocal records_graph
        sizes.append(saved.total())
        records_graph |= y.requires_grad

    start = 0.0
    with saved.hooks():
        probe = integrate_per_sample(prob, solver, probe_opts, throw=False, on_step=on_step)
        end_bytes = saved.total()
    times = [t for t in prob.tspan if isinstance(t, torch.Tensor)]
    times_want_grad = opts.saveat_tensor is not None or any(t.requires_grad for t in times)
    if not (records_graph or not sizes or times_want_grad):
        return None
    element = probe.stats.per_element
    steps = element.naccept.to(torch.float64)
    remaining = (t1 - element.t.to(torch.float64)).abs()
    h = torch.as_tensor(probe.dt_next, dtype=torch.float64).abs()
    more = torch.where((remaining > 0) & (h > 0), torch.ceil(remaining / h.clamp_min(1e-300)), 0.0)
    steps = float((steps + more).max())
    if loosen > 1:
        steps *= loosen ** (1.0 / ((solver.error_order or 1) + 1))
    steps = max(steps, 1.0)
    if len(sizes) >= 2:  # the growth from the first recorded step on, and what came before it
        per_step = (sizes[-1] - sizes[0]) / (len(sizes) - 1)
        start = max(0.0, sizes[0] - per_step)
    else:  # priced conservatively high: everything the probe recorded, per step
        per_step = float(end_bytes)
    return MemoryEstimate(
        graph=start + steps * per_step,
        budget=budget,
        budget_source=source,
        steps=steps,
        per_step=per_step,
        shared=float(start),
        interval=0.0,
        intervals=1,
        params=sum(p.numel() for p in prob.params if p.requires_grad),
        state=layout.numel,
        nfe=probe.stats.nfe,
    )


def _closure_problem(prob: ODEProblem, layout: StateLayout, y0: torch.Tensor, t0: float, stats: Stats) -> str | None:
    """Why the adjoints would refuse this problem's parameters (their own checks), or None."""
    params = tuple(p for p in prob.params if p.requires_grad)
    try:
        _check_independent(params)
        VectorField(prob, layout, params, stats).check_closure(t0, y0.detach())
    except ValueError as error:
        return str(error)
    return None


def _default_budget(device: torch.device) -> tuple[float, str]:
    """BUDGET_FRACTION of the memory free now on `device`, and where that figure came from."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # Memory PyTorch's caching allocator holds but does not use is free to the next graph.
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return BUDGET_FRACTION * (free + cached), "half the free CUDA memory"
    if device.type == "cpu":
        available = _mem_available()
        if available is not None:
            return BUDGET_FRACTION * available, "half of MemAvailable"
    return FALLBACK_BUDGET, f"the default for {device.type} without a free-memory reading"


def _mem_available() -> float | None:
    """MemAvailable from /proc/meminfo (Linux), in bytes; None where it cannot be read."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024  # the kernel's "kB" are KiB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _size(nbytes: float) -> str:
    """A byte count for people: 512 B, 12.3 KiB, 4.0 GiB."""
    if math.isinf(nbytes):
        return "unlimited"
    if nbytes < 1024:
        return f"{nbytes:.0f} B"
    exponent = min(int(math.log(nbytes, 1024)), 3)
    return f"{nbytes / 1024**exponent:.1f} {('KiB', 'MiB', 'GiB')[exponent - 1]}"
