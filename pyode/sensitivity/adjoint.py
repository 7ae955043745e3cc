"""What every adjoint method shares: one `torch.autograd.Function` around the forward loop and
its backward sweep, the vector-Jacobian products of f, and the bookkeeping of jumps and time
gradients.

An adjoint method subclasses `AbstractAdjoint` and implements `backward_sweep`: given the
forward record and dL/dy at each save point, return dL/dy0 and dL/dθ, integrating the adjoint
system with the same loop (`pyode.integrate.integrate`) as the forward solve.
"""

from __future__ import annotations

import abc
import dataclasses
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import torch

from .._autocast import no_autocast
from ..integrate import SolveOptions, StateLayout, integrate, make_options
from ..interpolation import DenseOutput
from ..norms import Norm, make_seminorm, mixed_norm
from ..problem import NoisyODEProblem, ODEProblem, Solution, SolveError, Stats
from ..solvers.base import AbstractSolver
from ..solvers.implicit import AbstractImplicitSolver
from .base import AbstractSensitivityAlgorithm
from .vector_field import VectorField, _check_independent


class ForwardRecord(NamedTuple):
    """What the forward solve leaves for the backward pass."""

    prob: ODEProblem
    solver: AbstractSolver
    opts: SolveOptions
    layout: StateLayout
    params: tuple[torch.Tensor, ...]  # the parameters gradients are taken for (requires_grad)
    t0: float
    ts: tuple[float, ...]  # save times reached
    ys: torch.Tensor  # (T, n) states at the save times, detached
    nfe: int  # the forward solve's evaluations of f
    dense: DenseOutput | None  # the forward solve's dense output, when it kept one
    data: Any  # what the algorithm's forward hook collected (see `AbstractAdjoint.forward_hook`)


class AdjointGradients(NamedTuple):
    """What a backward sweep returns."""

    y0: torch.Tensor  # dL/dy0, flat (n,)
    params: torch.Tensor  # dL/dθ, flat (P,)
    a_t0: torch.Tensor  # the adjoint a(t0) after every jump, for dL/dt0 = -a(t0)·f(t0, y0)


def _tightest(tolerance: Any) -> Any:
    """A per-element tolerance as one number for the adjoint state: its smallest positive entry
    (0 where all are 0, when the other tolerance carries the test)."""
    if not isinstance(tolerance, torch.Tensor):
        return tolerance
    positive = tolerance[tolerance > 0]
    return float(positive.min()) if positive.numel() else 0.0


def backward_options(
    sensealg: AbstractAdjoint, record: ForwardRecord, t_from: float, t_to: float, dt: float | None, norm: Norm
) -> SolveOptions:
    """Options for one backward solve between two save points: the algorithm's solver and
    tolerances (the forward ones by default), saving only the end. A fixed-step forward solve
    gets a fixed-step backward solve with the same dt."""
    opts = record.opts
    solver = sensealg.solver or record.solver
    prob = ODEProblem(lambda t, y: y, torch.zeros(1), (t_from, t_to))
    stops = stops_within(opts, t_from, t_to)
    common = dict(saveat=[t_to], internalnorm=norm, max_steps=opts.max_steps, dense=False, compile=opts.compile)
    if opts.adaptive and solver.adaptive:
        # Per-element tolerances are the forward state's; the adjoint state takes the tightest.
        rtol = _tightest(sensealg.rtol if sensealg.rtol is not None else opts.rtol)
        atol = _tightest(sensealg.atol if sensealg.atol is not None else opts.atol)
        # The forward solve's controller too (its PI/PID coefficients, torchdiffeq's I rule).
        controller = opts.controller
        return make_options(
            prob, solver, dt=dt if dt else None, rtol=rtol, atol=atol, controller=controller, **stops, **common
        )
    if opts.dt is None:
        raise ValueError(
            f"{type(sensealg).__name__}: the backward solver {solver!r} steps with a fixed dt, but the forward solve was adaptive; give an adaptive backward solver"
        )
    # Fixed steps run on the grid of dt from the interval's end, as torchdiffeq's do, landing only
    # on the discontinuities (where f must be read on the right side).
    jumps = stops["d_discontinuities"]
    return make_options(prob, solver, dt=opts.dt, adaptive=False, d_discontinuities=jumps, **common)


