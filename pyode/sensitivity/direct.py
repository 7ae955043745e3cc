"""DirectAdjoint: autograd through every operation of the solver (discrete sensitivities)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..integrate import StateLayout, flow_shift, integrate
from ..problem import ODEProblem, Stats
from ..solvers.reversible import AbstractReversibleSolver
from .base import AbstractSensitivityAlgorithm

if TYPE_CHECKING:
    from ..integrate import SolveOptions
    from ..problem import Solution
    from ..solvers.base import AbstractSolver


@dataclass(frozen=True, repr=False)
class DirectAdjoint(AbstractSensitivityAlgorithm):
    """Backpropagate through the solver's own arithmetic, as autograd records it.

    - Memory: every stage of every accepted step (rejected steps' graphs are freed),
      O(steps · stages · state) plus f's activations: the most of all methods.
    - Backward cost: one vector-Jacobian product per stage, about the cost of the forward solve.
    - Accuracy: the exact gradient of the discrete computation, with step sizes held constant
      (the controller is not differentiated). The regularizers need exactly this.
    - Gradients reach y0, every tensor f closes over (its parameters), the save times when
      `saveat` is a tensor that requires grad (through the dense interpolant:
      dy(t_k)/dt_k = f(t_k, y_k) to interpolation accuracy), and `tspan` entries that require
      grad, through the flow identities ∂y(t)/∂t0 = -∂y(t)/∂y0 · f(t0, y0) (one extra
      evaluation of f) and, when every step is saved, ∂y(t1)/∂t1 = f(t1, y(t1)).
    - Solvers: all.
    - `checkpoint_every=N` bounds memory on long solves: the forward pass first solves without
      recording (keeping the accepted step times and states), then replays the same steps in
      segments of N under `torch.utils.checkpoint`, so backward holds one segment's graph at a
      time and recomputes it. Memory O(steps/N · state + N · stages · state), forward cost about
      2x, backward cost about 2x; the gradient is that of the same discrete computation.
      `sol(t)` then has no gradient (its dense output comes from the unrecorded pass).

    This is what torchdiffeq's `odeint` (without adjoint) computes.
    """

    checkpoint_every: int | None = None

    def __post_init__(self) -> None:
        if self.checkpoint_every is not None and (
            isinstance(self.checkpoint_every, bool)
            or not isinstance(self.checkpoint_every, int)
            or self.checkpoint_every < 1
        ):
            raise ValueError(
                f"DirectAdjoint: checkpoint_every must be a positive integer; got {self.checkpoint_every!r}"
            )

    def solve(self, prob: ODEProblem, solver: AbstractSolver, opts: SolveOptions, throw: bool) -> Solution:
        t0, t1 = prob.tspan
        grad = torch.is_grad_enabled()
        wants_t0 = grad and isinstance(t0, torch.Tensor) and t0.requires_grad
        wants_t1 = grad and isinstance(t1, torch.Tensor) and t1.requires_grad and opts.saveat is None
        layout = StateLayout(prob.y0)
        stats = Stats()

        def f_at(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            stats.nfe += 1
            return layout.call_at(prob.f, t, y)

        if wants_t0:
            # Starting at t0 + δ from y0 is starting at t0 from y0 carried back by δ.
            y0 = flow_shift(f_at, t0, layout.flatten(prob.y0), -(t0 - t0.detach()))
            prob = dataclasses.replace(prob, y0=layout.unflatten(y0))
        if self.checkpoint_every is not None and isinstance(solver, AbstractReversibleSolver):
            raise ValueError(
                f"DirectAdjoint(checkpoint_every=...) replays steps from the user's state, but {solver!r} carries more "
                "state than that; use ReversibleAdjoint(), whose memory is constant anyway"
            )
        if self.checkpoint_every is not None and opts.events:
            raise ValueError(
                "DirectAdjoint(checkpoint_every=...) replays recorded steps and cannot locate events on them; leave "
                "checkpointing off, or use BacksolveAdjoint()/InterpolatingAdjoint()/GaussAdjoint() for less memory"
            )
        if self.checkpoint_every is not None and opts.regularize is not None:
            raise ValueError(
                "DirectAdjoint(checkpoint_every=...) cannot differentiate the regularizers; leave checkpointing off"
            )
        if self.checkpoint_every is not None and grad:
            sol = _checkpointed(prob, solver, opts, throw, self.checkpoint_every)
            parts = sol.y if isinstance(sol.y, tuple) else (sol.y,)
            if sol.dense is not None and any(p.requires_grad for p in parts):
                sol.dense_without_gradient = (
                    "DirectAdjoint(checkpoint_every=...) takes its dense output from the unrecorded first pass"
                )
        else:
            sol = integrate(prob, solver, opts, throw=throw)
        if wants_t1 and sol.retcode.successful:
            ys = layout.flatten_batch(sol.y)
            end = flow_shift(f_at, float(t1.detach()), ys[-1], t1 - t1.detach())
            sol.y = layout.unflatten_batch(torch.cat((ys[:-1], end.unsqueeze(0))))
        sol.stats.nfe += stats.nfe
        return sol


def _checkpointed(prob: ODEProblem, solver: AbstractSolver, opts: SolveOptions, throw: bool, every: int) -> Solution:
    """Solve once without recording, then replay the accepted steps segment by segment under
    `torch.utils.checkpoint`, so that backward holds one segment's graph at a time."""
    from torch.utils.checkpoint import checkpoint

    from ..integrate import make_options

    layout = StateLayout(prob.y0)
    with torch.no_grad():
        scout = integrate(prob, solver, dataclasses.replace(opts, saveat=None, saveat_tensor=None), throw=throw)
    ends = scout.t.tolist()  # t0 and the end of every accepted step reached
    reached = ends[-1]
    direction = 1.0 if ends[-1] >= ends[0] else -1.0
    saves = list(opts.saveat) if opts.saveat is not None else ends
    saves = [s for s in saves if direction * (s - reached) <= 0]
    tensor = opts.saveat_tensor

    def segment(a: int, b: int, first: bool):
        t_a, t_b = ends[a], ends[b]
        index = [
            i
            for i, s in enumerate(saves)
            if (direction * (s - t_a) > 0 and direction * (s - t_b) <= 0) or (first and s == t_a)
        ]
        times = [saves[i] for i in index]
        want_end = not times or times[-1] != t_b
        saveat = [*times, t_b] if want_end else times
        if tensor is not None and index:
            window = tensor[index[0] : index[-1] + 1]
            saveat = torch.cat([window, tensor.new_tensor([t_b])]) if want_end else window
        longest = max(abs(ends[i + 1] - ends[i]) for i in range(a, b))

        def run(y_start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            part = dataclasses.replace(prob, y0=layout.unflatten(y_start), tspan=(t_a, t_b))
            part_opts = make_options(
                part,
                solver,
                saveat=saveat,
                dt=longest,
                adaptive=False,
                tstops=ends[a + 1 : b],
                # steps that landed on a discontinuity replay with the same times (the stages
                # there see the time before it, the next step restarts after it)
                d_discontinuities=[e for e in ends[a : b + 1] if e in opts.discontinuities] or None,
                max_steps=opts.max_steps + 1,
                dense=False,
                time_dtype=opts.time_dtype,
                compile=opts.compile,
            )
            replay = integrate(part, solver, part_opts, throw=True)
            replay_nfe.append(replay.stats.nfe)
            ys = layout.flatten_batch(replay.y)
            return (ys[:-1] if want_end else ys), ys[-1]

        return run

    y = layout.flatten(prob.y0)
    outputs = []
    replay_nfe: list[int] = []  # filled by the forward replays (recomputation comes later)
    n_steps = len(ends) - 1
    for a in range(0, n_steps, every):
        b = min(a + every, n_steps)
        ys, y = checkpoint(segment(a, b, first=a == 0), y, use_reentrant=False)
        outputs.append(ys)
    ys = torch.cat(outputs) if outputs else layout.flatten(prob.y0).unsqueeze(0)[: len(saves)]
    if opts.saveat is None:
        t = scout.t
    else:
        t = (
            tensor[: len(saves)]
            if tensor is not None
            else torch.tensor(saves, dtype=opts.time_dtype, device=scout.t.device)
        )
    scout.y = layout.unflatten_batch(ys)
    scout.t = t
    scout.stats.nfe += sum(replay_nfe)
    return scout
