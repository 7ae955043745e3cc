"""The stochastic adjoint: `BacksolveAdjoint`'s backward sweep for an SDE (Li, Wong, Chen &
Duvenaud, "Scalable gradients for stochastic differential equations", AISTATS 2020).

Written in Stratonovich form, the adjoint of dz = f_s(t, z) dt + g(t, z) ∘ dW is again an SDE
driven by the same Brownian path, solved backward from the last save point:

    dz   =  f_s dt + g ∘ dW,
    da   = -a·∂f_s/∂z dt - a·∂(g dW)/∂z,
    da_θ = -a·∂f_s/∂θ dt - a·∂(g dW)/∂θ,

where f_s is the Stratonovich drift: f itself for a Stratonovich SDE, and f - ½ Σ_k (∂g_k/∂z) g_k
(the Itô–Stratonovich correction, differentiated by autograd) for an Itô SDE. The noise of the
adjoint is general whatever the forward noise is, but the Stratonovich methods that read only
products g·dW (`EulerHeun`, `Heun`, `Midpoint`) step it: the product is one vector–Jacobian
product with dW held fixed. Every save point resets z to the forward value, as for ODEs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..integrate import StateLayout
from ..problem import SDENoise, Stats
from ..solvers.base import AbstractSolver
from ..solvers.sde import AbstractDiffusion, AbstractSDESolver, Diffusion, SDEHeun, sde_form
from .adjoint import AdjointGradients, ForwardRecord, adjoint_norm, solve_backward, sweep
from .vector_field import VectorField


def backward_solver(sensealg: Any, forward: AbstractSolver) -> AbstractSolver:
    """The method of the backward SDE: the sensealg's, else the forward one when it steps with
    products g·dW alone, else `Heun()`."""
    solver = sensealg.solver
    if solver is not None:
        solver = sde_form(solver)  # Heun() and Midpoint() stand for their SDE forms
        if not (isinstance(solver, AbstractSDESolver) and solver.products_only):
            raise TypeError(
                f"{type(sensealg).__name__}(solver={solver!r}): the backward SDE of the stochastic adjoint has "
                "general noise in Stratonovich form; use EulerHeun(), Heun() or Midpoint()"
            )
        return solver
    if isinstance(forward, AbstractSDESolver) and forward.products_only:
        return forward
    return SDEHeun()


def _grad(out: torch.Tensor, inputs: tuple, cotangent: torch.Tensor, create: bool) -> list:
    if not out.requires_grad:
        return [None] * len(inputs)
    return list(torch.autograd.grad(out, inputs, cotangent, allow_unused=True, retain_graph=True, create_graph=create))


class _StratonovichDrift:
    """f_s(t, z) on flat states, differentiable: f, less ½ Σ_k (∂g_k/∂z) g_k for an Itô SDE."""

    def __init__(self, record: ForwardRecord, noise: SDENoise, g: Diffusion, stats: Stats):
        self.f, self.g, self.noise, self.stats = record.prob.f, g, noise, stats
        self.layout: StateLayout = record.layout
        self.ito = noise.sde_type == "ito" and noise.noise != "additive"
        # An Itô SDE solved backward in time (t1 < t0) is an Itô SDE in the reversed time, whose
        # Stratonovich drift, read in the original time, is f + ½ Σ_k (∂g_k/∂z) g_k.
        t0, t1 = (float(t.detach()) if isinstance(t, torch.Tensor) else float(t) for t in record.prob.tspan)
        self.half = 0.5 if t1 >= t0 else -0.5

    def __call__(self, t: float, z: torch.Tensor) -> torch.Tensor:
        """Called under enable_grad with z requiring grad."""
        self.stats.nfe += 1
        out = self.layout.call(self.f, t, z)
        if not self.ito:
            return out
        G = self.g.matrix(t, z)
        if not G.requires_grad:  # g reads neither z nor a parameter: no correction
            return out
        if self.noise.noise == "diagonal":
            (correction,) = torch.autograd.grad(G, z, G, create_graph=True, allow_unused=True)
            return out if correction is None else out - self.half * correction
        # scalar and general noise: Σ_k (∂g_k/∂z) g_k, one forward-mode product per column
        correction = torch.zeros_like(z)
        for k in range(G.shape[-1]):
            column = G[..., k].reshape(-1)
            w = torch.zeros_like(column, requires_grad=True)
            (vjp,) = torch.autograd.grad(column, z, w, create_graph=True, allow_unused=True)
            if vjp is None or not vjp.requires_grad:  # g does not read z
                return out
            (jvp,) = torch.autograd.grad(vjp, w, column, create_graph=True)
            correction = correction + jvp
        return out - self.half * correction


class _AdjointDiffusion(AbstractDiffusion):
    """The adjoint system's noise: products of [g, -a·∂g/∂z, -a·∂g/∂θ] with dW, as one VJP
    through g(t, z)·dW, on the forward Brownian path."""

    noise = "general"

    def __init__(self, record: ForwardRecord, g: Diffusion, params: tuple, vf: VectorField):
        self.g, self.params, self.vf = g, params, vf
        self.aug = StateLayout((record.ys[0], record.ys[0], record.ys.new_zeros(sum(vf.sizes))))

    def increment(self, t: float, h: float) -> torch.Tensor:
        return self.g.increment(t, h)

    def prod(self, t: float, y: torch.Tensor, dW: torch.Tensor) -> torch.Tensor:
        z, a, _ = self.aug.unflatten(y)
        with torch.enable_grad():
            z_ = z.detach().requires_grad_(True)
            out = self.g.prod(t, z_, dW)
            grads = _grad(out, (z_, *self.params), -a, create=False)
        grad_z = grads[0] if grads[0] is not None else torch.zeros_like(z)
        return torch.cat((out.detach(), grad_z, self.vf.flat_params(grads[1:], z)))


def sde_backsolve_sweep(
    sensealg: Any, record: ForwardRecord, grad_ys: torch.Tensor, vf: VectorField, stats: Stats
) -> AdjointGradients:
    """dL/dz0 and dL/dθ by the stochastic adjoint (see the module docstring)."""
    noise: SDENoise = record.prob.noise
    params = record.params
    g = Diffusion(noise.g, noise.bm, noise.noise, record.layout, stats)  # the forward g, on z
    drift = _StratonovichDrift(record, noise, g, stats)
    diffusion = _AdjointDiffusion(record, g, params, vf)
    solver = backward_solver(sensealg, record.solver)
    backward = dataclasses.replace(sensealg, solver=solver)
    norm = adjoint_norm(sensealg, n_groups=3, keep=2)

    def augmented(t: float, state: tuple) -> tuple:
        z, a, _ = state
        with torch.enable_grad():
            z_ = z.detach().requires_grad_(True)
            out = drift(t, z_)
            grads = _grad(out, (z_, *params), -a, create=False)
        grad_z = grads[0] if grads[0] is not None else torch.zeros_like(z)
        return out.detach(), grad_z, vf.flat_params(grads[1:], z)

    a_theta = record.ys.new_zeros(sum(vf.sizes))
    dt = None

    def interval(k: int, t_from: float, t_to: float, a: torch.Tensor) -> torch.Tensor:
        nonlocal a_theta, dt
        state = (record.ys[k], a, a_theta)
        (_, a, a_theta), dt = solve_backward(
            backward, record, augmented, state, t_from, t_to, dt, norm, stats, integral_parts=1, noise=diffusion
        )
        return a

    a = sweep(record, grad_ys, interval)
    return AdjointGradients(y0=a, params=a_theta, a_t0=a)
