"""The integration loop: the one forward loop that every sensitivity method runs.

step -> controller -> accept/reject -> events -> observers. Step control runs on host floats:
each step reads its error ratio once (`.item()`, the step's only device sync) and decides in
plain Python. States travel as one flat vector. What plugs in — save points and dense output
(`saving.py`), events (`events.py`), the regularizers, the adjoints' recorders, the progress bar,
the user's observers — reads each accepted step's record (`record.py`). This package imports
nothing from `sensitivity/`, `backends/` or `solve.py`.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Sequence

import torch

from ..problem import ODEProblem, ReturnCode, Solution, SolveError, Stats
from ..regularizers import Accumulator
from ..solvers.base import AbstractSolver, AbstractStepper, DenseStepper, StepResult, StepStatus
from ..step_control import initial_step
from .compiled import compiled_stepper
from .events import EventHandler
from .options import EPS, SolveOptions, step_floor, time_span
from .progress import ProgressBar
from .record import AcceptedStep, Observer, StepRecorder
from .saving import Saver
from .state import StateLayout

StepHook = Callable[[float, float, torch.Tensor, torch.Tensor, torch.Tensor], None]

# A step that failed for a reason of its own (no error estimate to scale by) is retried this much smaller.
_FAILED_STEP_FACTOR = 0.25


class _Regularizing(Observer):
    """R_E and R_S accumulate from the accepted steps' records."""

    def __init__(self, accumulator: Accumulator, wants_graph: bool):
        self.accumulator, self.wants_error_graph = accumulator, wants_graph

    def accepted(self, step: AcceptedStep) -> None:
        self.accumulator.accept(step.result, step.ratio)
        return None


def _overrides(observers: Sequence[Observer], name: str) -> list[Observer]:
    return [o for o in observers if getattr(type(o), name) is not getattr(Observer, name)]


def _nudge(t: float, toward: float, dtype: torch.dtype) -> float:
    """The next representable time after t, toward `toward`, in the state's dtype."""
    return float(torch.nextafter(torch.tensor(t, dtype=dtype), torch.tensor(toward, dtype=dtype)))


