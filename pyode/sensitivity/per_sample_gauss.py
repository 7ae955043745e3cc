"""GaussAdjoint for per-sample solves (`solve(..., batch_axis=0, sensealg=GaussAdjoint())`):
each element's adjoint solved backward with its own steps, its parameter gradient accumulated by
Gauss–Legendre quadrature on its own backward steps.

Between save points the backward solve integrates [z_i, a_i] for every element at once with
the per-sample loop: element i's steps, rejections and first step (the previous interval's last
proposal) are those of `GaussAdjoint` on element i alone, with its error measured by the mixed
norm max(rms(z_i), rms(a_i)). After each batched backward step, node j of every element that
advanced sits at the same fraction θ_j of its own step: one batched VJP per node, with the
cotangent of element i scaled by its weight -h_i·w_j/2 (0 for the others), sums
a_i·∂f/∂θ(τ_ij, z_i(τ_ij)) over the elements at their own times.

- Memory: O(B·state + params), independent of the number of steps.
- Backward cost: per batched step, the stages' VJPs with respect to z and `nodes` parameter VJPs.
- Needs save times shared by the batch, an explicit Runge–Kutta backward solver and f acting on
  each element (row) separately — as the per-sample loop itself assumes.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import TYPE_CHECKING, NamedTuple

import torch

from .._autocast import no_autocast
from ..integrate import StateLayout, make_options
from ..integrate.per_sample import integrate_per_sample
from ..integrate.per_sample_step import rms_rows
from ..problem import ElementStats, ODEProblem, ReturnCode, Stats
from ..solvers.runge_kutta import AbstractExplicitRK
from .adjoint import _first_order_only, _tightest, stops_within
from .quadrature import gauss_legendre
from .vector_field import VectorField, _check_independent

if TYPE_CHECKING:
    from ..integrate import SolveOptions
    from ..problem import Solution
    from .gauss import GaussAdjoint


def solve_gauss(
    sensealg: GaussAdjoint, prob: ODEProblem, solver: AbstractExplicitRK, opts: SolveOptions, throw: bool
) -> Solution:
    """The forward per-sample solve under `no_grad`, inside an autograd Function whose backward
    runs the batched Gauss adjoint."""
    backward = sensealg.solver or solver
    if not isinstance(backward, AbstractExplicitRK):
        raise ValueError(
            f"GaussAdjoint with batch_axis=0 needs an explicit Runge–Kutta backward solver; got {backward!r}"
        )
    if opts.saveat_batch is not None:
        raise ValueError(
            "GaussAdjoint with batch_axis=0 needs save times shared by the batch (saveat of shape (T,)); per-element "
            "saveat (B, T) works with sensealg=DirectAdjoint()"
        )
    if sensealg.internalnorm is not None:
        raise ValueError(
            "GaussAdjoint(internalnorm=...) is not available with batch_axis=0: each element's backward error is "
            "measured with max(rms(z), rms(a)) over its own entries"
        )
    B = prob.y0.shape[0]
    params = tuple(p for p in prob.params if p.requires_grad)
    t0, t1 = prob.tspan
    if torch.is_grad_enabled():
        _check_independent(params)
        # The closure check evaluates f once at t0, which it passes as a 0-d tensor: give f its (B,) times.
        expanded = dataclasses.replace(prob, f=lambda t, y: prob.f(t.expand(B), y))
        check = Stats()
        layout = StateLayout(prob.y0)
        VectorField(expanded, layout, params, check).check_closure(
            float(t0.detach()) if isinstance(t0, torch.Tensor) else float(t0), layout.flatten(prob.y0)
        )
    times = [t if isinstance(t, torch.Tensor) and t.requires_grad else None for t in (t0, t1)]
    setup = _Setup(sensealg, {}, prob, solver, opts, throw)
    ys = _GaussFunction.apply(setup, prob.y0, times[0], times[1], opts.saveat_tensor, *params)
    sol = setup.holder["solution"]
    sol.y = ys
    if torch.is_grad_enabled():
        sol.stats.nfe += 1
        sol.stats.per_element.nfe.add_(1)
        if ys.requires_grad and sol.dense is not None:
            sol.dense_without_gradient = (
                "GaussAdjoint solves forward without recording, so its dense output is a constant"
            )
    return sol


class _Setup(NamedTuple):
    sensealg: GaussAdjoint
    holder: dict  # receives the forward Solution
    prob: ODEProblem
    solver: AbstractExplicitRK
    opts: SolveOptions
    throw: bool


class _Record(NamedTuple):
    """What the forward solve leaves for the backward pass (never the Solution: see
    `adjoint._AdjointFunction`)."""

    setup: _Setup
    params: tuple[torch.Tensor, ...]
    t0: float
    ts: list[float]
    ys: torch.Tensor  # (T, B, n), detached
    failed: list[int]


class _Field:
    """f on (B, n) rows at (B,) times with its vector-Jacobian products, counting evaluations."""

    def __init__(self, prob: ODEProblem, params: tuple[torch.Tensor, ...], stats: Stats):
        self.f, self.params, self.stats = prob.f, params, stats
        self.shape = prob.y0.shape
        self.flat = VectorField(prob, StateLayout(prob.y0), params, stats)  # for its parameter bookkeeping

    def __call__(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        self.stats.nfe += 1
        with torch.no_grad():
            return self.f(t.to(z.dtype), z.view(self.shape)).reshape(z.shape)

    def vjp(self, t: torch.Tensor, z: torch.Tensor, cotangent: torch.Tensor, wrt_z: bool) -> tuple:
        """(f(t, z), cotangent·∂f/∂z or None, cotangent·∂f/∂θ summed over the rows, flat, or None)."""
        self.stats.nfe += 1
        params = () if wrt_z else self.params
        with torch.enable_grad():
            z_ = z.detach().requires_grad_(wrt_z)
            out = self.f(t.to(z.dtype), z_.view(self.shape)).reshape(z.shape)
            inputs = ((z_,) if wrt_z else ()) + params
            grads = [None] * len(inputs)
            if inputs and out.requires_grad:
                grads = torch.autograd.grad(out, inputs, cotangent, allow_unused=True, retain_graph=True)
        if wrt_z:
            return out.detach(), (grads[0] if grads[0] is not None else torch.zeros_like(z)), None
        return out.detach(), None, self.flat.flat_params(grads, z)


class _GaussFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, setup: _Setup, y0, t0, t1, saveat, *params):
        prob = dataclasses.replace(setup.prob, y0=y0.detach())
        with torch.no_grad():
            sol = integrate_per_sample(prob, setup.solver, setup.opts, setup.throw)
        setup.holder["solution"] = sol
        ctx.solution = weakref.ref(sol)
        t_start = setup.prob.tspan[0]
        ctx.record = _Record(
            setup=setup._replace(holder={}),
            params=tuple(params),
            t0=float(t_start.detach()) if isinstance(t_start, torch.Tensor) else float(t_start),
            ts=sol.t.detach().cpu().tolist(),
            ys=sol.y.detach().reshape(sol.y.shape[0], sol.y.shape[1], -1),
            failed=[i for i, code in enumerate(sol.stats.per_element.retcode) if not code.successful],
        )
        ctx.save_for_backward(y0, t0, t1, saveat, *params)  # only to mark the gradients (`_first_order_only`)
        ctx.wants = (t0 is not None, t1 is not None, saveat is not None)
        return sol.y

    @staticmethod
    def backward(ctx, grad_ys):
        record = ctx.record
        if record.failed:
            raise RuntimeError(
                f"GaussAdjoint with batch_axis=0: the forward solve failed for elements {record.failed[:10]}, so there "
                "is no gradient to compute; check sol.stats.per_element.retcode"
            )
        stats = Stats()
        field = _Field(record.setup.prob, record.params, stats)
        grad_ys = grad_ys.detach().reshape(record.ys.shape)
        with torch.no_grad(), no_autocast(record.ys.device):
            a, total, per_element = _sweep(record, grad_ys, field, stats)
            evaluations = stats.nfe
            grad_t0, grad_t1, grad_saveat = _time_gradients(ctx, record, grad_ys, a, field)
            per_element.nfe.add_(stats.nfe - evaluations)  # each rate is one batched evaluation
        solution = ctx.solution()
        if solution is not None:
            stats.per_element = per_element
            solution.adjoint_stats = stats
        y0, *_ = ctx.saved_tensors
        grad_params = field.flat.unflatten_params(total) if record.params else []
        grads = [a.view_as(y0), grad_t0, grad_t1, grad_saveat, *grad_params]
        if torch.is_grad_enabled():
            inputs = [x for x in (*ctx.saved_tensors, grad_ys) if x is not None and x.requires_grad]
            grads = _first_order_only("GaussAdjoint", inputs, grads)
        return (None, *grads)


def _sweep(record: _Record, grad_ys: torch.Tensor, field: _Field, stats: Stats):
    """Walk the save points from the last to t0, adding dL/dy(t_k) to a and solving [z, a]
    backward across each interval; returns a(t0) (B, n), dL/dθ (flat) and the per-element counts."""
    sensealg, opts = record.setup.sensealg, record.setup.opts
    solver = sensealg.solver or record.setup.solver
    T, B, n = record.ys.shape
    x, w = gauss_legendre(sensealg.nodes or max(1, (solver.order + 1) // 2))
    total = record.ys.new_zeros(sum(p.numel() for p in record.params))
    nfe, naccept, nreject = (torch.zeros(B, dtype=torch.long, device=record.ys.device) for _ in range(3))

    def augmented(t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        z, a = state[:, :n], state[:, n:]
        fz, vjp_z, _ = field.vjp(t, z, -a, wrt_z=True)
        return torch.cat((fz, vjp_z), dim=1)

    def norm(scaled: torch.Tensor) -> torch.Tensor:  # `mixed_norm` of each element's (z, a)
        return torch.maximum(rms_rows(scaled[:, :n]), rms_rows(scaled[:, n:]))

    powers: list[torch.Tensor] = []  # θ_j^1..θ_j^P of each node, made once (on the host, as the joint sweep does)

    def on_step(t, h, s0, r, accepted):
        nonlocal total
        if not powers:
            for xi in x:
                theta = (1 + xi) / 2
                powers.append(s0.new_tensor([theta ** (p + 1) for p in range(r.shape[0])]))
        # ∫_{t0}^{t1} is minus the sum over backward steps of ∫_t^{t+h}: weights -h/2·w_j per element.
        column = accepted.unsqueeze(1)
        for xi, wj, node_powers in zip(x, w, powers):
            state = s0 + torch.einsum("p,pbm->bm", node_powers, r)
            weight = (-h / 2 * wj).to(s0.dtype).unsqueeze(1)
            # Rows that did not advance get a zero cotangent at their own (finite) state.
            z = torch.where(column, state[:, :n], s0[:, :n])
            cotangent = torch.where(column, state[:, n:] * weight, 0.0)
            _, _, vjp_theta = field.vjp(t + h * (1 + xi) / 2, z, cotangent, wrt_z=False)
            total = total + vjp_theta
            stats.nquad += 1
            nfe.add_(accepted)

    a = record.ys.new_zeros(B, n)
    dt = None
    ts = record.ts
    for k in range(T - 1, -1, -1):
        a = a + grad_ys[k]
        t_from, t_to = ts[k], (ts[k - 1] if k > 0 else record.t0)
        if t_to == t_from:
            continue
        state = torch.cat((record.ys[k], a), dim=1)
        prob = ODEProblem(augmented, state, (t_from, t_to))
        options = _backward_options(sensealg, opts, prob, solver)
        sol = integrate_per_sample(prob, solver, options, True, norm=norm, h0=dt, on_step=on_step)
        per = sol.stats.per_element
        nfe.add_(per.nfe)
        naccept.add_(per.naccept)
        nreject.add_(per.nreject)
        stats.naccept += sol.stats.naccept
        stats.nreject += sol.stats.nreject
        a, dt = sol.y[-1][:, n:], sol.dt_next
    per_element = ElementStats(
        nfe, naccept, nreject, (ReturnCode.Success,) * B, torch.full_like(record.ys[0, :, 0], record.t0)
    )
    return a, total, per_element


def _backward_options(sensealg: GaussAdjoint, opts: SolveOptions, prob: ODEProblem, solver) -> SolveOptions:
    """As `adjoint.backward_options`: the backward tolerances (the forward ones, tightest entry),
    saving only the interval's end; a fixed-step forward solve gets fixed steps of its dt."""
    t_from, t_to = (float(t) for t in prob.tspan)
    common = dict(
        saveat=[t_to], max_steps=opts.max_steps, dense=False, batch_axis=0, **stops_within(opts, t_from, t_to)
    )
    if opts.adaptive and solver.adaptive:
        rtol = _tightest(sensealg.rtol if sensealg.rtol is not None else opts.rtol)
        atol = _tightest(sensealg.atol if sensealg.atol is not None else opts.atol)
        return make_options(prob, solver, rtol=rtol, atol=atol, **common)
    if opts.dt is None:
        raise ValueError(
            f"GaussAdjoint: the backward solver {solver!r} steps with a fixed dt, but the forward solve was adaptive; "
            "give an adaptive backward solver"
        )
    return make_options(prob, solver, dt=opts.dt, adaptive=False, **common)


