"""Save points, dense output and save-time gradients: the observer that builds a solution's
`t` and `y` from the accepted steps."""

from __future__ import annotations

from typing import Callable

import torch

from .. import interpolation
from ..interpolation import DenseOutput
from ..problem import ReturnCode
from .options import SolveOptions
from .record import AcceptedStep, Observer
from .state import StateLayout, flow_shift


class Saver(Observer):
    """Keeps the outputs: every step's end when `saveat` is None, else the save points, which
    dense interpolation reaches inside steps (steppers without an interpolant land on them).

    Save times given as a tensor that requires grad get the flow's derivative: dy(t_k)/dt_k =
    f(t_k, y(t_k)), through the interpolant or, at a step's end, `flow_shift`.
    """

    def __init__(
        self,
        opts: SolveOptions,
        layout: StateLayout,
        t0: float,
        t1: float,
        output: Callable[[torch.Tensor], torch.Tensor],
        f_at: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        interpolates: bool,
    ):
        self.saves = opts.saveat
        self.saves_tensor = opts.saveat_tensor
        self.adaptive = opts.adaptive
        self.direction = 1.0 if t1 >= t0 else -1.0
        self.output, self.f_at, self.interpolates = output, f_at, interpolates
        self.grad_enabled = torch.is_grad_enabled()
        self.t0 = t0
        self.layout = layout
        self.time_dtype = opts.time_dtype
        self.out_t: list[float] = []
        self.out_y: list[torch.Tensor] = []
        self.i = 0  # the next save point
        self.dense = (
            DenseOutput(t0, t1, None, layout.unflatten_batch, layout.unflatten, opts.time_dtype) if opts.dense else None
        )

    def start_with(self, y0: torch.Tensor, k1: torch.Tensor) -> None:
        """Save y0 (and the save points at t0); k1 = f(t0, y0) for their time gradients."""
        t0, saves = self.t0, self.saves
        if self.dense is not None:
            self.dense.y0 = y0
        if saves is None:
            self.out_t.append(t0)
            self.out_y.append(y0.unsqueeze(0))
            return
        while self.i < len(saves) and saves[self.i] == t0:
            self.out_t.append(t0)
            if self.saves_tensor is not None:
                # The value is y0; its derivatives with respect to its save time are the flow's.
                self.out_y.append(flow_shift(self.f_at, t0, y0, self.saves_tensor[self.i] - t0, k=k1).unsqueeze(0))
            else:
                self.out_y.append(y0.unsqueeze(0))
            self.i += 1

    def wants_coefficients(self, t_new: float) -> bool:
        """Whether the step ending at t_new needs its interpolant here (dense output, or a save
        point strictly inside it, or one whose time carries a gradient)."""
        if self.dense is not None:
            return True
        saves, i = self.saves, self.i
        if saves is None or i >= len(saves) or self.direction * (saves[i] - t_new) > 0:
            return False
        # Save times are strictly monotone: one at t_new is the step's only one, its end state.
        return saves[i] != t_new or self.saves_tensor is not None

    def accepted(self, step: AcceptedStep) -> ReturnCode | None:
        if self.interpolates and self.wants_coefficients(step.t_new):
            r = step.coefficients()
            if self.dense is not None:
                self.dense.append(step.t, step.h, step.state0, r)
        saves = self.saves
        if saves is None:
            self.out_t.append(step.t_new)
            self.out_y.append(self.output(step.state1).unsqueeze(0))
            return None
        j0 = self.i
        while self.i < len(saves) and self.direction * (saves[self.i] - step.t_new) <= 0:
            self.i += 1
        if self.i == j0:
            return None
        saved_before = len(self.out_y)
        self.out_t.extend(saves[j0 : self.i])
        self._save(step, j0, self.i)
        if not self.adaptive and not bool(torch.isfinite(self.out_y[-1]).all()):
            # Fixed steps have no error test to catch a blow-up, so save points are checked.
            del self.out_t[j0 - self.i :]
            del self.out_y[saved_before:]
            return ReturnCode.Unstable
        return None

    def _save(self, step: AcceptedStep, j0: int, j1: int) -> None:
        saves, t, h, y = self.saves, step.t, step.h, step.state0
        if not self.interpolates:
            # Such steppers land on every save point: exactly one, at the step's end.
            assert j1 - j0 == 1 and saves[j0] == step.t_new, "save points are steps' ends"
            y_save = self.output(step.state1)
            if self.saves_tensor is not None and self.grad_enabled:
                # The value is y(t_k); its derivatives with respect to its save time are the flow's.
                y_save = flow_shift(self.f_at, step.t_new, y_save, self.saves_tensor[j0] - step.t_new)
            self.out_y.append(y_save.unsqueeze(0))
        elif self.saves_tensor is not None:
            theta = ((self.saves_tensor[j0:j1] - t) / h).to(y.dtype)
            self.out_y.append(interpolation.evaluate(y, step.coefficients(), theta))
        else:
            ends_here = saves[j1 - 1] == step.t_new
            inside = saves[j0 : j1 - 1] if ends_here else saves[j0:j1]
            if inside:
                self.out_y.append(interpolation.evaluate_at(y, step.coefficients(), [(s - t) / h for s in inside]))
            if ends_here:
                self.out_y.append(self.output(step.state1).unsqueeze(0))

    def result(
        self, retcode: ReturnCode, t: float, y_last: torch.Tensor, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, ReturnCode, float]:
        """(ts, ys, retcode, t): the outputs, stacked, after one finiteness check for the solve."""
        if retcode is ReturnCode.Success and self.saves is not None:
            assert self.i == len(self.saves), "every save point inside the span is reached"
        ys = torch.cat(self.out_y) if self.out_y else like.unsqueeze(0)[:0]  # still on y0's graph
        out_t = self.out_t
        if retcode is not ReturnCode.Unstable:
            # A state that overflowed without failing an error test (fixed steps, or an estimate
            # that stayed finite) is caught here, whatever else ended the solve: one check, one
            # sync, for the whole solve.
            finite = torch.isfinite(ys).all(dim=1)
            if not bool(finite.all() & torch.isfinite(y_last).all()):
                retcode = ReturnCode.Unstable
                kept = int(finite.long().cumprod(0).sum())  # the save points before the first bad one
                ys, out_t = ys[:kept], out_t[:kept]
                t = out_t[-1] if out_t else self.t0
                if self.dense is not None:
                    self.dense.truncate(t)
        if self.saves_tensor is not None:
            ts = self.saves_tensor[: len(out_t)]
        else:
            ts = torch.tensor(out_t, dtype=self.time_dtype, device=like.device)
        return ts, ys, retcode, t
