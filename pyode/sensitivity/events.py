"""Events with the continuous adjoints: the solve runs segment by segment.

An adjoint's forward pass runs without recording, so the event-time gradient cannot ride on it.
Instead each segment is found first (a solve without gradients that stops at the first crossing
of any event), then solved by the adjoint from the state where the last one ended to the event
time; the event's gradient (implicit function theorem, see `integrate/events.py`) and its
`affect` are applied on the autograd graph between segments. Gradients flow through every
segment's adjoint, every event time and every affect. The cost: each segment's forward solve
runs twice (once to find the event, once inside the adjoint).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch

from ..integrate import StateLayout, integrate
from ..integrate.events import EventHandler
from ..integrate.options import time_span
from ..problem import ODEProblem, ReturnCode, Solution, SolveError, Stats

if TYPE_CHECKING:
    from ..integrate import SolveOptions
    from ..solvers.base import AbstractSolver
    from .base import AbstractSensitivityAlgorithm


def _masked(prob: ODEProblem, layout: StateLayout, handler: EventHandler) -> ODEProblem:
    """The problem with the batch elements that events have stopped held still."""
    if handler.mask is None:
        return prob
    mask = layout.unflatten(handler.mask.clone())
    f = prob.f

    def held(t, y):
        out = f(t, y)
        return tuple(o * m for o, m in zip(out, mask)) if layout.is_tuple else out * mask

    return dataclasses.replace(prob, f=held)


def solve_segments(
    sensealg: AbstractSensitivityAlgorithm, prob: ODEProblem, solver: AbstractSolver, opts: SolveOptions, throw: bool
) -> Solution:
    layout = StateLayout(prob.y0)
    t_start, t1 = time_span(prob)
    direction = 1.0 if t1 >= t_start else -1.0
    handler = EventHandler(opts.events, layout, opts.time_dtype, stop_at_any=True)
    scout_opts = dataclasses.replace(
        opts, saveat=None, saveat_tensor=None, dense=False, regularize=None, observers=(), progress=False
    )
    plain = dataclasses.replace(opts, events=(), dense=False)
    y = layout.flatten(prob.y0)
    saves = opts.saveat
    stats = Stats()
    out_t: list[torch.Tensor] = []
    out_y: list[torch.Tensor] = []
    first = True
    retcode = ReturnCode.Success
    save_i = 0

    def count(t: float, z: torch.Tensor) -> torch.Tensor:
        stats.nfe += 1
        return layout.call(prob.f, t, z)

    f_flat = handler.wrap(count)  # f on flat states, stopped batch elements held still
    while True:
        segment = dataclasses.replace(prob, y0=layout.unflatten(y.detach()), tspan=(t_start, t1))
        with torch.no_grad():
            scout = integrate(segment, solver, scout_opts, throw=False, events=handler)
        stats.nfe += scout.stats.nfe
        # Where the segment ends: an event, the end of the span, or where the solve failed.
        t_end = t1 if scout.retcode is ReturnCode.Success else float(scout.t[-1])
        if not scout.retcode.successful:
            retcode = scout.retcode
        # The save points in (t_start, t_end], plus t_end itself to read the state there.
        j = save_i
        if saves is not None:
            while j < len(saves) and direction * (saves[j] - t_end) <= 0:
                j += 1
        seg_saves = list(saves[save_i:j]) if saves is not None else None
        seg_tensor = opts.saveat_tensor[save_i:j] if opts.saveat_tensor is not None else None
        extra = seg_saves is not None and (not seg_saves or seg_saves[-1] != t_end)
        if extra:
            seg_saves.append(t_end)
            if seg_tensor is not None:
                seg_tensor = torch.cat((seg_tensor, seg_tensor.new_tensor([t_end])))
        seg_opts = dataclasses.replace(
            plain, saveat=tuple(seg_saves) if seg_saves is not None else None, saveat_tensor=seg_tensor
        )
        part = sensealg.solve(
            # The first segment starts at tspan[0] as given, which may carry a gradient.
            _masked(
                dataclasses.replace(
                    segment, y0=layout.unflatten(y), tspan=(prob.tspan[0] if first else t_start, t_end)
                ),
                layout,
                handler,
            ),
            solver,
            seg_opts,
            throw=False,
        )
        stats.nfe += part.stats.nfe
        stats.naccept += part.stats.naccept
        stats.nreject += part.stats.nreject
        ys = layout.flatten_batch(part.y)
        ts = part.t
        keep = slice(None, -1 if extra else None)
        if saves is None and not first:
            keep = slice(1, None)  # every step is saved; the segment's start is the last one's end
        out_t.append(ts[keep].to(opts.time_dtype))
        out_y.append(ys[keep])
        save_i = j
        first = False
        y_end = ys[-1]
        if not part.retcode.successful:
            retcode = part.retcode
            break
        if scout.retcode is not ReturnCode.Terminated or not retcode.successful:
            break
        # The event: its time's gradient, then its affect; stop if it is terminal.
        with torch.no_grad():
            ydot = f_flat(t_end, y_end)
        y_star = handler.attach(t_end, y_end, ydot)
        if not extra:  # the state at the event is an output: give it the event time's gradient
            out_y[-1] = torch.cat((out_y[-1][:-1], y_star.unsqueeze(0)))
        y, terminated, _ = handler.fire(t_end, y_star, f_flat)
        if terminated:
            retcode = ReturnCode.Terminated
            break
        t_start = t_end
    sol = Solution(
        t=torch.cat(out_t),
        y=layout.unflatten_batch(torch.cat(out_y)),
        stats=stats,
        retcode=retcode,
        prob=prob,
        solver=solver,
    )
    sol.event_time, sol.event_index, sol.event_log = handler.results()
    if throw and not retcode.successful:
        raise SolveError(retcode, float(sol.t[-1]) if len(sol.t) else t_start, sol)
    return sol
