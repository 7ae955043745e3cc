"""DirectAdjoint: autograd through every operation of the solver (discrete sensitivities)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..problem import ODEProblem
from ..solve import integrate
from .base import AbstractSensitivityAlgorithm

if TYPE_CHECKING:
    from ..problem import Solution, State
    from ..solve import SolveOptions
    from ..solvers.base import AbstractSolver


@dataclass(frozen=True, repr=False)
class DirectAdjoint(AbstractSensitivityAlgorithm):
    """Backpropagate through the solver's own arithmetic, as autograd records it.

    - Memory: every stage of every accepted step (rejected steps' graphs are freed),
      O(steps · stages · state) plus f's activations: the most of all methods.
    - Backward cost: one vector-Jacobian product per stage, about the cost of the forward solve.
    - Accuracy: the exact gradient of the discrete computation, with step sizes held constant
      (the controller is not differentiated). The regularizers need exactly this.
    - Gradients reach y0, every tensor f closes over (its parameters), the save times when
      `saveat` is a tensor that requires grad (through the dense interpolant:
      dy(t_k)/dt_k = f(t_k, y_k) to interpolation accuracy), and `tspan` entries that require
      grad, through the flow identities ∂y(t)/∂t0 = -∂y(t)/∂y0 · f(t0, y0) (one extra
      evaluation of f) and, when every step is saved, ∂y(t1)/∂t1 = f(t1, y(t1)).
    - Solvers: all.

    This is what torchdiffeq's `odeint` (without adjoint) computes.
    """

    def solve(self, prob: ODEProblem, solver: AbstractSolver, opts: SolveOptions, throw: bool) -> Solution:
        t0, t1 = prob.tspan
        grad = torch.is_grad_enabled()
        wants_t0 = grad and isinstance(t0, torch.Tensor) and t0.requires_grad
        wants_t1 = grad and isinstance(t1, torch.Tensor) and t1.requires_grad and opts.saveat is None
        extra_nfe = 0
        if wants_t0:
            f0 = _derivative(prob, t0, prob.y0)
            extra_nfe += 1
            prob = dataclasses.replace(prob, y0=_map(lambda y, f: _TimeShift.apply(y, t0, f, -1.0), prob.y0, f0))
        sol = integrate(prob, solver, opts, throw=throw)
        sol.stats.nfe += extra_nfe
        if wants_t1 and sol.retcode.successful:
            last = _map(lambda y: y[-1], sol.y)
            f1 = _derivative(prob, t1, last)
            sol.stats.nfe += 1
            sol.y = _map(
                lambda ys, y, f: torch.cat((ys[:-1], _TimeShift.apply(y, t1, f, 1.0).unsqueeze(0))), sol.y, last, f1
            )
        return sol


def _map(fn, *states):
    if isinstance(states[0], tuple):
        return tuple(fn(*parts) for parts in zip(*states))
    return fn(*states)


def _derivative(prob: ODEProblem, t: torch.Tensor, y: State) -> State:
    """f(t, y), detached: it enters the gradient only as a constant direction."""
    y_any = y[0] if isinstance(y, tuple) else y
    with torch.no_grad():
        return prob.f(t.detach().to(dtype=y_any.dtype, device=y_any.device), _map(torch.Tensor.detach, y))


class _TimeShift(torch.autograd.Function):
    """Identity on y whose backward also sends sign·<grad, f> to the time t."""

    @staticmethod
    def forward(ctx, y, t, f, sign):
        ctx.save_for_backward(f)
        ctx.sign = sign
        ctx.t_shape, ctx.t_dtype = t.shape, t.dtype
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad):
        (f,) = ctx.saved_tensors
        grad_t = (ctx.sign * torch.sum(grad * f)).to(ctx.t_dtype).reshape(ctx.t_shape)
        return grad, grad_t, None, None