def stops_within(opts: SolveOptions, t_from: float, t_to: float) -> dict:
    """The forward solve's tstops strictly inside (t_from, t_to) and its discontinuities in
    [t_from, t_to], for a solve over part of the span in either direction: a backward solve
    steps on them too (a CDE's knots, a dose), or its error control meets the kinks the forward
    solve stepped to; one that starts or ends on a discontinuity reads f on the side facing
    into the interval."""
    lo, hi = min(t_from, t_to), max(t_from, t_to)
    jumps = [s for s in opts.discontinuities if lo <= s <= hi]  # on an end: restart after it, stop before it
    stops = [s for s in opts.tstops if lo < s < hi and s not in opts.discontinuities]
    return {"tstops": stops or None, "d_discontinuities": jumps or None}


def require_dense(algorithm: AbstractAdjoint, solver: AbstractSolver, role: str) -> None:
    """Quadrature nodes and interpolated states are read from dense output."""
    from ..solvers.reversible import AbstractReversibleSolver

    if isinstance(solver, AbstractReversibleSolver):
        fix = (
            f"pass {type(algorithm).__name__}(solver=Tsit5()) for the backward solve"
            if role == "backward"
            else "solve forward with a Runge–Kutta solver such as Tsit5()"
        )
        raise TypeError(
            f"{type(algorithm).__name__} reads dense output of its {role} solve, which {solver!r} does not have; "
            f"{fix}, or use ReversibleAdjoint"
        )


def sweep(record: ForwardRecord, grad_ys: torch.Tensor, solve_interval: Callable) -> torch.Tensor:
    """Walk the save points from the last to t0: add dL/dy(t_k) to the adjoint a at each, then
    carry a across the interval before it with `solve_interval(k, t_from, t_to, a) -> a`.
    Returns a(t0)."""
    ts = record.ts
    a = record.ys.new_zeros(record.layout.numel)
    for k in range(len(ts) - 1, -1, -1):
        a = a + grad_ys[k]
        t_to = ts[k - 1] if k > 0 else record.t0
        if t_to != ts[k]:
            a = solve_interval(k, ts[k], t_to, a)
    return a


def state_and_adjoint(vf: VectorField) -> Callable:
    """The vector field of [z, a] backward: dz/dt = f, da/dt = -a·∂f/∂z (no parameter VJP)."""

    def augmented(t: float, state: tuple) -> tuple:
        z, a = state
        fz, vjp_z, _ = vf.vjp(t, z, -a, wrt_params=False)
        return fz, vjp_z

    return vf.counted(augmented)


def adjoint_only(vf: VectorField, state_at: Callable) -> Callable:
    """The vector field of a alone backward, da/dt = -a·∂f/∂z(t, z(t)), with z(t) read from the
    forward solution (`state_at`) rather than integrated backward with it."""

    def field(t: float, state: tuple) -> tuple:
        (a,) = state
        _, vjp_z, _ = vf.vjp(t, state_at(t), -a, wrt_params=False)
        return (vjp_z,)

    return vf.counted(field)


def adjoint_norm(sensealg: AbstractAdjoint, n_groups: int, keep: int) -> Norm:
    """The norm of the backward solve: the user's, else the seminorm over the first `keep`
    channel groups when `seminorm=True`, else the full mixed norm over all groups."""
    if sensealg.internalnorm is not None:
        return sensealg.internalnorm
    if getattr(sensealg, "seminorm", False) and keep < n_groups:
        return make_seminorm(keep=keep)
    return mixed_norm


def solve_backward(
    sensealg: AbstractAdjoint,
    record: ForwardRecord,
    f: Callable,
    state: tuple,
    t_from: float,
    t_to: float,
    dt: float | None,
    norm: Norm,
    stats: Stats,
    on_step=None,
    integral_parts: int = 0,
    noise: Any = None,
) -> tuple[tuple, float | None]:
    """Integrate an adjoint system from t_from to t_to; returns the state there and the
    controller's next step (to start the next interval with). `integral_parts` trailing parts
    of the state are plain integrals (a_θ), which an implicit solver leaves out of its Jacobian.
    With `noise` (the stochastic adjoint's diffusion) the system is an SDE on the forward path."""
    opts = backward_options(sensealg, record, t_from, t_to, dt, norm)
    if noise is not None:
        prob = NoisyODEProblem(f, state, (t_from, t_to), integral_parts=integral_parts, noise=noise)
    else:
        prob = ODEProblem(f, state, (t_from, t_to), integral_parts=integral_parts)
    solver = sensealg.solver or record.solver
    try:
        sol = integrate(prob, solver, opts, throw=True, on_step=on_step)
    except SolveError as err:
        if isinstance(record.solver, AbstractImplicitSolver) and len(state) - integral_parts > 1:
            err.add_note(
                f"{type(sensealg).__name__} integrates the state itself backward in time, which is unstable for a "
                "stiff problem (its decaying modes grow backward): use InterpolatingAdjoint(), "
                "GaussAdjoint(checkpointing=True), QuadratureAdjoint(checkpointing=True) or DirectAdjoint(), which "
                "read the forward solution instead"
            )
        raise
    stats.naccept += sol.stats.naccept
    stats.nreject += sol.stats.nreject
    stats.njac += sol.stats.njac
    stats.nlu += sol.stats.nlu
    stats.nnewton += sol.stats.nnewton
    end = tuple(y[-1] for y in sol.y)
    return end, sol.dt_next


