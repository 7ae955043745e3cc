"""The generic explicit Runge–Kutta method: one stepper for every tableau."""

from __future__ import annotations

from typing import Callable, ClassVar

import torch

from .. import interpolation
from ..interpolation import PolynomialInterpolant
from .base import AbstractSolver, DenseStepper, StepResult, VectorField
from .tableau import ButcherTableau


class AbstractExplicitRK(AbstractSolver):
    """An explicit Runge–Kutta method given by its `tableau`.

    Subclasses set `tableau`, `order`, `error_order` (if the tableau has an embedded method) and
    optionally `interpolant` (cubic Hermite otherwise). An interpolant reads the step's stages,
    then f(t + h, y1), then any `dense_stages`: extra stages evaluated only for steps whose
    dense output is needed, each given as (c, a-row over all stages before it).
    """

    tableau: ClassVar[ButcherTableau]
    interpolant: ClassVar[PolynomialInterpolant | None] = None
    # Extent of the stability region on the negative real axis (for the stiffness regularizer).
    stability_extent: ClassVar[float | None] = None
    dense_stages: ClassVar[tuple[tuple[float, tuple[float, ...]], ...]] = ()

    def stepper(self, f: VectorField, dtype: torch.dtype, device: torch.device) -> RKStepper:
        return RKStepper(self, f, dtype, device)

    def combine_error_norms(self, norms: list[torch.Tensor]) -> torch.Tensor:
        """The error ratio from the norms of the tableau's error estimates (one by default)."""
        (norm,) = norms
        return norm


class RKStepper(DenseStepper):
    def __init__(self, solver: AbstractExplicitRK, f: VectorField, dtype: torch.dtype, device: torch.device):
        self.solver = solver
        self.f = f
        self.tableau = solver.tableau.cast(dtype, device)
        self.fsal = solver.tableau.fsal
        self.stages = solver.tableau.stages
        self.interpolant_weights = solver.interpolant.cast(dtype, device) if solver.interpolant is not None else None
        self.dense_stages = tuple((c, torch.tensor(row, dtype=dtype).to(device)) for c, row in solver.dense_stages)

    def step(self, t: float, y: torch.Tensor, h: float, k1: torch.Tensor | None) -> StepResult:
        tab = self.tableau
        f = self.f
        # Zeros, not empty: row i of `a` is padded with zeros over the stages not yet computed,
        # and 0 * (uninitialised NaN) would poison the combination.
        stages = y.new_zeros((self.stages, y.shape[0]))
        stages[0] = k1
        stages_t = stages.T
        yi = y_prev = y
        for i in range(1, self.stages):
            y_prev = yi
            yi = torch.addmv(y, stages_t, tab.a_rows[i], alpha=h)
            stages[i] = f(t + tab.c[i] * h, yi)
        if self.fsal:
            return StepResult(t, h, y, yi, stages=stages, next_k1=stages[-1], stage_inputs=(y_prev, yi))
        y1 = torch.addmv(y, stages_t, tab.b, alpha=h)
        return StepResult(t, h, y, y1, stages=stages, stage_inputs=(y_prev, yi))

    def error_ratio(self, step: StepResult, rtol: float, atol: float, norm: Callable) -> torch.Tensor:
        if step.ratio is not None:
            return step.ratio
        # err_j = h Σ_i e_ij k_i for each estimate j; h is pulled out of the norm (norms are
        # homogeneous), which saves an operation on the whole state.
        scale = torch.maximum(step.y0.abs(), step.y1.abs()).mul_(rtol).add_(atol)
        b_error = self.tableau.b_error
        if b_error.shape[1] == 1:
            return norm(torch.mv(step.stages.T, b_error[:, 0]).div_(scale)) * abs(step.h)
        scaled = torch.mm(step.stages.T, b_error).div_(scale.unsqueeze(-1))
        norms = [norm(scaled[:, j]) for j in range(scaled.shape[1])]
        return self.solver.combine_error_norms(norms) * abs(step.h)

    @property
    def dense_needs_f1(self) -> bool:
        return self.interpolant_weights is None or bool(self.dense_stages)

    def dense(self, step: StepResult, f1: torch.Tensor | None) -> torch.Tensor:
        if step.dense is not None:
            return step.dense
        if self.interpolant_weights is None:
            return interpolation.hermite_coefficients(step.y0, step.y1, step.stages[0], f1, step.h)
        stages = step.stages
        if self.dense_stages:
            n_base = stages.shape[0]
            stages = torch.cat((stages, stages.new_empty((1 + len(self.dense_stages), stages.shape[1]))))
            stages[n_base] = f1
            for i, (c, row) in enumerate(self.dense_stages):
                j = n_base + 1 + i
                yj = torch.addmv(step.y0, stages[:j].T, row, alpha=step.h)
                stages[j] = self.f(step.t + c * step.h, yj)
        return interpolation.polynomial_coefficients(self.interpolant_weights, stages, step.h)
