"""Per-sample step sizes (`solve(..., batch_axis=0)`): each element of a batch (dim 0 of y0)
integrated with its own time, step size and accept/reject, in one batched loop.

The loop mirrors `loop.py` element by element: the same initial step, the same 1% stretch onto
stops, the same controller rule applied elementwise with torch ops (`adapt_vectorized`), the
error norm over the element's own entries, and the stepper's arithmetic (`per_sample_step.py`).
So each element takes the steps a solve of it alone would take. All per-element state lives on
the device as (B,) tensors; each step reads one small tensor to the host (how many elements
still run, how many save points the step passed), the step's only sync. Elements that finished
or failed are frozen: they ride along in the batched calls of f with h = 0, and `torch.where`
(never multiplication by a mask) keeps their state, so NaN in one element reaches no other.

f is called as f(t, y) with t of shape (B,), each element's own time, in y's dtype, and y of the
user's shape (B, ...).
"""

from __future__ import annotations

from typing import Callable

import torch

from ..norms import max_norm, rms_norm
from ..problem import ElementStats, ODEProblem, ReturnCode, Solution, SolveError, Stats
from ..solvers.runge_kutta import AbstractExplicitRK
from ..step_control import AbstractVectorizedController, initial_steps
from .options import EPS, SolveOptions, time_span
from .per_sample_output import ElementDenseOutput, SaveBuffer
from .per_sample_step import BatchedRKStepper, Field, max_rows, rms_rows
from .state import flow_shift

# Each element's state of the solve; the nonzero codes are its failures.
_RUNNING, _MAX_ITERS, _DT_LESS_THAN_MIN, _UNSTABLE = 0, 1, 2, 3
_CODES = (ReturnCode.Success, ReturnCode.MaxIters, ReturnCode.DtLessThanMin, ReturnCode.Unstable)

# After each batched step in which some element advanced: (t, h, y_n, r, accepted), each per element
# (r: the dense coefficients (P, B, n); rows not accepted hold the rejected attempt).
StepRecord = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]


def check_per_sample(solver: object, opts: SolveOptions) -> None:
    """Refuse by name what the per-sample loop does not do."""
    if not isinstance(solver, AbstractExplicitRK):
        raise ValueError(
            f"batch_axis=0 steps explicit Runge–Kutta solvers (DP5(), Tsit5(), BS3(), DP8(), Heun(), or fixed steps "
            f"with RK4(), Euler(), ...); got {solver!r}"
        )
    if opts.adaptive and not isinstance(opts.controller, AbstractVectorizedController):
        raise ValueError(
            f"batch_axis=0 controls each element's steps with PIController() or IController() (or fixed steps); "
            f"got controller={opts.controller!r}"
        )
    if opts.internalnorm is not rms_norm and opts.internalnorm is not max_norm:
        raise ValueError(
            "batch_axis=0 measures each element's error over its own entries with pyode.rms_norm (the default) "
            f"or pyode.max_norm; got internalnorm={opts.internalnorm!r}"
        )
    asked = {
        "events": bool(opts.events),
        "regularize": opts.regularize is not None,
        "observers": bool(opts.observers),
        "progress": bool(opts.progress),
        "d_discontinuities": bool(opts.discontinuities),
        "compile": opts.compile is not None,
    }
    refused = [name for name, on in asked.items() if on]
    if refused:
        raise ValueError(f"{', '.join(refused)}: not available with batch_axis=0; solve without batch_axis")


