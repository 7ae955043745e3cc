"""DirectAdjoint: autograd through every operation of the solver (discrete sensitivities)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..solve import integrate
from .base import AbstractSensitivityAlgorithm

if TYPE_CHECKING:
    from ..problem import ODEProblem, Solution
    from ..solve import SolveOptions
    from ..solvers.base import AbstractSolver


@dataclass(frozen=True)
class DirectAdjoint(AbstractSensitivityAlgorithm):
    """Backpropagate through the solver's own arithmetic, as autograd records it.

    - Memory: every stage of every accepted step (and the rejected ones' graphs are freed),
      O(steps · stages · state) plus f's activations; the largest of all methods.
    - Backward cost: one vector-Jacobian product per stage, about the cost of the forward solve.
    - Accuracy: the exact gradient of the discrete computation, step sizes held constant
      (the controller is not differentiated). The regularisers need exactly this.
    - Gradients reach y0, the parameters f closes over, and the save times when `saveat` is a
      tensor that requires grad (through the dense interpolant, so dy/dt_k ≈ f(t_k, y_k)).
    - Solvers: all.

    This is what torchdiffeq's `odeint` (without adjoint) computes.
    """

    def solve(self, prob: ODEProblem, solver: AbstractSolver, opts: SolveOptions, throw: bool) -> Solution:
        return integrate(prob, solver, opts, throw=throw)
