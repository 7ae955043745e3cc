"""The abstract solver: what the integration loop needs from any time-stepping method.

A stepper returns a typed `StepResult`; its capabilities are its base classes:
`DenseStepper` has a dense interpolant, `solvers.reversible.AbstractReversibleStepper` an exact
inverse, and an `AbstractSolver` with an `error_order` an error estimate (`solver.adaptive`).
"""

from __future__ import annotations

import abc
import enum
from typing import Callable, ClassVar, NamedTuple

import torch

VectorField = Callable[[float, torch.Tensor], torch.Tensor]  # f(t, y) on flat states


class StepStatus(enum.Enum):
    """Whether a step produced a state the controller may judge.

    `FAILED` is a step that failed for a reason of its own (an implicit method's Newton iteration
    that did not converge): the loop rejects it and retries with a smaller step, without reading
    an error estimate.
    """

    SUCCESS = "success"
    FAILED = "failed"


class StepResult(NamedTuple):
    """One attempted step, as the stepper computed it.

    Every field has one meaning: `stages` is the (s, n) matrix of a Runge–Kutta method's stage
    derivatives k_j (dense output, the error estimate, FSAL and the stiffness regularizer read
    it), `error` a local error estimate of methods that compute it directly, and `inner` the
    step of the method a wrapper (such as `Reversible(base)`) delegates to.
    """

    t: float
    h: float
    y0: torch.Tensor  # the stepper's state before the step
    y1: torch.Tensor  # and after it
    stages: torch.Tensor | None = None
    next_k1: torch.Tensor | None = None  # f(t + h, y1) when the method computed it already (FSAL)
    stage_inputs: tuple[torch.Tensor, torch.Tensor] | None = None  # inputs of the last two stages
    error: torch.Tensor | None = None
    inner: StepResult | None = None
    status: StepStatus = StepStatus.SUCCESS
    ratio: torch.Tensor | None = None  # the error ratio, when the step computed it (a compiled step)
    dense: torch.Tensor | None = None  # the dense coefficients, when the step computed them


class AbstractStepper(abc.ABC):
    """A solver bound to one solve: its coefficients cast to the state's dtype and device.

    The loop steps the stepper's own state, which is the flat user state for Runge–Kutta methods
    and something larger for methods that carry more (a reversible method's pair [Y, Z]): `init`
    builds it from y0 and f(t0, y0), `output` reads the user state back out of it.
    """

    # Whether `step` reads k1 = f(t, y) of the loop's state (which the loop then evaluates or
    # reuses through FSAL); a method that evaluates f itself sets False.
    uses_k1: bool = True

    def init(self, t0: float, y0: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
        """The stepper's state at t0."""
        return y0

    def output(self, state: torch.Tensor) -> torch.Tensor:
        """The user's (flat) state read from the stepper's state."""
        return state

    @abc.abstractmethod
    def step(self, t: float, y: torch.Tensor, h: float, k1: torch.Tensor | None) -> StepResult:
        """Advance from (t, y) by h, given k1 = f(t, y) (None when `uses_k1` is False)."""

    @abc.abstractmethod
    def error_ratio(self, step: StepResult, rtol: float, atol: float, norm: Callable) -> torch.Tensor:
        """The scaled local error the controller compares with 1 (a 0-d tensor)."""


class DenseStepper(AbstractStepper):
    """A stepper with a dense interpolant over each step; without one, the loop lands on every
    save point and event location is not available."""

    @abc.abstractmethod
    def dense(self, step: StepResult, f1: torch.Tensor | None) -> torch.Tensor:
        """Coefficients r (P, n) with y(t + θh) = y0 + Σ_p θ^p r_p (see `interpolation.py`)."""

    @property
    @abc.abstractmethod
    def dense_needs_f1(self) -> bool:
        """Whether `dense` reads f(t + h, y1), which a non-FSAL method evaluates only later."""


class AbstractSolver(abc.ABC):
    """A time-stepping method, as a small frozen description. Subclasses set `order`."""

    order: ClassVar[int]
    # Order of the embedded solution the error estimate compares against; None when the method
    # has no error estimate and can only step with a fixed dt.
    error_order: ClassVar[int | None] = None

    @property
    def adaptive(self) -> bool:
        """Whether the method has an error estimate to step adaptively with."""
        return self.error_order is not None

    @abc.abstractmethod
    def stepper(self, f: VectorField, dtype: torch.dtype, device: torch.device) -> AbstractStepper:
        """Bind the method to a vector field and a dtype/device (coefficients cast once)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