class _PerSampleLoop:
    """One per-sample solve: the setup, then `run`, then `solution`."""

    def __init__(
        self,
        prob: ODEProblem,
        solver: AbstractExplicitRK,
        opts: SolveOptions,
        norm: Callable[[torch.Tensor], torch.Tensor] | None,
        h0: torch.Tensor | None,
        on_step: StepRecord | None,
    ):
        self.prob, self.solver, self.opts, self.on_step = prob, solver, opts, on_step
        B = prob.y0.shape[0]
        self.y = y = prob.y0.reshape(B, -1)
        self.B, device, tdtype = B, y.device, opts.time_dtype
        self.t0, self.t1 = t0, t1 = time_span(prob)
        self.direction = direction = 1.0 if t1 >= t0 else -1.0
        rtol, atol = (x.view(B, -1) if isinstance(x, torch.Tensor) else x for x in (opts.rtol, opts.atol))
        norm = norm or (rms_rows if opts.internalnorm is rms_norm else max_rows)
        self.stats = Stats()
        self.f = f = Field(prob.f, prob.y0, self.stats)
        self.t = torch.full((B,), t0, dtype=tdtype, device=device)
        self.k1 = f(self.t, y)
        on_graph = self.k1.requires_grad or y.requires_grad
        self.stepper = BatchedRKStepper(solver, f, y, tdtype, rtol, atol, norm, on_graph)
        self.nfe = torch.ones(B, dtype=torch.long, device=device)
        if t0 == t1:
            self.h_abs = torch.zeros_like(self.t)
        elif h0 is not None:
            self.h_abs = h0.to(self.t).clamp_max(opts.dtmax)
        elif opts.adaptive and opts.dt is None:
            h = initial_steps(f, t0, y, self.k1, direction, solver.order, rtol, atol, norm, tdtype)
            self.h_abs = h.clamp_max(opts.dtmax)  # NaN stays NaN
            self.nfe += 1
        else:
            self.h_abs = torch.full_like(self.t, min(opts.dt, opts.dtmax))
        self.code = torch.where(torch.isfinite(self.h_abs), _RUNNING, _UNSTABLE)
        self.naccept = torch.zeros_like(self.nfe)
        self.nsteps = torch.zeros_like(self.nfe)
        stops = [s for s in opts.tstops if direction * (s - t0) > 0 and direction * (t1 - s) > 0] + [t1]
        self.stops = torch.tensor(stops, dtype=tdtype, device=device)
        self.stop_i = torch.zeros_like(self.nfe)
        self.control = opts.controller.init_vectorized(solver.error_order, self.t) if opts.adaptive else None
        self.dense = ElementDenseOutput(t0, direction, y, prob.y0.shape, tdtype) if opts.dense else None
        self._start_saves()

    def _start_saves(self) -> None:
        opts, B, t0 = self.opts, self.B, self.t0
        if opts.saveat_batch is not None:
            times = opts.saveat_batch
        elif opts.saveat_tensor is not None:
            times = opts.saveat_tensor.unsqueeze(0).expand(B, -1)
        else:
            saves = opts.saveat if opts.saveat is not None else ((t0,) if t0 == self.t1 else (t0, self.t1))
            times = torch.tensor(saves, dtype=opts.time_dtype).unsqueeze(0).expand(B, -1)
        self.times_out = times
        times = times.to(dtype=opts.time_dtype, device=self.y.device)
        self.saves_grad = times.requires_grad and torch.is_grad_enabled()
        if not self.saves_grad:
            times = times.detach()
        self.saves = saves = SaveBuffer(times, self.direction, self.y)
        at_t0 = times[:, 0].detach() == t0
        y0 = self.y
        if self.saves_grad:
            # The value is y0; its derivative with respect to its save time is the flow's, f(t0, y0).
            delta = (times[:, 0] - times[:, 0].detach()).unsqueeze(1)
            y0 = flow_shift(lambda t, y: self.f(t.reshape(-1), y), t0, y0, delta, k=self.k1)
            self.nfe += at_t0
        saves.save_start(y0, at_t0)

    def running(self) -> torch.Tensor:
        before_end = (self.t1 - self.t > 0) if self.direction > 0 else (self.t - self.t1 > 0)
        return (self.code == _RUNNING) & before_end

    def run(self) -> None:
        active = self.running()
        if not bool(active.any()):
            return
        attempts = 1
        while True:
            more, active = self._step(active, attempts >= self.opts.max_steps)
            if not more:
                return
            attempts += 1

    def _propose(self, active: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Each element's next step (h, t_new, whether it lands on its stop, active), as `loop.py`
        proposes it: stretched by up to 1% to land on a stop; an element whose step no longer
        moves its time fails with DtLessThanMin."""
        opts, t, h_abs, direction = self.opts, self.t, self.h_abs, self.direction
        stop = self.stops[self.stop_i.clamp_max(len(self.stops) - 1)] if len(self.stops) > 1 else self.t1
        remaining = stop - t if direction > 0 else t - stop
        if opts.adaptive:
            reach = (1.01 * h_abs).clamp_max(opts.dtmax)
        else:
            largest = t.abs().clamp_min(abs(stop)) if isinstance(stop, float) else torch.maximum(t.abs(), stop.abs())
            reach = h_abs + 64 * EPS * largest
        lands = reach >= remaining
        h = torch.where(lands, remaining, h_abs)
        if direction < 0:
            h = -h
        t_new = torch.where(lands, stop, t + h)
        stuck = active & (t_new == t)
        self.code = torch.where(stuck, _DT_LESS_THAN_MIN, self.code)
        active = active & ~stuck
        return torch.where(active, h, 0.0), t_new, lands, active

    def _step(self, active: torch.Tensor, last_allowed: bool) -> tuple[bool, torch.Tensor]:
        """One batched step: propose, step, judge each element, update, save. Its one host sync
        reads whether any element still runs and how many save points the step passed; returns
        that and which elements run. `last_allowed`: those still running have used up max_steps."""
        opts, stepper = self.opts, self.stepper
        h, t_new, lands, active = self._propose(active)
        stages, y1, bad = stepper.step(self.t, self.y, self.k1, h)
        if opts.adaptive:
            ratio = stepper.error_ratio(stages, self.y, y1, h, bad)
            accepted, h_next, self.control = opts.controller.adapt_vectorized(ratio, h.abs(), self.control)
            accept = accepted & active
            floor = (16 * EPS * self.t.abs()).clamp_min(opts.dtmin)  # as `options.step_floor`, per element
            failed = active & ~accepted & ~(h_next >= floor)  # also NaN
            self.h_abs = torch.where(active, torch.where(accepted, h_next.clamp_max(opts.dtmax), h_next), self.h_abs)
            self.code = torch.where(failed, torch.where(torch.isfinite(ratio), _DT_LESS_THAN_MIN, _UNSTABLE), self.code)
        else:
            # Fixed steps have no error test: an element whose step blew up fails there, and its
            # state stays the last finite one, so that in the batched calls of f it rides along
            # with (and its guarded stage inputs fall back to) finite values, and NaN reaches no
            # other element's gradient.
            finite = torch.isfinite(y1).all(dim=1)
            accept = active & finite
            self.code = torch.where(active & ~finite, _UNSTABLE, self.code)
        t, y, k1 = self.t, self.y, self.k1
        column = accept.unsqueeze(1)
        self.t = torch.where(accept, t_new, t)
        self.y = torch.where(column, y1, y)
        if stepper.fsal:
            self.k1 = torch.where(column, stages[-1], k1)
        if len(self.stops) > 1:
            self.stop_i += accept & lands
        self.naccept += accept
        self.nsteps += active
        self.nfe.add_(active, alpha=stepper.s - 1)
        running = self.running()
        if last_allowed:
            self.code = torch.where(running, _MAX_ITERS, self.code)
            running = torch.zeros_like(running)

        saves = self.saves
        passed = saves.passed(self.t)
        # Which elements' steps need their interpolant (dense output, a save point inside the step):
        # for DP8's extra stages and a non-FSAL method's f(t + h, y1), counted as `loop.py` counts them.
        if self.dense is not None or self.on_step is not None:
            wants = accept
        elif self.saves_grad:
            wants = passed > saves.next
        else:
            wants = saves.before(self.t) > saves.next if stepper.extra else None
        report = [running.sum(), (passed - saves.next).amax(), accept.sum()]
        if stepper.extra:
            report.append(wants.sum())
        n_running, width, n_accepted, *n_wants = torch.stack(report).tolist()  # the step's one sync
        if n_accepted:
            self.stats.naccept += 1
        else:
            self.stats.nreject += 1

        every = self.dense is not None or self.on_step is not None
        needs_r = (every and n_accepted > 0) or (width > 0 and (not stepper.extra or n_wants[0] > 0))
        f1 = stages[-1] if stepper.fsal else None
        if not stepper.fsal and (n_running or needs_r):
            f1 = self.f(self.t, self.y)  # f(t + h, y1) where accepted: the next k1
            self.k1 = torch.where(column, f1, k1)
            self.nfe += accept & (running | wants)
        r = None
        if needs_r:
            r = stepper.coefficients(stages, t, h, y, y1, f1)
            if stepper.dense_stages:
                self.nfe.add_(wants, alpha=len(stepper.dense_stages))
        if width:
            saves.save_step(width, passed, t, h, y, r, self.t, self.y, end_exact=not self.saves_grad)
        if n_accepted and self.dense is not None:
            self.dense.append(t, h, y, r, accept)
        if n_accepted and self.on_step is not None:
            self.on_step(t, h, y, r, accept)
        return n_running > 0, running

    def solution(self, throw: bool) -> Solution:
        saves = self.saves
        ys = saves.result()  # (T, B, n)
        reached = torch.arange(saves.T, device=ys.device).unsqueeze(1) < saves.next
        # A state that overflowed without failing an error test: one check, for the whole solve.
        finite = ~(~torch.isfinite(ys).all(dim=2) & reached).any(dim=0) & torch.isfinite(self.y).all(dim=1)
        self.code = torch.where(~finite & (self.code != _UNSTABLE), _UNSTABLE, self.code)
        codes = [_CODES[c] for c in self.code.tolist()]
        if self.dense is not None:
            self.dense.reached = self.t
        self.stats.per_element = ElementStats(
            nfe=self.nfe, naccept=self.naccept, nreject=self.nsteps - self.naccept, retcode=tuple(codes), t=self.t
        )
        times = self.times_out
        if not times.requires_grad:
            times = times.to(dtype=self.opts.time_dtype, device=ys.device)
        failed = [i for i, code in enumerate(codes) if not code.successful]
        sol = Solution(
            t=times[0] if self.opts.saveat_batch is None else times,
            y=ys.view(saves.T, *self.prob.y0.shape),
            stats=self.stats,
            retcode=codes[failed[0]] if failed else ReturnCode.Success,
            prob=self.prob,
            solver=self.solver,
            dense=self.dense,
            dt_next=self.h_abs,
        )
        if throw and failed:
            error = SolveError(codes[failed[0]], float(self.t[failed[0]]), sol)
            shown = ", ".join(f"{i} ({codes[i].name} at t = {float(self.t[i]):.6g})" for i in failed[:10])
            more = f" and {len(failed) - 10} more" if len(failed) > 10 else ""
            error.args = (f"{error.args[0]}. Elements that failed: {shown}{more}",)
            raise error
        return sol


def integrate_per_sample(
    prob: ODEProblem,
    solver: AbstractExplicitRK,
    opts: SolveOptions,
    throw: bool = True,
    *,
    norm: Callable[[torch.Tensor], torch.Tensor] | None = None,
    h0: torch.Tensor | None = None,
    on_step: StepRecord | None = None,
) -> Solution:
    """Run the per-sample loop; autograd records it unless the caller disabled grad.

    For the adjoints' backward solves: `norm` maps each element's scaled error (B, n) to its norm
    (B,), replacing `opts.internalnorm`; `h0` (B,) are the first steps (instead of `opts.dt` or
    the initial-step heuristic); `on_step` receives every batched step's record.
    """
    check_per_sample(solver, opts)
    loop = _PerSampleLoop(prob, solver, opts, norm, h0, on_step)
    loop.run()
    return loop.solution(throw)
