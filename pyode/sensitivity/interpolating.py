"""InterpolatingAdjoint: the continuous adjoint with the state read from the forward solution."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..integrate import SolveOptions
from ..problem import Stats
from ..solvers.base import AbstractSolver
from .adjoint import (
    AbstractAdjoint,
    AdjointGradients,
    ForwardRecord,
    adjoint_norm,
    recompute,
    require_dense,
    solve_backward,
    sweep,
)
from .vector_field import VectorField


@dataclass(frozen=True, repr=False)
class InterpolatingAdjoint(AbstractAdjoint):
    """The continuous adjoint with z(t) interpolated from a forward solution instead of being
    integrated backward (SciMLSensitivity's InterpolatingAdjoint): solve

        da/dt = -a·∂f/∂z(t, z(t)),   da_θ/dt = -a·∂f/∂θ(t, z(t))

    backward, adding dL/dz(t_k) to a at each save point.

    - `checkpointing=True`: the forward pass keeps only the save points; the backward pass
      re-solves each interval between them forward (with dense output) before integrating the
      adjoint over it. Memory O(state · steps of one interval + params); backward cost one more
      forward solve. With False, the forward pass keeps its whole dense output: memory
      O(state · steps · stages), no recomputation.
    - Accuracy: the continuous gradient to the tolerances, and stable where backsolve is not
      (z is never integrated backward).
    - `seminorm=True`: backward step control on a only, not a_θ (Kidger, Chen & Lyons 2021).
    - Times and solvers: as BacksolveAdjoint.
    """

    seminorm: bool = True
    checkpointing: bool = True

    def forward_options(self, opts: SolveOptions) -> SolveOptions:
        return opts if self.checkpointing else dataclasses.replace(opts, dense=True)

    def check_solvers(self, forward: AbstractSolver, backward: AbstractSolver) -> None:
        require_dense(self, forward, "forward")

    def backward_sweep(
        self, record: ForwardRecord, grad_ys: torch.Tensor, vf: VectorField, stats: Stats
    ) -> AdjointGradients:
        norm = adjoint_norm(self, n_groups=2, keep=1)
        ys = record.ys
        y0 = record.layout.flatten(record.prob.y0).detach()
        a_theta = ys.new_zeros(sum(vf.sizes))
        dt = None

        def interval(k: int, t_from: float, t_to: float, a: torch.Tensor) -> torch.Tensor:
            nonlocal a_theta, dt
            if self.checkpointing:
                state_at = recompute(record, ys[k - 1] if k > 0 else y0, t_to, t_from, stats).at
            else:
                state_at = record.dense.at

            def augmented(t: float, state: tuple) -> tuple:
                a, _ = state
                _, vjp_z, vjp_theta = vf.vjp(t, state_at(t), -a)
                return vjp_z, vjp_theta

            (a, a_theta), dt = solve_backward(
                self, record, vf.counted(augmented), (a, a_theta), t_from, t_to, dt, norm, stats, integral_parts=1
            )
            return a

        a = sweep(record, grad_ys, interval)
        return AdjointGradients(y0=a, params=a_theta, a_t0=a)
