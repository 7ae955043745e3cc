"""The integration loop: the one forward loop that every sensitivity method runs.

Step control runs on host floats: each step reads its error ratio once (`.item()`, the step's
only device sync) and decides accept/reject in plain Python. States travel as one flat vector,
so a stage combination is one matrix-vector product over the stacked stages. This module
imports nothing from `sensitivity/`, `backends/` or `solve.py`.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .. import interpolation
from ..interpolation import DenseOutput
from ..problem import ODEProblem, ReturnCode, Solution, SolveError, Stats
from ..regularizers import Accumulator
from ..solvers.base import AbstractSolver
from ..step_control import initial_step
from .options import EPS, SolveOptions, time_span
from .state import StateLayout, flow_shift

StepHook = Callable[[float, float, torch.Tensor, torch.Tensor, torch.Tensor], None]


def integrate(
    prob: ODEProblem, solver: AbstractSolver, opts: SolveOptions, throw: bool = True, on_step: StepHook | None = None
) -> Solution:
    """Run the forward loop; autograd records it unless the caller disabled grad.

    `on_step(t, h, s_n, s_n+1, r)` is called after every accepted step with the stepper's state
    before and after it (the flat user state for Runge–Kutta methods) and the step's dense
    coefficients r (see `interpolation.py`; None for steppers without an interpolant): the step
    record that the quadrature and reversible adjoints read. The regularizers read the same
    record inside the loop.
    """
    layout = StateLayout(prob.y0)
    y0 = layout.flatten(prob.y0)
    dtype, device = y0.dtype, y0.device
    t0, t1 = time_span(prob)
    direction = 1.0 if t1 >= t0 else -1.0
    stats = Stats()
    user_f = prob.f

    def f(t: float, y: torch.Tensor) -> torch.Tensor:
        stats.nfe += 1
        return layout.call(user_f, t, y)

    def f_at(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # for save times that require grad
        stats.nfe += 1
        return layout.call_at(user_f, t, y)

    norm = layout.flat_norm(opts.internalnorm)
    stepper = solver.stepper(f, dtype, device)
    controller = opts.controller
    control = controller.init(solver.error_order) if opts.adaptive else None

    k1 = f(t0, y0)
    output = stepper.output

    out_t: list[float] = []
    out_y: list[torch.Tensor] = []
    saves = opts.saveat
    save_i = 0
    if saves is None:
        out_t.append(t0)
        out_y.append(y0.unsqueeze(0))
    else:
        while save_i < len(saves) and saves[save_i] == t0:
            out_t.append(t0)
            if opts.saveat_tensor is not None:
                # The value is y0; its derivatives with respect to its save time are the flow's.
                out_y.append(flow_shift(f_at, t0, y0, opts.saveat_tensor[save_i] - t0, k=k1).unsqueeze(0))
            else:
                out_y.append(y0.unsqueeze(0))
            save_i += 1
    dense = DenseOutput(t0, t1, y0, layout.unflatten_batch, layout.unflatten, opts.time_dtype) if opts.dense else None

    stops = [s for s in opts.tstops if direction * (s - t0) > 0 and s != t1] + [t1]
    stop_i = 0
    retcode = ReturnCode.Success
    t, y = t0, stepper.init(t0, y0, k1)

    if t0 == t1:
        h_abs = 0.0
    elif opts.adaptive and opts.dt is None:
        h_abs = initial_step(f, t0, y0, k1, direction, solver.order, opts.rtol, opts.atol, norm)
        if not math.isfinite(h_abs):
            retcode = ReturnCode.Unstable
        h_abs = min(h_abs, opts.dtmax)
    else:
        h_abs = min(opts.dt, opts.dtmax)
    grad_enabled = torch.is_grad_enabled()
    regularizer = Accumulator(opts.regularize, solver) if opts.regularize is not None else None
    # The regularizers differentiate the error estimate; otherwise it stays off the graph.
    ratio_on_graph = regularizer is not None and opts.regularize.error is not None
    if not stepper.uses_k1:
        k1 = None

    while retcode is ReturnCode.Success and direction * (t1 - t) > 0:
        if stats.naccept + stats.nreject >= opts.max_steps:
            retcode = ReturnCode.MaxIters
            break
        stop = stops[stop_i]
        remaining = direction * (stop - t)
        # Stretch a step by up to 1% to land on a stop rather than leave a sliver (Hairer's
        # DOPRI5); a fixed step lands when it is within rounding of the stop.
        reach = min(1.01 * h_abs, opts.dtmax) if opts.adaptive else h_abs + 64 * EPS * max(abs(t), abs(stop))
        if reach >= remaining:
            h, t_new, on_stop = direction * remaining, stop, True
        else:
            h, t_new, on_stop = direction * h_abs, t + direction * h_abs, False
        if t_new == t:
            retcode = ReturnCode.DtLessThanMin
            break

        step = stepper.step(t, y, h, k1)

        ratio_tensor = stepper.error_ratio(step, opts.rtol, opts.atol, norm) if ratio_on_graph else None
        if opts.adaptive:
            if ratio_tensor is not None:
                ratio = ratio_tensor.item()
            elif grad_enabled:
                # The controller is not differentiated: keep the error estimate off the graph.
                with torch.no_grad():
                    ratio = stepper.error_ratio(step, opts.rtol, opts.atol, norm).item()
            else:
                ratio = stepper.error_ratio(step, opts.rtol, opts.atol, norm).item()
            accepted, h_next, control = controller.adapt(ratio, abs(h), control)
            if not accepted:
                stats.nreject += 1
                h_abs = h_next
                if not h_abs >= opts.dtmin:  # also NaN
                    retcode = ReturnCode.DtLessThanMin if math.isfinite(ratio) else ReturnCode.Unstable
                continue
            h_abs = min(h_next, opts.dtmax)
        if regularizer is not None:
            regularizer.accept(step, ratio_tensor)
        stats.naccept += 1

        y_new = step.y1
        if on_stop:
            stop_i += 1
        at_end = on_stop and t_new == t1
        next_k1 = step.next_k1
        if next_k1 is None and not at_end and stepper.uses_k1:
            next_k1 = f(t_new, y_new)

        # Save points inside this step, and dense output.
        j0 = save_i
        if saves is not None:
            while save_i < len(saves) and direction * (saves[save_i] - t_new) <= 0:
                save_i += 1
        interior = (
            saves is not None
            and save_i > j0
            and not (save_i - j0 == 1 and saves[j0] == t_new and opts.saveat_tensor is None)
        )
        r = None
        if stepper.interpolates and (interior or dense is not None or on_step is not None):
            f1 = next_k1
            if f1 is None and stepper.dense_needs_f1:
                f1 = f(t_new, y_new)
            r = stepper.dense(step, f1)
            if dense is not None:
                dense.append(t, h, y, r)
        if on_step is not None:
            on_step(t, h, y, y_new, r)
        if saves is None:
            out_t.append(t_new)
            out_y.append(output(y_new).unsqueeze(0))
        elif save_i > j0:
            saved_before = len(out_y)
            out_t.extend(saves[j0:save_i])
            if not stepper.interpolates:
                # Such steppers land on every save point: exactly one, at the step's end.
                assert save_i - j0 == 1 and saves[j0] == t_new, "save points are steps' ends"
                y_save = output(y_new)
                if opts.saveat_tensor is not None and grad_enabled:
                    # The value is y(t_k); its derivatives with respect to its save time are the flow's.
                    y_save = flow_shift(f_at, t_new, y_save, opts.saveat_tensor[j0] - t_new)
                out_y.append(y_save.unsqueeze(0))
            elif opts.saveat_tensor is not None:
                theta = ((opts.saveat_tensor[j0:save_i] - t) / h).to(dtype)
                out_y.append(interpolation.evaluate(y, r, theta))
            else:
                ends_here = saves[save_i - 1] == t_new
                inside = saves[j0 : save_i - 1] if ends_here else saves[j0:save_i]
                if inside:
                    out_y.append(interpolation.evaluate_at(y, r, [(s - t) / h for s in inside]))
                if ends_here:
                    out_y.append(output(y_new).unsqueeze(0))
            if not opts.adaptive and not bool(torch.isfinite(out_y[-1]).all()):
                # Fixed steps have no error test to catch a blow-up, so save points are checked.
                retcode = ReturnCode.Unstable
                del out_t[j0 - save_i :]
                del out_y[saved_before:]
                break
        t, y, k1 = t_new, y_new, next_k1

    if retcode is ReturnCode.Success and saves is not None:
        assert save_i == len(saves), "every save point inside the span is reached"

    if out_y:
        ys = torch.cat(out_y)
    else:
        ys = y0.unsqueeze(0)[:0]  # still on the graph of y0, so backward gives zeros
    if retcode is not ReturnCode.Unstable:
        # A state that overflowed without failing an error test (fixed steps, or an estimate
        # that stayed finite) is caught here, whatever else ended the solve: one check, one
        # sync, for the whole solve.
        finite = torch.isfinite(ys).all(dim=1)
        if not bool(finite.all() & torch.isfinite(y).all()):
            retcode = ReturnCode.Unstable
            kept = int(finite.long().cumprod(0).sum())  # the save points before the first bad one
            ys, out_t = ys[:kept], out_t[:kept]
            t = out_t[-1] if out_t else t0
            if dense is not None:
                dense.truncate(t)
    if opts.saveat_tensor is not None:
        ts = opts.saveat_tensor[: len(out_t)]
    else:
        ts = torch.tensor(out_t, dtype=opts.time_dtype, device=device)
    sol = Solution(
        t=ts,
        y=layout.unflatten_batch(ys),
        stats=stats,
        retcode=retcode,
        prob=prob,
        solver=solver,
        dense=dense,
        dt_next=h_abs,
    )
    if regularizer is not None:
        sol.error_estimate, sol.stiffness_estimate = regularizer.results(y0)
    if throw and not retcode.successful:
        raise SolveError(retcode, t, sol)
    return sol
