"""Automatic stiffness switching: an explicit method while it is accuracy-bound, an implicit one
while the explicit method would be stability-bound (SciML's `AutoTsit5(Rosenbrock23())`).

While explicit, each accepted step estimates the dominant eigenvalue by Shampine's quotient
ρ ≈ ‖k_s - k_{s-1}‖ / ‖Y_s - Y_{s-1}‖ over the two stages at c = 1 (the estimate the stiffness
regularizer uses); h·ρ beyond `stiff_tol` (0.5) times the explicit method's stability extent
means the step size is set by stability, not accuracy. While implicit, ρ is the spectral radius of the
Jacobian the implicit method computed anyway, and h·ρ within `nonstiff_tol` of the extent
means the explicit method would be stable at the step the implicit one takes. A switch needs
`max_stiff_steps` (or `max_nonstiff_steps`) such accepted steps in a row; after
`max_switches` switches only a switch to the implicit method is allowed, so a problem on the
border neither oscillates nor ends on the explicit method in a stiff phase.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..norms import rms_norm
from .base import AbstractSolver, DenseStepper, StepResult, VectorField
from .implicit import AbstractImplicitSolver, ImplicitStepper
from .runge_kutta import AbstractExplicitRK


@dataclass(frozen=True, repr=False)
class AutoSwitch(AbstractSolver):
    """Start with `explicit`, switch to `implicit` when the problem turns stiff and back when it
    stops being stiff (see the module docstring for the test).

    Args:
        explicit: an explicit method with two stages at c = 1 and a known stability extent
            (`Tsit5()`, `DP5()`).
        implicit: any implicit method (`Rodas5P()`, `Rosenbrock23()`, `Kvaerno5()`, ...).
        max_stiff_steps, max_nonstiff_steps: consecutive accepted steps that must agree before
            switching to the implicit (explicit) method; SciML's defaults.
        stiff_tol, nonstiff_tol: fractions of the explicit method's stability extent. stiff_tol
            is 0.5, not SciML's 0.9: while Tsit5 is stability-bound on Robertson, Shampine's
            estimate reads h·ρ at 0.56–0.9 of the extent, so 0.9 kept it explicit for 2000 steps.
        max_switches: switches allowed in one solve (then only to the implicit method).
        stiff_first: start with the implicit method.
    """

    explicit: AbstractExplicitRK
    implicit: AbstractImplicitSolver
    max_stiff_steps: int = 10
    max_nonstiff_steps: int = 3
    stiff_tol: float = 0.5
    nonstiff_tol: float = 0.9
    max_switches: int = 5
    stiff_first: bool = False

    def __post_init__(self) -> None:
        ex, im = self.explicit, self.implicit
        tab = getattr(ex, "tableau", None)
        if (
            not isinstance(ex, AbstractExplicitRK)
            or ex.stability_extent is None
            or not ex.adaptive
            or tab.stages < 2
            or tab.c[-1] != 1
            or tab.c[-2] != 1
        ):
            raise TypeError(
                "AutoSwitch's explicit method must be an adaptive explicit Runge–Kutta method with two stages at "
                f"c = 1 and a known stability extent (Tsit5(), DP5()); got {ex!r}"
            )
        if not isinstance(im, AbstractImplicitSolver) or not im.adaptive:
            raise TypeError(
                "AutoSwitch's implicit method must be an implicit solver (Rodas5P(), Rosenbrock23(), Kvaerno3(), "
                f"Kvaerno5(), KenCarp4()); got {im!r}"
            )
        for name in ("max_stiff_steps", "max_nonstiff_steps", "max_switches"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value < 0
                or (value == 0 and name != "max_switches")
            ):
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        for name in ("stiff_tol", "nonstiff_tol"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 < value <= 10:
                raise ValueError(f"{name} must be a positive fraction of the stability extent; got {value!r}")

    @property
    def order(self) -> int:  # type: ignore[override]
        return self.explicit.order

    @property
    def error_order(self) -> int:  # type: ignore[override]
        return min(self.explicit.error_order, self.implicit.error_order)

    def stepper(self, f: VectorField, dtype: torch.dtype, device: torch.device) -> AutoSwitchStepper:
        return AutoSwitchStepper(self, f, dtype, device)

    def __repr__(self) -> str:
        return f"AutoSwitch({self.explicit!r}, {self.implicit!r})"


class AutoSwitchStepper(DenseStepper):
    """Both methods' steppers and the switching state. Each step is made by one of them; an
    implicit step carries its error estimate in `error`, an explicit one its stages, which is
    how `error_ratio` and `dense` tell them apart."""

    def __init__(self, solver: AutoSwitch, f: VectorField, dtype: torch.dtype, device: torch.device):
        self.solver = solver
        self.explicit = solver.explicit.stepper(f, dtype, device)
        self.implicit: ImplicitStepper = solver.implicit.stepper(f, dtype, device)
        self.stiff = solver.stiff_first
        self.agree = 0  # consecutive accepted steps that argue for switching
        self.switches = 0
        self.extent = solver.explicit.stability_extent
        self.pending: tuple[float, float, float] | None = None  # (t, h, ρ) of the last step made
        self.stats = None

    def configure(self, prob, layout, rtol, atol, norm: Callable, stats) -> None:
        self.implicit.configure(prob, layout, rtol, atol, norm, stats)
        self.stats = stats

    def _judge_last(self, t: float) -> None:
        """A step made at another time than this one was accepted: count its verdict."""
        if self.pending is None or self.pending[0] == t:
            return
        _, h, rho = self.pending
        self.pending = None
        s = self.solver
        # Past the limit only the switch to the implicit method stays allowed: a solve that keeps
        # flipping ends on the method that is safe either way (it ended on Tsit5 in Robertson's
        # stiff phase, 2187 steps at rtol 1e-7 against Rodas5P's 193).
        if self.switches >= s.max_switches and self.stiff:
            return
        if not self.stiff:
            self.agree = self.agree + 1 if abs(h) * rho > s.stiff_tol * self.extent else 0
            if self.agree >= s.max_stiff_steps:
                self._switch()
        else:
            self.agree = self.agree + 1 if abs(h) * rho <= s.nonstiff_tol * self.extent else 0
            if self.agree >= s.max_nonstiff_steps:
                self._switch()

    def _switch(self) -> None:
        self.stiff = not self.stiff
        self.agree = 0
        self.switches += 1
        if self.stats is not None:
            self.stats.nswitch += 1

    def step(self, t: float, y: torch.Tensor, h: float, k1: torch.Tensor | None) -> StepResult:
        self._judge_last(t)
        if self.stiff:
            result = self.implicit.step(t, y, h, k1)
            rho = self.implicit.stiffness()
        else:
            result = self.explicit.step(t, y, h, k1)
            rho = _shampine(result)
        self.pending = (t, h, rho)
        return result

    def _maker(self, step: StepResult):
        return self.implicit if step.error is not None else self.explicit

    def error_ratio(self, step: StepResult, rtol: float, atol: float, norm: Callable) -> torch.Tensor:
        return self._maker(step).error_ratio(step, rtol, atol, norm)

    @property
    def dense_needs_f1(self) -> bool:
        return (self.implicit if self.stiff else self.explicit).dense_needs_f1

    def dense(self, step: StepResult, f1: torch.Tensor | None) -> torch.Tensor:
        return self._maker(step).dense(step, f1)


def _shampine(step: StepResult) -> float:
    """‖k_s - k_{s-1}‖ / ‖Y_s - Y_{s-1}‖ over the two stages at c = 1."""
    if step.stage_inputs is None or step.stages is None:
        return 0.0
    with torch.no_grad():
        k = step.stages
        y_prev, y_last = step.stage_inputs
        den = float(rms_norm(y_last - y_prev))
        num = float(rms_norm(k[-1] - k[-2]))
    if den == 0:
        return 0.0 if num == 0 else math.inf
    return num / den