def backward_interval(
    sensealg: AbstractAdjoint,
    record: ForwardRecord,
    vf: VectorField,
    augmented: Callable,
    quad: Any,
    k: int,
    t_from: float,
    t_to: float,
    a: torch.Tensor,
    dt: float | None,
    norm: Norm,
    stats: Stats,
    on_step: Callable,
) -> tuple[torch.Tensor, float | None]:
    """One save interval of a quadrature adjoint's backward solve: [z, a] backward from the
    save point, or with `sensealg.checkpointing` a alone, z read from the forward problem
    re-solved over the interval (and handed to the quadrature `quad`)."""
    if not sensealg.checkpointing:
        state = (record.ys[k], a)
        (_, a), dt = solve_backward(sensealg, record, augmented, state, t_from, t_to, dt, norm, stats, on_step=on_step)
        return a, dt
    start = record.ys[k - 1] if k > 0 else record.layout.flatten(record.prob.y0).detach()
    state_at = recompute(record, start, t_to, t_from, stats).at
    quad.state_at = state_at
    (a,), dt = solve_backward(
        sensealg, record, adjoint_only(vf, state_at), (a,), t_from, t_to, dt, norm, stats, on_step=on_step
    )
    return a, dt


def recompute(record: ForwardRecord, start: torch.Tensor, t_from: float, t_to: float, stats: Stats):
    """Re-solve the forward problem over one interval from a checkpoint, keeping dense output."""
    opts = record.opts
    layout = record.layout
    prob = ODEProblem(record.prob.f, layout.unflatten(start), (t_from, t_to))
    fixed = not opts.adaptive
    interval_opts = make_options(
        prob,
        record.solver,
        saveat=[t_to],
        dt=opts.dt if fixed else None,
        adaptive=not fixed,
        rtol=opts.rtol,
        atol=opts.atol,
        internalnorm=opts.internalnorm,
        controller=opts.controller,
        max_steps=opts.max_steps,
        dense=True,
        compile=opts.compile,
        **stops_within(opts, t_from, t_to),
    )
    with torch.no_grad():
        sol = integrate(prob, record.solver, interval_opts, throw=True)
    stats.nfe += sol.stats.nfe
    return sol.dense


