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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .norms import rms_norm
from .solvers.base import AbstractSolver, Step


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
    tableau = getattr(solver, "tableau", None)
    return tableau is not None and tableau.stages >= 2 and tableau.c[-1] == 1 and tableau.c[-2] == 1


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

    def accept(self, step: Step, ratio: torch.Tensor) -> None:
        self.steps += 1
        if self.options.error is not None:
            term = ratio * abs(step.h)
            self.error = term if self.error is None else self.error + term
        if self.options.stiffness is not None:
            k = step.stages
            y_prev, y_last = step.stage_inputs
            s = rms_norm(k[-1] - k[-2]) / (rms_norm(y_last - y_prev) + torch.finfo(k.dtype).eps)
            if self.scale is not None:
                s = s / self.scale
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
