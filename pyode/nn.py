"""`NeuralODE` and `NeuralCDE`: a solve as an `nn.Module`, for training loops."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .problem import CDEProblem, ODEProblem, Solution, State, cde_params
from .regularizers import LocalRegularization, Regularization
from .solve import solve
from .solvers import Tsit5
from .solvers.base import AbstractSolver


class NeuralODE(nn.Module):
    """dy/dt = vector_field(t, y) over `tspan`, as a module: `forward(y0)` returns the `Solution`.

    Its parameters are the vector field's, so any optimizer, `state_dict` and `.to(device)`
    work as for any module; with an adjoint `sensealg` the parameters are passed to it
    automatically.

    Args:
        vector_field: an `nn.Module` called as `vector_field(t, y)`.
        tspan: (t0, t1).
        solver: the method (`Tsit5()` by default).
        sensealg: how gradients flow back (`DirectAdjoint()` by default; `ReversibleAdjoint()`
            for reversible solvers).
        saveat: save times (a tensor is kept as a buffer, so it follows `.to()`); by default
            every step is saved.
        rtol, atol: tolerances.
        regularize: the solver-heuristic regularizers (see `pyode.Regularization`, or
            `pyode.LocalRegularization` for adjoint sensealgs); the solution then carries
            `error_estimate` and `stiffness_estimate` to add to the loss.
        steer: STEER (Ghosh, Behl, Dupont, Torr & Namboodiri, NeurIPS 2020): in training mode the
            end time is drawn uniformly from (t1 - steer, t1 + steer) on every call, which also
            regularizes towards dynamics that are cheap to solve. For models read at the end time
            only (no `saveat`). 0 disables it; evaluation mode always uses t1.
        **solve_kwargs: any other keyword of `pyode.solve` (dt, internalnorm, max_steps, ...);
            `compile=True` runs every step as one compiled graph, compiled on the first call and
            reused by every later one (see `pyode.solve`).
    """

    def __init__(
        self,
        vector_field: nn.Module,
        tspan: Sequence[float] = (0.0, 1.0),
        solver: AbstractSolver | None = None,
        sensealg: Any = None,
        saveat: torch.Tensor | Sequence[float] | None = None,
        rtol: float = 1e-6,
        atol: float = 1e-8,
        regularize: bool | Regularization | LocalRegularization = False,
        steer: float = 0.0,
        **solve_kwargs: Any,
    ):
        super().__init__()
        if not isinstance(vector_field, nn.Module):
            raise TypeError(
                f"NeuralODE: vector_field must be an nn.Module called as f(t, y); got {type(vector_field).__name__}"
            )
        if len(tspan) != 2:
            raise ValueError(f"NeuralODE: tspan must be (t0, t1); got {tspan!r}")
        t0, t1 = (float(t) for t in tspan)
        if not 0 <= steer < abs(t1 - t0):
            raise ValueError(f"NeuralODE: steer must be in [0, |t1 - t0|) = [0, {abs(t1 - t0)}); got {steer}")
        if steer and saveat is not None:
            raise ValueError(
                "NeuralODE: steer varies the end time, so it needs saveat=None (the model is read at the end)"
            )
        self.vector_field = vector_field
        self.tspan = (t0, t1)
        self.solver = solver if solver is not None else Tsit5()
        self.sensealg = sensealg
        if isinstance(saveat, torch.Tensor):
            self.register_buffer("saveat", saveat.detach().clone(), persistent=False)
        else:
            self.saveat = None if saveat is None else [float(s) for s in saveat]
        self.rtol, self.atol = rtol, atol
        self.regularize = regularize
        self.steer = float(steer)
        self.solve_kwargs = solve_kwargs

    def forward(self, y0: State) -> Solution:
        t0, t1 = self.tspan
        if self.training and self.steer:
            direction = 1.0 if t1 >= t0 else -1.0
            t1 = t1 + direction * self.steer * (2 * torch.rand(()).item() - 1)
        prob = ODEProblem(
            self.vector_field, y0, (t0, t1), params=[p for p in self.vector_field.parameters() if p.requires_grad]
        )
        return solve(
            prob,
            self.solver,
            saveat=self.saveat,
            rtol=self.rtol,
            atol=self.atol,
            regularize=self.regularize,
            sensealg=self.sensealg,
            **self.solve_kwargs,
        )

    def extra_repr(self) -> str:
        return f"tspan={self.tspan}, solver={self.solver!r}, sensealg={self.sensealg!r}, rtol={self.rtol}, atol={self.atol}"


class NeuralCDE(nn.Module):
    """dz = vector_field(t, z) dX(t) as a module: `forward(X, z0)` returns the `Solution` of the
    neural CDE driven by the path X (Kidger, Morrill, Foster & Lyons, "Neural controlled
    differential equations for irregular time series", NeurIPS 2020).

    The usual model around it reads z0 from the data's first observation and a prediction from
    the final state: `z0 = initial(X.evaluate(X.knots[0]))`, `y = readout(sol.y[-1])`.

    Args:
        vector_field: an `nn.Module` called as `vector_field(t, z)`, returning (..., hidden,
            channels) for z of shape (..., hidden).
        solver: the method (`Tsit5()` by default).
        sensealg: how gradients flow back (`DirectAdjoint()` by default); with an adjoint the
            parameters of the vector field, and the path's tensors that require grad, are
            differentiated.
        rtol, atol: tolerances; torchcde's defaults (1e-4, 1e-6), looser than `solve`'s, as data
            paths rarely justify more.
        stop_at_knots: see `pyode.CDEProblem`.
        **solve_kwargs: any other keyword of `pyode.solve`.
    """

    def __init__(
        self,
        vector_field: nn.Module,
        solver: AbstractSolver | None = None,
        sensealg: Any = None,
        rtol: float = 1e-4,
        atol: float = 1e-6,
        stop_at_knots: bool | None = None,
        **solve_kwargs: Any,
    ):
        super().__init__()
        if not isinstance(vector_field, nn.Module):
            raise TypeError(
                f"NeuralCDE: vector_field must be an nn.Module called as f(t, z); got {type(vector_field).__name__}"
            )
        self.vector_field = vector_field
        self.solver = solver if solver is not None else Tsit5()
        self.sensealg = sensealg
        self.rtol, self.atol = rtol, atol
        self.stop_at_knots = stop_at_knots
        self.solve_kwargs = solve_kwargs

    def forward(
        self,
        X: Any,
        z0: State,
        saveat: torch.Tensor | Sequence[float] | None = None,
        tspan: Sequence[float] | None = None,
    ) -> Solution:
        """Solve over `tspan` (the path's knots by default), saving at `saveat` (every step by
        default)."""
        params = [p for p in cde_params(self.vector_field, X) if p.requires_grad]
        prob = CDEProblem(self.vector_field, X, z0, tspan, params, stop_at_knots=self.stop_at_knots)
        return solve(
            prob,
            self.solver,
            saveat=saveat,
            rtol=self.rtol,
            atol=self.atol,
            sensealg=self.sensealg,
            **self.solve_kwargs,
        )

    def extra_repr(self) -> str:
        return f"solver={self.solver!r}, sensealg={self.sensealg!r}, rtol={self.rtol}, atol={self.atol}"