def _time_gradients(ctx, record: _Record, grad_ys: torch.Tensor, a0: torch.Tensor, field: _Field) -> tuple:
    """dL/dt0 = -Σ a(t0)·f(t0, y0); moving save time t_k moves only y(t_k): dL/dt_k = Σ g_k·f(t_k, y_k)."""
    wants_t0, wants_t1, wants_saveat = ctx.wants
    grad_t0 = grad_t1 = grad_saveat = None
    _, t0, t1, saveat, *_ = ctx.saved_tensors
    B = record.ys.shape[1]

    def rate(t: float, y: torch.Tensor) -> torch.Tensor:
        return field(torch.full((B,), t, dtype=torch.float64, device=y.device), y)

    if wants_saveat or wants_t1:
        per_save = torch.stack([(g * rate(t, y)).sum() for t, g, y in zip(record.ts, grad_ys, record.ys)])
        if wants_saveat:
            grad_saveat = per_save.to(saveat.dtype)
        if wants_t1:
            no_saveat = record.setup.opts.saveat is None and saveat is None
            grad_t1 = per_save[-1].to(t1.dtype) if no_saveat else torch.zeros((), dtype=t1.dtype)
    if wants_t0:
        y0 = record.setup.prob.y0.detach().reshape(B, -1)
        grad_t0 = -(a0 * rate(record.t0, y0)).sum().to(t0.dtype)
    return grad_t0, grad_t1, grad_saveat