@dataclass(frozen=True, repr=False)
class AbstractAdjointFunction(AbstractSensitivityAlgorithm):
    """An algorithm whose gradient comes from its own backward pass: the forward solve runs under
    `no_grad` inside an autograd Function, and `backward_sweep` computes dL/dy0 and dL/dθ."""

    # Refuse f closing over tensors outside `params`; torchdiffeq's `adjoint_params=` turns it off.
    _check_closure: bool = dataclasses.field(default=True, repr=False, kw_only=True)

    def backward_solver(self, forward: AbstractSolver) -> AbstractSolver:
        """The solver of the backward pass (the forward one unless the algorithm takes another)."""
        return forward

    @abc.abstractmethod
    def backward_sweep(
        self, record: ForwardRecord, grad_ys: torch.Tensor, vf: VectorField, stats: Stats
    ) -> AdjointGradients:
        """dL/dy0 and dL/dθ from dL/dy(t_k) at each save point (grad_ys, (T, n))."""

    def forward_options(self, opts: SolveOptions) -> SolveOptions:
        """The forward solve's options (an algorithm may keep dense output, say)."""
        return opts

    @property
    def integrates_state_backward(self) -> bool:
        """Whether the backward solve integrates z itself (backsolve-style) rather than reading it
        from the forward solution."""
        return False

    def check_solvers(self, forward: AbstractSolver, backward: AbstractSolver) -> None:
        """Fail clearly for solvers the algorithm cannot use (all are fine by default)."""

    def forward_hook(self) -> tuple[Callable | None, Any]:
        """A per-step hook for the forward solve and the object it fills (kept in the record)."""
        return None, None

    def solve(self, prob: ODEProblem, solver: AbstractSolver, opts: SolveOptions, throw: bool) -> Solution:
        if opts.regularize is not None:
            raise ValueError(
                f"regularize needs sensealg=DirectAdjoint(): the regularizers are differentiated through the "
                f"solver's own computation, which {type(self).__name__} does not record. "
                "pyode.LocalRegularization() works with every sensealg"
            )
        self.check_solvers(solver, self.backward_solver(solver))
        if isinstance(solver, AbstractImplicitSolver) and self.integrates_state_backward:
            # An implicit solver says the problem is stiff, where z integrated backward grows
            # (fails fast on Robertson; on a mildly stiff problem it crawls instead).
            warnings.warn(
                f"{type(self).__name__} integrates the state backward in time, which is unstable for a stiff "
                f"problem; with the implicit solver {solver!r} prefer InterpolatingAdjoint(), "
                "GaussAdjoint(checkpointing=True) or DirectAdjoint()",
                RuntimeWarning,
                stacklevel=4,
            )
        layout = StateLayout(prob.y0)
        y0 = layout.flatten(prob.y0)
        params = tuple(p for p in prob.params if p.requires_grad)
        t0, t1 = prob.tspan
        times = [t if isinstance(t, torch.Tensor) and t.requires_grad else None for t in (t0, t1)]
        saveat = opts.saveat_tensor
        check = Stats()
        if torch.is_grad_enabled():
            _check_independent(params)
        if torch.is_grad_enabled() and self._check_closure:
            VectorField(prob, layout, params, check).check_closure(
                float(t0.detach()) if isinstance(t0, torch.Tensor) else float(t0), y0
            )
        setup = _Setup(self, {}, prob, solver, opts, throw, layout)
        ys = _AdjointFunction.apply(setup, y0, times[0], times[1], saveat, *params)
        sol = setup.holder["solution"]
        sol.y = layout.unflatten_batch(ys)
        if torch.is_grad_enabled():
            sol.stats.nfe += check.nfe
            if ys.requires_grad and sol.dense is not None:
                sol.dense_without_gradient = (
                    f"{type(self).__name__} solves forward without recording, so its dense output is a constant"
                )
        return sol


@dataclass(frozen=True, repr=False)
class AbstractAdjoint(AbstractAdjointFunction):
    """A continuous adjoint: forward under `no_grad`, backward by solving the adjoint system.

    Args (shared by every subclass):
        solver: the backward solve's method (default: the forward one).
        rtol, atol: the backward solve's tolerances (default: the forward ones).
        internalnorm: the backward solve's norm, overriding the method's choice.
    """

    solver: AbstractSolver | None = None
    rtol: float | None = None
    atol: float | None = None
    internalnorm: Norm | None = None

    def backward_solver(self, forward: AbstractSolver) -> AbstractSolver:
        if self.solver is not None and not isinstance(self.solver, AbstractSolver):
            raise TypeError(f"{type(self).__name__}: solver must be a pyode solver; got {self.solver!r}")
        return self.solver or forward


class _Setup(NamedTuple):
    """Everything `_AdjointFunction` takes besides the tensors it differentiates, as one input
    (so that backward returns a single None for it)."""

    sensealg: AbstractAdjoint
    holder: dict  # receives the forward Solution
    prob: ODEProblem
    solver: AbstractSolver
    opts: SolveOptions
    throw: bool
    layout: StateLayout


