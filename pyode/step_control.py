"""Step-size control: the controllers and the initial step.

Everything works on host floats. The loop reads the error ratio once per step (its single
device sync), and a controller's decision is plain Python arithmetic on that number. The loop,
not the controller, enforces `tstops`, `dtmin` and `dtmax`.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch


class AbstractController(abc.ABC):
    """Decides from each attempted step's error ratio E (the scaled local error; E ≤ 1 meets the
    tolerances) whether to accept it and how large the next step should be.

    Subclass it (as a frozen dataclass) to write your own: `init` gives the state carried from
    step to step (previous error ratios, say), `adapt` the decision. `solve(controller=...)`
    takes any subclass.
    """

    # Whether the controller reads error ratios; `ConstantStepSize` does not (fixed steps).
    adaptive: bool = True

    @abc.abstractmethod
    def init(self, error_order: int) -> Any:
        """The state before the first step, for a solver whose error estimate has this order."""

    @abc.abstractmethod
    def adapt(self, ratio: float, h: float, state: Any) -> tuple[bool, float, Any]:
        """After a step of size h > 0 with error ratio `ratio` (NaN or inf when the step blew up):
        (accept it?, the size of the next attempt, the new state)."""


class AbstractVectorizedController(AbstractController):
    """A controller that can also decide for every element of a batch at once, on the device
    (`solve(..., batch_axis=0)`): the same rule as `adapt`, elementwise with torch ops, so that
    one element's decisions equal those of a solve of that element alone.
    """

    @abc.abstractmethod
    def init_vectorized(self, error_order: int, like: torch.Tensor) -> Any:
        """The state before the first step for a batch of elements; `like` is a (B,) tensor of
        the time dtype and device."""

    @abc.abstractmethod
    def adapt_vectorized(
        self, ratio: torch.Tensor, h: torch.Tensor, state: Any
    ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """`adapt` for (B,) error ratios and step sizes h ≥ 0: (accepted (B,) bool, next step
        sizes (B,), the new state). Elements the caller no longer steps may change state freely."""


def _finite_or_one(ratio: torch.Tensor) -> torch.Tensor:
    """The ratio where it is positive and finite, else 1: the base of the controllers' powers,
    kept finite in the branches that do not use it."""
    return torch.where((ratio > 0) & torch.isfinite(ratio), ratio, 1.0)


def _powers(bases: list[torch.Tensor], exponents: list[float]) -> list[torch.Tensor]:
    """base ** exponent for each pair of (B,) tensors and numbers, as one op, rounded on the CPU
    exactly as Python's `**` (libm's pow) rounds the host floats of `adapt`.

    TensorIterator runs a vectorized pow (SLEEF, within 1 ulp: about 1% of results differ from
    libm's) on contiguous operands and libm's `pow` on strided ones, without special cases for
    exponents ±0.5. Through a strided view an element's step sizes are bit for bit those of a
    solve of that element alone; where the controller sits on a stability boundary, its step
    sequence amplifies a 1-ulp difference until the two solves take different steps.
    """
    if bases[0].device.type != "cpu":  # no such difference to mirror; and no host tensor per step
        return [b**p for b, p in zip(bases, exponents)]
    base = bases[0].new_empty((len(bases), bases[0].shape[0], 2))[..., 0]
    base.copy_(torch.stack(bases))
    exponent = torch.tensor(exponents, dtype=base.dtype).unsqueeze(1).expand_as(base)
    return list(torch.pow(base, exponent).unbind(0))


def _check_factors(name: str, safety: float, factor_min: float, factor_max: float) -> None:
    if not 0 < safety <= 1:
        raise ValueError(f"{name}: safety must be in (0, 1]; got {safety}")
    if not 0 < factor_min < 1:
        raise ValueError(f"{name}: factor_min must be in (0, 1); got {factor_min}")
    if not factor_max > 1:
        raise ValueError(f"{name}: factor_max must exceed 1; got {factor_max}")


@dataclass(frozen=True)
class PIController(AbstractVectorizedController):
    """Proportional–integral step-size controller (Gustafsson 1991; Hairer & Wanner, Solving
    ODEs II, §IV.2), with the gains of Hairer's DOPRI5.

    After a step with error ratio E (accept when E ≤ 1) and previous accepted ratio E_prev:
        accepted:  h_new = h · clamp(safety · E^(-beta1) · E_prev^(beta2), factor_min, factor_max)
        rejected:  h_new = h · clamp(safety · E^(-beta1), factor_min, 1)

    It starts as an integral controller: until the first accepted step with E ≥ `startup` (or
    the first rejection), an accepted step is followed by h · clamp(safety · E^(-1/k), 1,
    factor_max), which reaches the target error in one step from a small first step, where the
    PI gains close only about half the gap per step. On the neural ODEs of
    `benchmarks/step_counts.py` (4 to 15 steps, where the start dominates) this cut forward
    evaluations from 648 to 576, torchdiffeq's count, at half torchdiffeq's geometric-mean error;
    over all its problems from 5308 to 5038 (torchdiffeq: 5086).

    Args:
        beta1, beta2: the gains; by default beta2 = 0.04 and beta1 = 1/k - 0.75·beta2 with
            k = the solver's error order + 1, which for DP5 is DOPRI5's 0.17 and 0.04. (SciML's
            generic 7/(10k), 2/(5k) took 56 evaluations where these took 38 on a small neural ODE
            at rtol 1e-6.) `beta2=0` gives the classic integral (I) controller.
        safety: factor below 1 that keeps the next step from being rejected.
        factor_min, factor_max: bounds on the change of the step size per step.
        startup: the error ratio that ends the integral start-up phase; None for none (plain
            PI from the first step).
    """

    beta1: float | None = None
    beta2: float | None = None
    safety: float = 0.9
    factor_min: float = 0.2
    factor_max: float = 10.0
    startup: float | None = 0.5

    def __post_init__(self) -> None:
        _check_factors("PIController", self.safety, self.factor_min, self.factor_max)
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"PIController: {name} must be non-negative; got {value}")
        if self.startup is not None and not 0 < self.startup <= 1:
            raise ValueError(f"PIController: startup must be in (0, 1] or None; got {self.startup}")

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

    def init(self, error_order: int) -> tuple[tuple[float, float], float, float | None]:
        """(gains, previous ratio, the start-up exponent 1/k until the start-up ends, then None)."""
        return self.gains(error_order), 1e-4, (1.0 / (error_order + 1) if self.startup is not None else None)

    def adapt(self, ratio: float, h: float, state: tuple) -> tuple[bool, float, tuple]:
        gains, prev_ratio, startup = state
        if not ratio <= 1.0:  # also NaN
            factor = self.factor(ratio, prev_ratio, gains, accepted=False) if math.isfinite(ratio) else self.factor_min
            return False, h * factor, (gains, prev_ratio, None)
        if startup is not None and ratio < self.startup:
            factor = self.factor_max if ratio == 0.0 else min(self.factor_max, max(1.0, self.safety * ratio**-startup))
            return True, h * factor, (gains, max(ratio, 1e-4), startup)
        return True, h * self.factor(ratio, prev_ratio, gains, accepted=True), (gains, max(ratio, 1e-4), None)

    def init_vectorized(self, error_order: int, like: torch.Tensor) -> tuple:
        """(gains, the start-up exponent 1/k, previous ratios (B,), in start-up (B,) bool)."""
        starting = torch.full_like(like, self.startup is not None, dtype=torch.bool)
        return self.gains(error_order), 1.0 / (error_order + 1), torch.full_like(like, 1e-4), starting

    def adapt_vectorized(self, ratio: torch.Tensor, h: torch.Tensor, state: tuple) -> tuple:
        (beta1, beta2), exponent, prev_ratio, starting = state
        accepted = ratio <= 1.0  # NaN: False
        zero = ratio == 0.0
        base = _finite_or_one(ratio)
        if self.startup is not None:
            powered, previous, powered_startup = _powers([base, prev_ratio, base], [-beta1, beta2, -exponent])
        else:
            powered, previous = _powers([base, prev_ratio], [-beta1, beta2])
        proportional = self.safety * powered
        rejected = torch.where(torch.isfinite(ratio), proportional.clamp(self.factor_min, 1.0), self.factor_min)
        factor = (proportional * previous).clamp(self.factor_min, self.factor_max)
        if self.startup is not None:
            starting = starting & (ratio < self.startup)  # also ends at a rejection (ratio > 1)
            integral = (self.safety * powered_startup).clamp(1.0, self.factor_max)
            factor = torch.where(starting, integral, factor)
        factor = torch.where(accepted, torch.where(zero, self.factor_max, factor), rejected)
        prev_ratio = torch.where(accepted, ratio.clamp_min(1e-4), prev_ratio)
        return accepted, h * factor, ((beta1, beta2), exponent, prev_ratio, starting)


@dataclass(frozen=True)
class IController(AbstractVectorizedController):
    """The integral controller as torchdiffeq has it (`_optimal_step_size`):

        h_new = h · clamp(safety · E^(-1/k), lo, factor_max),   k = error order + 1,

    with lo = 1 when E < 1 (a step accepted with room to spare never shrinks the next) and
    factor_min otherwise; E = 0 gives factor_max. Steps are accepted when E ≤ 1. This is what
    torchdiffeq's adaptive solvers do with a given error ratio (its dopri5 estimates the error
    with Shampine's embedded pair rather than Dormand and Prince's, so step counts still differ
    a little).

    Reference: Hairer, Nørsett & Wanner, Solving ODEs I, §II.4; torchdiffeq (Chen 2018).
    """

    safety: float = 0.9
    factor_min: float = 0.2
    factor_max: float = 10.0

    def __post_init__(self) -> None:
        _check_factors("IController", self.safety, self.factor_min, self.factor_max)

    def init(self, error_order: int) -> float:
        return 1.0 / (error_order + 1)

    def adapt(self, ratio: float, h: float, state: float) -> tuple[bool, float, float]:
        accepted = ratio <= 1.0
        if ratio == 0.0:
            return True, h * self.factor_max, state
        if not math.isfinite(ratio):
            return False, h * self.factor_min, state
        lo = 1.0 if ratio < 1.0 else self.factor_min  # torchdiffeq's boundary: E = 1 may shrink
        return accepted, h * min(self.factor_max, max(self.safety / ratio**state, lo)), state

    def init_vectorized(self, error_order: int, like: torch.Tensor) -> float:
        return self.init(error_order)

    def adapt_vectorized(self, ratio: torch.Tensor, h: torch.Tensor, state: float) -> tuple:
        finite = torch.isfinite(ratio)
        lo = torch.full_like(ratio, self.factor_min).masked_fill_(ratio < 1.0, 1.0)
        (powered,) = _powers([_finite_or_one(ratio)], [state])
        # A tensor numerator: `number / tensor` multiplies by the reciprocal, rounding twice.
        factor = torch.maximum(torch.full_like(powered, self.safety) / powered, lo).clamp_max(self.factor_max)
        factor = torch.where(ratio == 0.0, self.factor_max, torch.where(finite, factor, self.factor_min))
        return ratio <= 1.0, h * factor, state


@dataclass(frozen=True)
class PIDController(AbstractController):
    """Söderlind's PID controller in diffrax's parametrization: with E_n, E_n-1, E_n-2 the error
    ratios of the last three accepted steps (the newest attempt first) and k = error order + 1,

        h_new = h · clamp(safety · E_n^(-β1) · E_n-1^(-β2) · E_n-2^(-β3), factor_min, hi),
        β1 = (pcoeff + icoeff + dcoeff)/k,  β2 = -(pcoeff + 2·dcoeff)/k,  β3 = dcoeff/k,

    with hi = factor_max after an accepted step and `safety` after a rejected one. The defaults
    (0, 1, 0) are the I controller; (0.2, 0.65, 0) at k = 5 is DOPRI5's PI pair (PIController's
    default); Söderlind's smoother choices (e.g. pcoeff=0.3, icoeff=0.3, dcoeff=0) suit stiff and
    noisy problems.

    Reference: Söderlind, "Digital filters in adaptive time-stepping", ACM TOMS 29 (2003);
    Söderlind & Wang, J. Comput. Appl. Math. 185 (2006); diffrax's PIDController.
    """

    pcoeff: float = 0.0
    icoeff: float = 1.0
    dcoeff: float = 0.0
    safety: float = 0.9
    factor_min: float = 0.2
    factor_max: float = 10.0

    def __post_init__(self) -> None:
        _check_factors("PIDController", self.safety, self.factor_min, self.factor_max)
        if self.icoeff <= 0 or self.pcoeff < 0 or self.dcoeff < 0:
            raise ValueError(
                "PIDController: icoeff must be positive and pcoeff, dcoeff non-negative; got "
                f"pcoeff={self.pcoeff}, icoeff={self.icoeff}, dcoeff={self.dcoeff}"
            )

    def init(self, error_order: int) -> tuple[tuple[float, float, float], float, float]:
        k = error_order + 1
        betas = (
            (self.pcoeff + self.icoeff + self.dcoeff) / k,
            -(self.pcoeff + 2 * self.dcoeff) / k,
            self.dcoeff / k,
        )
        return betas, 1.0, 1.0

    def adapt(self, ratio: float, h: float, state: tuple) -> tuple[bool, float, tuple]:
        betas, prev, prev_prev = state
        accepted = ratio <= 1.0
        if not math.isfinite(ratio):
            return False, h * self.factor_min, state
        # A zero error is floored like the previous ratios, so that the powers stay finite.
        ratio = max(ratio, 1e-4) if accepted else ratio
        raw = self.safety * ratio ** (-betas[0]) * prev ** (-betas[1]) * prev_prev ** (-betas[2])
        factor = min(self.factor_max if accepted else self.safety, max(self.factor_min, raw))
        return accepted, h * factor, ((betas, ratio, prev) if accepted else state)


@dataclass(frozen=True)
class ConstantStepSize(AbstractController):
    """No control: every step has the size `dt` given to `solve`, and no error estimate is read
    (the same as `adaptive=False`)."""

    adaptive = False

    def init(self, error_order: int) -> None:
        return None

    def adapt(self, ratio: float, h: float, state: None) -> tuple[bool, float, None]:
        return True, h, None


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


def initial_steps(
    f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    t0: float,
    y0: torch.Tensor,
    f0: torch.Tensor,
    direction: float,
    order: int,
    rtol: float | torch.Tensor,
    atol: float | torch.Tensor,
    norm: Callable[[torch.Tensor], torch.Tensor],
    time_dtype: torch.dtype,
) -> torch.Tensor:
    """`initial_step` for each row of a batch (B, n) at once, on the device: f takes times (B,)
    in `time_dtype` and `norm` maps (B, n) to (B,). One (batched) evaluation of f.

    Returns the magnitudes |h0| (B,) in `time_dtype`; NaN where a row is not finite.
    """
    with torch.no_grad():
        scale = y0.abs().mul_(rtol).add_(atol)
        d0 = norm(y0 / scale).to(time_dtype)
        d1 = norm(f0 / scale).to(time_dtype)
        h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1)
        step = (direction * h0).to(y0.dtype).unsqueeze(-1)
        f1 = f(t0 + direction * h0, torch.addcmul(y0, f0, step))
        d2 = norm((f1 - f0) / scale).to(time_dtype) / h0
        largest = torch.maximum(d1, d2)
        (powered,) = _powers([torch.full_like(largest, 0.01) / largest], [1.0 / (order + 1)])
        h1 = torch.where(largest <= 1e-15, (h0 * 1e-3).clamp_min(1e-6), powered)
        finite = torch.isfinite(d0) & torch.isfinite(d1) & torch.isfinite(d2)
        return torch.where(finite, torch.minimum(100 * h0, h1), torch.nan)
