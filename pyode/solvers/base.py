"""The abstract solver: what the integration loop needs from any time-stepping method."""

from __future__ import annotations

import abc
from typing import Callable, ClassVar, NamedTuple

import torch

VectorField = Callable[[float, torch.Tensor], torch.Tensor]  # f(t, y) on flat states


class Step(NamedTuple):
    """One attempted step, as the stepper computed it.

    `stages` holds whatever the method evaluated (for Runge–Kutta methods the (s, n) matrix of
    stage derivatives k_j); dense output, the error estimate and FSAL read it from here.
    """

    t: float
    h: float
    y0: torch.Tensor  # (n,)
    y1: torch.Tensor  # (n,)
    stages: torch.Tensor
    next_k1: torch.Tensor | None  # f(t + h, y1) when the method computed it already (FSAL)
    stage_inputs: tuple | None = None  # the inputs Y of the last two stages (Runge–Kutta)


class AbstractStepper(abc.ABC):
    """A solver bound to one solve: its coefficients cast to the state's dtype and device.

    The loop steps the stepper's own state, which is the flat user state for Runge–Kutta methods
    and something larger for methods that carry more (a reversible method's pair [Y, Z]): `init`
    builds it from y0 and f(t0, y0), `output` reads the user state back out of it.
    """

    # Whether `step` reads k1 = f(t, y) of the loop's state (which the loop then evaluates or
    # reuses through FSAL); a method that evaluates f itself sets False.
    uses_k1: bool = True
    # Whether `dense` exists; without it the loop lands on every save point instead.
    interpolates: bool = True

    def init(self, t0: float, y0: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
        """The stepper's state at t0."""
        return y0

    def output(self, state: torch.Tensor) -> torch.Tensor:
        """The user's (flat) state read from the stepper's state."""
        return state

    @abc.abstractmethod
    def step(self, t: float, y: torch.Tensor, h: float, k1: torch.Tensor) -> Step:
        """Advance from (t, y) by h, given k1 = f(t, y)."""

    @abc.abstractmethod
    def error_ratio(self, step: Step, rtol: float, atol: float, norm: Callable) -> torch.Tensor:
        """The scaled local error the controller compares with 1 (a 0-d tensor)."""

    @abc.abstractmethod
    def dense(self, step: Step, f1: torch.Tensor) -> torch.Tensor:
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
        return self.error_order is not None

    @abc.abstractmethod
    def stepper(self, f: VectorField, dtype: torch.dtype, device: torch.device) -> AbstractStepper:
        """Bind the method to a vector field and a dtype/device (coefficients cast once)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
