"""Solver-heuristic regularizers (Pal, Ma, Shah & Rackauckas, "Opening the Blackbox:
Accelerating Neural Differential Equations by Regularizing Internal Solver Heuristics", ICML
2021): quantities the adaptive solver computes anyway, accumulated over the accepted steps and
added to the loss so that training favours dynamics that are cheap to solve.

- R_E = Σ_j E_j·|h_j|, with E_j the step's error ratio (the scaled norm the controller compares
  with 1). The paper writes a sum; the authors' code (RegNeuralDE.jl) averages over steps.
- R_S = Σ_j S_j, with Shampine's stiffness estimate S_j = ‖k_s - k_{s-1}‖ / ‖Y_s - Y_{s-1}‖ from
  the two stages that share c = 1 (DP5 and Tsit5), which estimates |λ|·h for the dominant
  eigenvalue, optionally divided by the method's stability-region extent on the negative real
  axis (then S_j ≈ 1 means the step is at the stability limit). The authors' code takes the max.

Both are differentiable through `DirectAdjoint` (discrete sensitivities): the gradient of the
solver's own computation, at no extra evaluations of f.

`LocalRegularization` (Pal, Ma, Shah & Rackauckas, "Locally Regularized Neural Differential
Equations", 2023) estimates the same per-step terms from one step at a random time instead, so it
works with every sensitivity algorithm: see `local_estimates`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .norms import rms_norm
from .solvers.base import AbstractSolver, StepResult
from .step_control import initial_step


@dataclass(frozen=True)
class Regularization:
    """What `solve(..., regularize=...)` accumulates; `regularize=True` means the defaults.

    Args:
        error: reduction of R_E over steps, "sum" (the paper) or "mean" (the authors' code);
            None to skip it.
        stiffness: reduction of R_S over steps, "sum" or "max" (the authors' code); None to
            skip it (needed for solvers without two stages at c = 1).
        scale_stiffness: divide S_j by the method's stability extent (3.5068 for Tsit5, as in
            the authors' code; 3.3066 for DP5).
    """

    error: str | None = "sum"
    stiffness: str | None = "sum"
    scale_stiffness: bool = True

    def __post_init__(self) -> None:
        if self.error not in (None, "sum", "mean"):
            raise ValueError(f"Regularization: error must be 'sum', 'mean' or None; got {self.error!r}")
        if self.stiffness not in (None, "sum", "max"):
            raise ValueError(f"Regularization: stiffness must be 'sum', 'max' or None; got {self.stiffness!r}")
        if self.error is None and self.stiffness is None:
            raise ValueError("Regularization: nothing to accumulate (error and stiffness are both None)")


def stiffness_pair(solver: AbstractSolver) -> bool:
    """Whether the solver has the two stages at c = 1 that Shampine's estimate needs."""
    from .solvers.runge_kutta import AbstractExplicitRK

    if not isinstance(solver, AbstractExplicitRK):  # an implicit method's stages are not f's values
        return False
    tableau = solver.tableau
    return tableau.stages >= 2 and tableau.c[-1] == 1 and tableau.c[-2] == 1


def check(regularization: Regularization, solver: AbstractSolver) -> None:
    """Fail clearly for a solver that cannot provide what is asked."""
    if regularization.error is not None and not solver.adaptive:
        raise ValueError(
            f"the error regularizer needs a solver with an error estimate (DP5(), Tsit5(), BS3(), ...); got {solver!r}"
        )
    if regularization.stiffness is not None and not stiffness_pair(solver):
        raise ValueError(
            f"the stiffness regularizer needs two stages at c = 1, which DP5() and Tsit5() have and {solver!r} "
            "does not; use one of those, or Regularization(stiffness=None) for the error regularizer alone"
        )


class Accumulator:
    """Accumulates R_E and R_S from the record of each accepted step."""

    def __init__(self, regularization: Regularization, solver: AbstractSolver):
        check(regularization, solver)
        self.options = regularization
        self.scale = getattr(solver, "stability_extent", None) if regularization.scale_stiffness else None
        self.error: torch.Tensor | None = None
        self.stiffness: torch.Tensor | None = None
        self.steps = 0

    def accept(self, step: StepResult, ratio: torch.Tensor) -> None:
        self.steps += 1
        if self.options.error is not None:
            term = ratio * abs(step.h)
            self.error = term if self.error is None else self.error + term
        if self.options.stiffness is not None:
            s = step_stiffness(step, self.scale)
            if self.stiffness is None:
                self.stiffness = s
            elif self.options.stiffness == "max":
                self.stiffness = torch.maximum(self.stiffness, s)
            else:
                self.stiffness = self.stiffness + s

    def results(self, like: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        zero = like.new_zeros(())
        error = stiffness = None
        if self.options.error is not None:
            error = zero if self.error is None else self.error
            if self.options.error == "mean" and self.steps:
                error = error / self.steps
        if self.options.stiffness is not None:
            stiffness = zero if self.stiffness is None else self.stiffness
        return error, stiffness


def step_stiffness(step: StepResult, scale: float | None) -> torch.Tensor:
    """Shampine's estimate ‖k_s - k_{s-1}‖ / ‖Y_s - Y_{s-1}‖ of one step, over `scale` if given."""
    k = step.stages
    y_prev, y_last = step.stage_inputs
    s = rms_norm(k[-1] - k[-2]) / (rms_norm(y_last - y_prev) + torch.finfo(k.dtype).eps)
    return s if scale is None else s / scale


@dataclass(frozen=True)
class LocalRegularization:
    """The local regularizers (Pal, Ma, Shah & Rackauckas 2023, "Locally Regularized Neural
    Differential Equations"), for `solve(..., regularize=LocalRegularization())`.

    Each solve draws one time t_s uniformly from the span (torch's generator, so
    `torch.manual_seed` fixes it), reads the solution there, and takes one Tsit5 step from it
    with the step size Hairer's heuristic picks at that point for the solve's tolerances. The
    step's R_E and R_S terms (the same formulas as `Regularization`'s per-step terms, R_S over
    Tsit5's stability extent 3.5068) become `sol.error_estimate` and `sol.stiffness_estimate`,
    differentiable with respect to the parameters; the state at t_s enters as a constant, as in
    the authors' code (LocalRegNeuralDE.jl). One difference: there the first stage f(t_s, y_s)
    comes from the integrator's set-up, outside the gradient; here it is differentiated too. Unbiased, up to the span's length, for the time-average of the per-step
    terms, and cheap: 8 more evaluations of f per solve, counted in `sol.stats.nfe`.

    Unlike `Regularization`, it works with every sensitivity algorithm, since the local step is
    differentiated on its own. It needs `saveat=` or dense output (the default without saveat) to
    read the state at t_s; t_s is added to the save times internally and removed from `sol`.

    Args:
        error: compute R_E of the local step.
        stiffness: compute R_S of the local step.
    """

    error: bool = True
    stiffness: bool = True

    def __post_init__(self) -> None:
        for name in ("error", "stiffness"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"LocalRegularization: {name} must be True or False; got {getattr(self, name)!r}")
        if not (self.error or self.stiffness):
            raise ValueError("LocalRegularization: nothing to compute (error and stiffness are both False)")


def local_estimates(
    f: Callable[[float, torch.Tensor], torch.Tensor],
    t: float,
    y: torch.Tensor,
    t_end: float,
    rtol: float,
    atol: float,
    options: LocalRegularization,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """R_E and R_S of one Tsit5 step from (t, y) towards t_end, with f on flat states.

    y is taken as a constant; the result is differentiable with respect to whatever f closes
    over. A step of size zero (t at the end of the span) gives zeros.
    """
    from .solvers.explicit import Tsit5

    solver = Tsit5()
    y = y.detach()
    direction = 1.0 if t_end >= t else -1.0
    f0 = f(t, y)
    h = initial_step(f, t, y, f0.detach(), direction, solver.order, rtol, atol, rms_norm)
    h = min(h, abs(t_end - t))
    error = stiffness = None
    if not (math.isfinite(h) and h > 0):
        zero = f0.new_zeros(())
        return (zero if options.error else None), (zero if options.stiffness else None)
    stepper = solver.stepper(f, y.dtype, y.device)
    step = stepper.step(t, y, direction * h, f0)
    if options.error:
        error = stepper.error_ratio(step, rtol, atol, rms_norm) * h
    if options.stiffness:
        stiffness = step_stiffness(step, solver.stability_extent)
    return error, stiffness
