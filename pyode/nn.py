"""`NeuralODE`, `NeuralCDE` and `NeuralSDE`: a solve as an `nn.Module`, for training loops."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .problem import CDEProblem, ODEProblem, SDEProblem, Solution, State, cde_params
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


class NeuralSDE(nn.Module):
    """dy = drift(t, y) dt + diffusion(t, y) dW as a module: `forward(y0, saveat, bm)` returns the
    `Solution` on a Brownian sample path (a new one on each call unless `bm` is given).

    Args:
        drift: an `nn.Module` called as `drift(t, y)`, returning y's shape.
        diffusion: an `nn.Module` called as `diffusion(t, y)`, returning y's shape for
            noise="diagonal" or (*y.shape, m) for "general"/"additive" (see `pyode.SDEProblem`).
        tspan: (t0, t1).
        noise, sde_type: as in `pyode.SDEProblem` (by default diagonal, Stratonovich: the
            calculus of the reversible Heun method, the default solver).
        solver: the method: `ReversibleHeun()` by default, whose `ReversibleAdjoint` gives exact
            gradients at memory independent of the number of steps (Kidger et al. 2021). It is
            unstable on strongly dissipative dynamics over long spans (see `ReversibleHeun`):
            there pass `Heun()` with `sensealg=BacksolveAdjoint()`.
        sensealg: how gradients flow back (the solver's default when None).
        dt: the step (fixed steps by default, as neural SDEs are usually trained).
        adaptive: step adaptively with `rtol`/`atol` instead (on the same Brownian path).
        **solve_kwargs: any other keyword of `pyode.solve`.
    """

    def __init__(
        self,
        drift: nn.Module,
        diffusion: nn.Module,
        tspan: Sequence[float] = (0.0, 1.0),
        noise: str = "diagonal",
        sde_type: str = "stratonovich",
        solver: AbstractSolver | None = None,
        sensealg: Any = None,
        dt: float = 1e-2,
        adaptive: bool = False,
        rtol: float = 1e-3,
        atol: float = 1e-5,
        **solve_kwargs: Any,
    ):
        super().__init__()
        for name, module in (("drift", drift), ("diffusion", diffusion)):
            if not isinstance(module, nn.Module):
                raise TypeError(
                    f"NeuralSDE: {name} must be an nn.Module called as {name}(t, y); got {type(module).__name__}"
                )
        if len(tspan) != 2:
            raise ValueError(f"NeuralSDE: tspan must be (t0, t1); got {tspan!r}")
        if not (isinstance(dt, (int, float)) and dt > 0):
            raise ValueError(f"NeuralSDE: dt must be a positive number; got {dt!r}")
        from .solvers import ReversibleHeun

        self.drift, self.diffusion = drift, diffusion
        self.tspan = (float(tspan[0]), float(tspan[1]))
        self.noise, self.sde_type = noise, sde_type
        self.solver = solver if solver is not None else ReversibleHeun()
        self.sensealg = sensealg
        self.dt, self.adaptive, self.rtol, self.atol = float(dt), adaptive, rtol, atol
        self.solve_kwargs = solve_kwargs

    def forward(
        self, y0: torch.Tensor, saveat: torch.Tensor | Sequence[float] | None = None, bm: Any = None
    ) -> Solution:
        """Solve from y0 (*batch, d), saving at `saveat` (every step by default), driven by `bm`
        (a new `pyode.BrownianInterval` by default; `sol.bm` returns the one used)."""
        params: list[torch.Tensor] = []
        for module in (self.drift, self.diffusion):
            params.extend(p for p in module.parameters() if p.requires_grad and all(p is not q for q in params))
        prob = SDEProblem(self.drift, self.diffusion, y0, self.tspan, self.noise, self.sde_type, params, bm=bm)
        return solve(
            prob,
            self.solver,
            saveat=saveat,
            dt=self.dt,
            adaptive=self.adaptive,
            rtol=self.rtol,
            atol=self.atol,
            sensealg=self.sensealg,
            **self.solve_kwargs,
        )

    def extra_repr(self) -> str:
        return (
            f"tspan={self.tspan}, noise={self.noise!r}, sde_type={self.sde_type!r}, solver={self.solver!r}, "
            f"dt={self.dt}, adaptive={self.adaptive}"
        )
