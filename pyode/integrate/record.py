"""What the loop hands to the things that plug into it: the record of an accepted step, and the
`Observer` interface that receives it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

from ..solvers.base import AbstractStepper, DenseStepper, StepResult

if TYPE_CHECKING:
    from ..problem import ReturnCode


class AcceptedStep:
    """One accepted step from t to t_new: what observers read.

    `state0`/`state1` are the stepper's states (the flat user state for Runge–Kutta methods);
    `y0`/`y1` the flat user state; `result` the stepper's `StepResult`; `ratio` the error ratio
    as a tensor when it was computed on the autograd graph (for the regularizers), else None.
    `coefficients()` gives the step's dense coefficients r, computed once on first request (None
    for steppers without an interpolant); `end_derivative()` gives f(t_new, y1), reusing FSAL.
    An event may shorten the step (`truncate`) before the observers see it.
    """

    __slots__ = ("_f", "_f1", "_r", "_stepper", "h", "on_stop", "ratio", "result", "state0", "state1", "t", "t_new")

    def __init__(
        self,
        t: float,
        h: float,
        t_new: float,
        result: StepResult,
        ratio: torch.Tensor | None,
        on_stop: bool,
        stepper: AbstractStepper,
        f: Callable[[float, torch.Tensor], torch.Tensor],
    ):
        self.t, self.h, self.t_new = t, h, t_new
        self.state0, self.state1 = result.y0, result.y1
        self.result, self.ratio, self.on_stop = result, ratio, on_stop
        self._stepper, self._f = stepper, f
        self._r: torch.Tensor | None = None
        self._f1 = result.next_k1

    @property
    def y0(self) -> torch.Tensor:
        return self._stepper.output(self.state0)

    @property
    def y1(self) -> torch.Tensor:
        return self._stepper.output(self.state1)

    def end_derivative(self) -> torch.Tensor:
        """f(t_new, state1), evaluated at most once (FSAL methods have it already)."""
        if self._f1 is None:
            self._f1 = self._f(self.t_new, self.state1)
        return self._f1

    def coefficients(self) -> torch.Tensor | None:
        """The dense coefficients r of y(t + θh) = y0 + Σ_p θ^p r_p, or None without an interpolant."""
        stepper = self._stepper
        if self._r is None and isinstance(stepper, DenseStepper):
            f1 = self.end_derivative() if (self._f1 is not None or stepper.dense_needs_f1) else None
            self._r = stepper.dense(self.result, f1)
        return self._r

    def truncate(self, theta: float, state1: torch.Tensor) -> None:
        """End the step at t + θh with state `state1` (an event's location): the interpolant is
        rescaled to the shorter step, exactly (r_p → θ^p r_p)."""
        r = self.coefficients()
        assert r is not None, "only steppers with an interpolant can be truncated"
        powers = torch.tensor([theta ** (p + 1) for p in range(r.shape[0])], dtype=r.dtype, device=r.device)
        self._r = r * powers.unsqueeze(-1)
        self.h = theta * self.h
        self.t_new = self.t + self.h
        self.state1 = state1
        self.on_stop = False
        self._f1 = None


class Observer:
    """Receives the loop's steps. Subclass it and override what you need; pass instances as
    `solve(..., observers=[...])`.

    Observers read; they do not change the solve (the events, which do, are the loop's own).
    `accepted` may return a `ReturnCode` to end the solve with it (e.g. `ReturnCode.Terminated`).
    Times are host floats; states are the flat vectors the loop steps (`pyode.integrate.StateLayout`
    unflattens them). Every method runs on the forward pass only, under the caller's grad mode.
    """

    # Whether `accepted` needs `step.ratio` on the autograd graph (the error regularizer does).
    wants_error_graph: bool = False

    def start(self, t0: float, y0: torch.Tensor) -> None:
        """Before the first step, with the initial flat user state."""

    def attempt(self, t: float, y: torch.Tensor, h: float) -> None:
        """Before each attempted step from (t, y) by h (y: the flat user state)."""

    def rejected(self, t: float, y: torch.Tensor, h: float, ratio: float) -> None:
        """After a step failed its error test (ratio > 1) or failed for a reason of its own (ratio = inf)."""

    def accepted(self, step: AcceptedStep) -> ReturnCode | None:
        """After each accepted step; return a ReturnCode to stop the solve."""
        return None

    def finish(self, t: float, retcode: ReturnCode) -> None:
        """When the loop ends, at time t, however it ended."""


class StepRecorder(Observer):
    """Calls `hook(t, h, state0, state1, r)` after each accepted step: the record the quadrature
    and reversible adjoints keep (r: the step's dense coefficients, None without an interpolant)."""

    def __init__(self, hook: Callable[..., None]):
        self.hook = hook

    def accepted(self, step: AcceptedStep) -> None:
        self.hook(step.t, step.h, step.state0, step.state1, step.coefficients())
        return None