class _AdjointFunction(torch.autograd.Function):
    """The forward solve under `no_grad`; backward runs the algorithm's backward sweep.

    The context keeps the forward record but never the `Solution`: the solution holds this
    Function's own output, and a cycle through the autograd node is one Python's collector
    cannot see, so every solve would leak. The solution is reached by weak reference to
    report `adjoint_stats`.
    """

    @staticmethod
    def forward(ctx, setup: _Setup, y0, t0, t1, saveat, *params):
        sensealg, holder, prob, solver, opts, throw, layout = setup
        detached = dataclasses.replace(prob, y0=layout.unflatten(y0.detach()))
        hook, data = sensealg.forward_hook()
        with torch.no_grad():
            sol = integrate(detached, solver, sensealg.forward_options(opts), throw=throw, on_step=hook)
        ys = layout.flatten_batch(sol.y)
        holder["solution"] = sol
        ctx.sensealg = sensealg
        ctx.solution = weakref.ref(sol)
        ctx.record = ForwardRecord(
            prob=prob,
            solver=solver,
            opts=opts,
            layout=layout,
            params=tuple(params),
            t0=float(prob.tspan[0].detach()) if isinstance(prob.tspan[0], torch.Tensor) else float(prob.tspan[0]),
            ts=tuple(sol.t.detach().cpu().tolist()),
            ys=ys,
            nfe=sol.stats.nfe,
            dense=sol.dense,
            data=data,
        )
        # Kept only to mark the gradients under create_graph=True (see `_first_order_only`).
        ctx.save_for_backward(y0, t0, t1, saveat, *params)
        ctx.wants = (t0 is not None, t1 is not None, saveat is not None)
        ctx.saveat_dtype = saveat.dtype if saveat is not None else None
        ctx.saveat_device = saveat.device if saveat is not None else None
        ctx.time_dtypes = (t0.dtype if t0 is not None else None, t1.dtype if t1 is not None else None)
        return ys

    @staticmethod
    def backward(ctx, grad_ys):
        sensealg, record = ctx.sensealg, ctx.record
        stats = Stats()
        vf = VectorField(record.prob, record.layout, record.params, stats)
        # The sweep is the solver's own arithmetic: never under autocast, whatever the caller's
        # context (f, wrapped by `solve`, still runs under the autocast of the forward pass).
        with torch.no_grad(), no_autocast(record.layout.device):
            grads = sensealg.backward_sweep(record, grad_ys.detach(), vf, stats)
        solution = ctx.solution()
        if solution is not None:
            solution.adjoint_stats = stats

        wants_t0, wants_t1, wants_saveat = ctx.wants
        grad_t0 = grad_t1 = grad_saveat = None
        if wants_t0 or wants_t1 or wants_saveat:
            ts = record.ts
            if wants_saveat or wants_t1:
                # Moving save time t_k moves only y(t_k): dL/dt_k = g_k · f(t_k, y_k).
                rates = torch.stack([vf(t, y) for t, y in zip(ts, record.ys)]) if ts else record.ys
                per_save = (grad_ys.detach() * rates).sum(dim=1)
                if wants_saveat:
                    grad_saveat = torch.zeros(len(record.opts.saveat), dtype=ctx.saveat_dtype, device=ctx.saveat_device)
                    grad_saveat[: len(ts)] = per_save.to(dtype=ctx.saveat_dtype, device=ctx.saveat_device)
                if wants_t1 and record.opts.saveat is None:
                    # Every step saved: the last output is y(t1) itself.
                    grad_t1 = per_save[-1].to(ctx.time_dtypes[1])
                elif wants_t1:
                    grad_t1 = torch.zeros((), dtype=ctx.time_dtypes[1])
            if wants_t0:
                y0 = record.layout.flatten(record.prob.y0).detach()
                grad_t0 = -(grads.a_t0 * vf(record.t0, y0)).sum().to(ctx.time_dtypes[0])

        grad_params = vf.unflatten_params(grads.params) if record.params else []
        grads_out = [grads.y0, grad_t0, grad_t1, grad_saveat, *grad_params]
        if torch.is_grad_enabled():
            # backward(create_graph=True): a gradient penalty or a Hessian would differentiate these
            # gradients again, which the adjoint does not record. Make that an error, not a zero.
            # The incoming gradient too: a second derivative may reach the loss's own inputs through it.
            saved = [*ctx.saved_tensors, grad_ys]
            inputs = [x for x in saved if x is not None and x.requires_grad]
            grads_out = _first_order_only(type(sensealg).__name__, inputs, grads_out)
        return (None, *grads_out)  # nothing for the setup; y0, t0, t1, saveat, params in order


def _first_order_only(
    name: str, inputs: list[torch.Tensor], grads: list[torch.Tensor | None]
) -> list[torch.Tensor | None]:
    """The gradients, marked so that differentiating them raises an error naming the fix.

    The mark hangs them off the solve's own inputs: a second derivative with respect to any of
    them then passes through it (even `autograd.grad(..., allow_unused=True)`, which skips nodes
    off every path to its inputs and would otherwise return a silent zero).
    """
    present = [g for g in grads if g is not None]
    marked = iter(_FirstOrderOnly.apply(name, len(inputs), *inputs, *present))
    return [next(marked) if g is not None else None for g in grads]


class _FirstOrderOnly(torch.autograd.Function):
    """Returns its last inputs unchanged; its backward raises. What an adjoint's gradients
    become under `create_graph=True`, since the adjoint computed them without recording how."""

    @staticmethod
    def forward(ctx, name, n_inputs, *tensors):
        ctx.name = name
        return tuple(g.clone() for g in tensors[n_inputs:])

    @staticmethod
    def backward(ctx, *_):
        raise RuntimeError(
            f"{ctx.name} computes first derivatives only: its gradient was not recorded, so it cannot be "
            "differentiated again (gradient penalties, Hessians, double backward). Use "
            "sensealg=DirectAdjoint(), which differentiates the solver's own arithmetic to any order"
        )
