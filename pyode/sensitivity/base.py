"""What every sensitivity algorithm is: a description that knows how to run a solve."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..integrate import SolveOptions
    from ..problem import ODEProblem, Solution
    from ..solvers.base import AbstractSolver


class AbstractSensitivityAlgorithm(abc.ABC):
    """How gradients flow back through a solve. Subclasses are small frozen descriptions.

    `solve` runs the forward loop (`pyode.integrate.integrate`) in whatever way the algorithm needs:
    under autograd, or under `no_grad` wrapped in a `torch.autograd.Function` whose backward
    solves the adjoint system with the same loop.
    """

    @abc.abstractmethod
    def solve(self, prob: ODEProblem, solver: AbstractSolver, opts: SolveOptions, throw: bool) -> Solution:
        """Solve `prob`, arranging for gradients to reach y0, the params and the times."""

    def __repr__(self) -> str:
        # Only the fields that differ from their defaults: `BacksolveAdjoint(seminorm=False)`.
        import dataclasses

        fields = dataclasses.fields(self) if dataclasses.is_dataclass(self) else ()
        shown = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in fields
            if f.repr and not f.name.startswith("_") and getattr(self, f.name) != f.default
        ]
        return f"{type(self).__name__}({', '.join(shown)})"