class _Field:
    """f on flat states, counted, with torchdiffeq's `perturb` at discontinuities: while a step
    lands on a discontinuity, stages there see the time just before it."""

    def __init__(self, f: Callable, layout: StateLayout, stats: Stats, direction: float):
        self.user_f, self.layout, self.stats, self.direction = f, layout, stats, direction
        self.jump: float | None = None  # the discontinuity the current step lands on
        self.before = 0.0
        self.slack = 0.0

    def __call__(self, t: float, y: torch.Tensor) -> torch.Tensor:
        self.stats.nfe += 1
        return self.layout.call(self.user_f, self.resolve_time(t), y)

    def resolve_time(self, t: float) -> float:
        """The time f is called with at t now: the time before the discontinuity the current
        step lands on, for t at or past it. (A stepper that evaluates f again after the step,
        as the implicit solvers' gradient hooks do, calls it with this time.)"""
        if self.jump is not None and self.direction * (t - self.jump) >= -self.slack:
            return self.before
        return t

    def at(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # for save times that require grad
        self.stats.nfe += 1
        return self.layout.call_at(self.user_f, t, y)

    def landing_on(self, jump: float | None, dtype: torch.dtype) -> None:
        self.jump = jump
        if jump is not None:
            self.before = _nudge(jump, jump - self.direction, dtype)
            self.slack = 64 * EPS * max(abs(jump), 1e-300)


def _first_step(f, t0, t1, y0, k1, direction, solver, opts, norm) -> float:
    if t0 == t1:
        return 0.0
    if opts.adaptive and opts.dt is None:
        h = initial_step(f, t0, y0, k1, direction, solver.order, opts.rtol, opts.atol, norm)
        return min(h, opts.dtmax)  # NaN stays NaN
    return min(opts.dt, opts.dtmax)


def _error_ratio(stepper: AbstractStepper, step: StepResult, opts: SolveOptions, norm, on_graph: bool):
    """(ratio as a float or None for fixed steps, the ratio tensor when on the graph)."""
    if step.status is StepStatus.FAILED:
        return math.inf, None
    if on_graph:
        ratio = stepper.error_ratio(step, opts.rtol, opts.atol, norm)
        return (ratio.item() if opts.adaptive else None), ratio
    if not opts.adaptive:
        return None, None
    with torch.no_grad():  # the controller is not differentiated: keep the estimate off the graph
        return stepper.error_ratio(step, opts.rtol, opts.atol, norm).item(), None


class _Loop:
    """One run of the loop: the setup, then `run`, then `solution`."""

    def __init__(
        self,
        prob: ODEProblem,
        solver: AbstractSolver,
        opts: SolveOptions,
        on_step: StepHook | None,
        observers: Sequence[Observer],
        events: EventHandler | None,
    ):
        self.prob, self.solver, self.opts = prob, solver, opts
        self.layout = layout = StateLayout(prob.y0)
        self.y0 = y0 = layout.flatten(prob.y0)
        self.dtype = y0.dtype
        self.t0, self.t1 = t0, t1 = time_span(prob)
        self.direction = 1.0 if t1 >= t0 else -1.0
        self.stats = Stats()
        self.field = _Field(prob.f, layout, self.stats, self.direction)
        if events is None and opts.events:
            events = EventHandler(opts.events, layout, opts.time_dtype)
        self.events = events
        if events is not None:
            events.begin(t0, y0)
        self.f = f = events.wrap(self.field) if events is not None else self.field
        k1 = f(_nudge(t0, t1, self.dtype) if t0 in opts.discontinuities else t0, y0)
        self.norm = layout.flat_norm(opts.internalnorm)
        self.stepper = stepper = solver.stepper(f, self.dtype, y0.device)
        configure = getattr(stepper, "configure", None)
        if configure is not None:  # an implicit method: the problem's Jacobian structure, tolerances, counters
            configure(prob, layout, opts.rtol, opts.atol, self.norm, self.stats)
        self.control = opts.controller.init(solver.error_order) if opts.adaptive else None

        self.saver = Saver(opts, layout, t0, t1, stepper.output, self.field.at, isinstance(stepper, DenseStepper))
        self.saver.start_with(y0, k1)
        self.regularizer = Accumulator(opts.regularize, solver) if opts.regularize is not None else None
        watching: list[Observer] = [self.saver]
        if self.regularizer is not None:
            watching.append(_Regularizing(self.regularizer, opts.regularize.error is not None))
        if on_step is not None:
            watching.append(StepRecorder(on_step))
        if opts.progress:
            watching.append(ProgressBar(t0, t1, self.stats))
        watching.extend(opts.observers)
        watching.extend(observers)
        self.watching = watching
        self.attempting, self.rejecting = _overrides(watching, "attempt"), _overrides(watching, "rejected")
        for o in _overrides(watching, "start"):
            o.start(t0, y0)
        if self.events is not None:
            self.events.start(t0, y0, k1)

        # Only the stops inside the span: options shared by several solves (the event segments
        # of an adjoint) may hold stops past t1, which the steps must not run on toward.
        d = self.direction
        self.stops = [s for s in opts.tstops if d * (s - t0) > 0 and d * (t1 - s) > 0] + [t1]
        self.stop_i = 0
        self.t, self.y = t0, stepper.init(t0, y0, k1)
        self.k1 = k1 if stepper.uses_k1 else None
        self.h_abs = _first_step(f, t0, t1, y0, k1, self.direction, solver, opts, self.norm)
        self.retcode = ReturnCode.Success if math.isfinite(self.h_abs) else ReturnCode.Unstable
        # Computed with the graph when an observer reads it (the error regularizer), even under
        # no_grad: the estimate is then its value.
        self.ratio_on_graph = any(o.wants_error_graph for o in watching)
        if opts.compile is not None:
            self._compile(prob)

    def _compile(self, prob: ODEProblem) -> None:
        """Swap in the compiled stepper (`compiled.py`); events keep the eager steps, whose f
        they wrap."""
        if self.events is not None:
            warnings.warn("compile=True: solves with events step eagerly", RuntimeWarning, stacklevel=4)
            return
        opts = self.opts
        self.stepper = compiled_stepper(
            self.stepper,
            self.solver,
            prob.f,
            self.layout,
            self.norm,
            opts.internalnorm,
            opts.compile,
            opts.rtol,
            opts.atol,
            opts.adaptive,
            self.ratio_on_graph,
            opts.regularize is not None,
            opts.time_dtype,
            self.stats,
            lambda: self.field.jump is not None,  # stages at a discontinuity see the time before it
        )

    def run(self) -> None:
        opts, stats, direction = self.opts, self.stats, self.direction
        while self.retcode is ReturnCode.Success and direction * (self.t1 - self.t) > 0:
            if stats.naccept + stats.nreject >= opts.max_steps:
                self.retcode = ReturnCode.MaxIters
                break
            h, t_new, on_stop, jump = self._propose()
            if t_new == self.t:
                self.retcode = ReturnCode.DtLessThanMin
                break
            if jump is not None:
                self.field.landing_on(jump, self.dtype)
            for o in self.attempting:
                o.attempt(self.t, self.stepper.output(self.y), h)
            step = self.stepper.step(self.t, self.y, h, self.k1)
            if step.status is StepStatus.FAILED and not opts.adaptive:  # a fixed step cannot shrink
                self.retcode = ReturnCode.ConvergenceFailure
                break
            ratio, ratio_tensor = _error_ratio(self.stepper, step, opts, self.norm, self.ratio_on_graph)
            if opts.adaptive and not self._judge(step, h, ratio):
                continue
            stats.naccept += 1
            self._accept(AcceptedStep(self.t, h, t_new, step, ratio_tensor, on_stop, self.stepper, self.f), jump)
        for o in _overrides(self.watching, "finish"):
            o.finish(self.t, self.retcode)

    def _propose(self) -> tuple[float, float, bool, float | None]:
        """The next step (h, t_new, whether it lands on a stop, the discontinuity it lands on)."""
        t, opts = self.t, self.opts
        stop = self.stops[self.stop_i]
        remaining = self.direction * (stop - t)
        # Stretch a step by up to 1% to land on a stop rather than leave a sliver (Hairer's
        # DOPRI5); a fixed step lands when it is within rounding of the stop, the rounding that
        # accumulated in t over the span (a backward solve toward 0 carries t1's ulps).
        if opts.adaptive:
            reach = min(1.01 * self.h_abs, opts.dtmax)
        else:
            reach = self.h_abs + 64 * EPS * max(abs(t), abs(stop), abs(self.t0), abs(self.t1))
        if reach >= remaining:
            return self.direction * remaining, stop, True, (stop if stop in opts.discontinuities else None)
        h = self.direction * self.h_abs
        return h, t + h, False, None

    def _judge(self, step: StepResult, h: float, ratio: float) -> bool:
        """Accept or reject the step; a rejection updates the step size and may end the solve."""
        accepted, h_next, self.control = self.opts.controller.adapt(ratio, abs(h), self.control)
        if step.status is StepStatus.FAILED:
            accepted, h_next = False, abs(h) * _FAILED_STEP_FACTOR
        if accepted:
            self.h_abs = min(h_next, self.opts.dtmax)
            return True
        self.stats.nreject += 1
        self.h_abs = h_next
        for o in self.rejecting:
            o.rejected(self.t, self.stepper.output(self.y), h, ratio)
        if not h_next >= step_floor(self.opts, self.t):  # also NaN
            self.retcode = ReturnCode.DtLessThanMin if math.isfinite(ratio) else ReturnCode.Unstable
        return False

    def _accept(self, record: AcceptedStep, jump: float | None) -> None:
        """Events, then the observers, then the state and k1 the next step starts from."""
        events, stepper = self.events, self.stepper
        fired = events is not None and events.locate(record)
        at_end = record.on_stop and record.t_new == self.t1
        needs_k1 = stepper.uses_k1 and not (at_end or jump is not None or fired)
        k1 = record.end_derivative() if needs_k1 else None  # the next step's k1, which dense output reuses
        for o in self.watching:
            code = o.accepted(record)
            if code is not None:
                self.retcode = code
        if jump is not None:
            self.field.landing_on(None, self.dtype)
        if self.retcode is not ReturnCode.Success:
            if self.retcode.successful:  # an observer stopped the solve after this step
                self.t, self.y = record.t_new, record.state1
            return
        self.stop_i += record.on_stop
        self.t, self.y = record.t_new, record.state1
        if fired and events.stop_at_any:
            self.retcode = ReturnCode.Terminated
        elif fired:
            y, terminated, k1 = events.fire(self.t, self.y, self.f)
            if terminated:
                self.y, self.retcode = y, ReturnCode.Terminated
                return
            self.k1 = k1
            self.y = stepper.init(self.t, y, k1)
        elif jump is not None and not at_end:
            self.k1 = self.f(_nudge(self.t, self.t + self.direction, self.dtype), self.y) if stepper.uses_k1 else None
        else:
            self.k1 = k1

    def solution(self, throw: bool) -> Solution:
        ts, ys, retcode, t = self.saver.result(self.retcode, self.t, self.y, self.y0)
        sol = Solution(
            t=ts,
            y=self.layout.unflatten_batch(ys),
            stats=self.stats,
            retcode=retcode,
            prob=self.prob,
            solver=self.solver,
            dense=self.saver.dense,
            dt_next=self.h_abs,
        )
        if self.events is not None:
            events = self.events
            sol.event_time, sol.event_index, sol.event_log = events.results()
        if self.regularizer is not None:
            sol.error_estimate, sol.stiffness_estimate = self.regularizer.results(self.y0)
        if throw and not retcode.successful:
            raise SolveError(retcode, t, sol)
        return sol


def integrate(
    prob: ODEProblem,
    solver: AbstractSolver,
    opts: SolveOptions,
    throw: bool = True,
    on_step: StepHook | None = None,
    observers: Sequence[Observer] = (),
    events: EventHandler | None = None,
) -> Solution:
    """Run the forward loop; autograd records it unless the caller disabled grad.

    `on_step(t, h, s_n, s_n+1, r)` is called after every accepted step with the stepper's state
    before and after it and the step's dense coefficients r (None without an interpolant): the
    record the quadrature and reversible adjoints read. `observers` receive every step (see
    `Observer`). `events` replaces the handler built from `opts.events`: the adjoints' event
    driver carries one across its segments.
    """
    loop = _Loop(prob, solver, opts, on_step, observers, events)
    loop.run()
    return loop.solution(throw)
