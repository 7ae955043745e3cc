"""`solve`, the public entry: validate, choose the engine and the sensitivity algorithm, and run
the loop (`pyode/integrate/`) through it."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import torch

from ._autocast import autocast_in_force, no_autocast, under_autocast
from .integrate import SolveOptions, StateLayout, make_options
from .integrate.events import Event
from .integrate.options import time_span
from .integrate.record import Observer
from .norms import Norm
from .problem import CDEProblem, NoisyODEProblem, ODEProblem, SDENoise, SDEProblem, Solution
from .regularizers import LocalRegularization, Regularization, local_estimates
from .sensitivity import AbstractSensitivityAlgorithm, AutoAdjoint, BacksolveAdjoint, DirectAdjoint, ReversibleAdjoint
from .sensitivity.events import solve_segments
from .sensitivity.per_sample import solve_per_sample
from .solvers.base import AbstractSolver
from .solvers.reversible import AbstractReversibleSolver
from .solvers.sde import AbstractSDESolver, sde_form
from .step_control import AbstractController


def solve(
    prob: ODEProblem | CDEProblem | SDEProblem,
    solver: AbstractSolver,
    *,
    saveat: torch.Tensor | Sequence[float] | None = None,
    dt: float | None = None,
    adaptive: bool | None = None,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    internalnorm: Norm | None = None,
    controller: AbstractController | None = None,
    tstops: torch.Tensor | Sequence[float] | None = None,
    dtmin: float | None = None,
    dtmax: float | None = None,
    max_steps: int = 100_000,
    dense: bool | None = None,
    time_dtype: torch.dtype | None = None,
    regularize: bool | Regularization | LocalRegularization = False,
    events: Event | Sequence[Event] | None = None,
    d_discontinuities: torch.Tensor | Sequence[float] | None = None,
    observers: Sequence[Observer] = (),
    progress: bool = False,
    compile: bool | dict = False,
    batch_axis: int | None = None,
    sensealg: Any = None,
    throw: bool = True,
    backend: str = "torch",
) -> Solution:
    """Integrate `prob.f` over `prob.tspan` starting at `prob.y0`.

    Args:
        prob: an `ODEProblem`, or a `CDEProblem` (solved as the ODE dz/dt = f(t, z)·dX/dt, with the
            path's knots added to `tstops` or `d_discontinuities` as `CDEProblem` describes), or an
            `SDEProblem` (solved with an SDE method from `pyode.solvers.sde`, `ReversibleHeun()`,
            or `Euler()`/`Heun()`/`Midpoint()`, which stand for Euler–Maruyama and the
            Stratonovich Heun and midpoint methods; gradients by `DirectAdjoint`,
            `BacksolveAdjoint` (the stochastic adjoint) or `ReversibleAdjoint`).
        solver: the time-stepping method, e.g. `Tsit5()`.
        saveat: times (1-D, strictly monotone in the direction of integration, inside tspan) at
            which to return the solution, reached by dense interpolation rather than by shortening
            steps. By default every step is saved.
        dt: with an adaptive solver, the first step (chosen by Hairer's heuristic when omitted);
            with `adaptive=False` or a solver without an error estimate, the fixed step.
        adaptive: step adaptively (the default when the solver has an error estimate; for an
            `SDEProblem` fixed steps of `dt` are the default).
        rtol, atol: the error test is internalnorm(err / (atol + rtol·max(|y_n|, |y_{n+1}|))) ≤ 1.
        internalnorm: a norm on states (`pyode.rms_norm` by default, `pyode.max_norm`,
            `pyode.mixed_norm`, a seminorm from `pyode.make_seminorm`, or any homogeneous callable).
        controller: the step-size controller: `PIController()` (the default), `IController()`
            (torchdiffeq's), `PIDController(pcoeff, icoeff, dcoeff)`, `ConstantStepSize()` (fixed
            steps of `dt`), or any subclass of `AbstractController`.
        tstops: times the steps must land on exactly (discontinuities of f).
        dtmin: a rejected step below this size, or below 16 ulps of the current time, ends the solve
            with `DtLessThanMin`.
        dtmax: the largest step allowed (the span by default).
        max_steps: attempted steps (accepted plus rejected) before `MaxIters`.
        dense: keep every step's interpolant so that `sol(t)` works anywhere in the span;
            the default is True when `saveat` is omitted.
        time_dtype: dtype of `sol.t` (float64 by default; float32 on devices without float64).
            Steps are computed in float64 on the host either way; f receives t in y's dtype.
        regularize: accumulate the solver-heuristic regularizers over the accepted steps into
            `sol.error_estimate` (R_E) and `sol.stiffness_estimate` (R_S), differentiable through
            `DirectAdjoint`; True for the defaults, or a `pyode.Regularization`. Or a
            `pyode.LocalRegularization`: the same terms from one step at a random time, with
            any sensealg and on either engine.
        events: a `pyode.Event` or a list of them: zero crossings of a condition, located on each
            step's dense output; the solve stops there (terminal) or applies the event's
            `affect` and continues. Gradients flow through the event time (see `Event`).
        d_discontinuities: times where f jumps (a dose, a switch): steps land on them, stages
            there see the time just before the jump, and the next step restarts with f just
            after it (torchdiffeq's `jump_t` and `perturb`; SciML's name).
        observers: `pyode.Observer` instances that receive every attempted, rejected and
            accepted step (custom logging, torchdiffeq's callbacks).
        progress: draw a tqdm progress bar over the time span with the NFE and step size
            (needs tqdm; redrawn at most every 0.1 s).
        compile: run each step compiled by `torch.compile` (fullgraph): all stages, their
            combinations, the error ratio and the dense coefficients as one graph, compiled on
            the first solve and cached per solver, f, state shape, dtype and device. True, or a
            dict of torch.compile options ({"backend": ..., "mode": ...}). Explicit Runge–Kutta
            steps only; where compilation fails the solve warns and steps eagerly. See
            docs/performance.md.
        batch_axis: 0 to give each element of the batch (dim 0 of a tensor y0 of shape (B, ...)) its
            own time, step size and accept/reject, as a solve of that element alone would take
            (per-sample step sizes). f then gets t of shape (B,), each element's own time; saveat
            may be (T,) shared or (B, T) per element; `sol.y` is (T, B, ...) and
            `sol.stats.per_element` holds each element's counts and retcode. Explicit Runge–Kutta
            solvers, PI/I controllers, DirectAdjoint, GaussAdjoint (per element) or AutoAdjoint.
            See docs/per-sample.md.
        sensealg: how gradients flow back through the solve; `DirectAdjoint()` by default
            (`ReversibleAdjoint()` for reversible solvers); `AutoAdjoint()` chooses for you, and
            `sol.sensealg` then says what it chose and why.
            See `pyode/sensitivity/README.md` for when to choose which.
        throw: raise `SolveError` on failure; if False, return the partial solution, whose
            `retcode` says what went wrong.
        backend: "torch" (the native engine) or "julia": OrdinaryDiffEq and SciMLSensitivity
            through juliacall, for a vector field given as a `pyode.julia.Chain` (see
            `pyode/backends/julia/`; it needs Julia, and refuses what it cannot do by name).

    Returns:
        A `Solution` with `t`, `y`, `stats` and `retcode`.

    Raises:
        SolveError: the solve failed and `throw` is True.
        ValueError, TypeError: bad input, named in the message.
    """
    if backend not in ("torch", "julia"):
        raise ValueError(f'backend must be "torch" or "julia"; got {backend!r}')
    user_prob = prob
    if isinstance(prob, CDEProblem):
        prob, tstops, d_discontinuities = _lower_cde(prob, tstops, d_discontinuities, batch_axis, backend)
    elif isinstance(prob, SDEProblem):
        asked = dict(events=events, regularize=regularize, compile=compile, batch_axis=batch_axis, dense=dense)
        times_with_grad = [isinstance(t, torch.Tensor) and t.requires_grad for t in (*prob.tspan, saveat)]
        if any(times_with_grad):
            name = ("tspan[0]", "tspan[1]", "saveat")[times_with_grad.index(True)]
            raise ValueError(
                f"{name} requires grad: an SDE's solution has no time derivative to differentiate with respect to "
                "its times (the path is nowhere differentiable); detach it"
            )
        solver = sde_form(solver)
        prob = _lower_sde(prob, solver, sensealg, backend, asked)
        dense = False  # the steps have no interpolant: sol.y holds the path at the save points
        if adaptive is None:  # SDEs step with a fixed dt unless asked (as torchsde's and SciML's do)
            adaptive = False
        if not adaptive and dt is None:
            raise ValueError(
                "dt: an SDEProblem steps with a fixed dt by default; pass dt=..., or adaptive=True with rtol/atol "
                "(strong order 0.5–1.5 methods: tolerances near 1e-2–1e-4, not the ODE defaults)"
            )
    elif isinstance(prob, NoisyODEProblem) or not isinstance(prob, ODEProblem):
        raise TypeError(
            f"prob must be a pyode.ODEProblem, pyode.CDEProblem or pyode.SDEProblem; got {type(prob).__name__}"
        )
    if backend == "julia":
        asked = dict(
            events=events, d_discontinuities=d_discontinuities, observers=observers, progress=progress, compile=compile
        )
        refused = sorted(k for k, v in asked.items() if v is not None and v is not False and v != ())
        if refused:
            raise ValueError(f'{", ".join(refused)}: not available with backend="julia" yet; use backend="torch"')
    local = None
    if isinstance(regularize, LocalRegularization):
        local, regularize = regularize, False
    if sensealg is None:
        sensealg = ReversibleAdjoint() if isinstance(solver, AbstractReversibleSolver) else DirectAdjoint()
    elif not isinstance(sensealg, AbstractSensitivityAlgorithm):
        raise TypeError(
            f"sensealg must be a pyode sensitivity algorithm such as pyode.DirectAdjoint(); got {sensealg!r}"
        )
    if backend == "julia" and isinstance(sensealg, AutoAdjoint):
        raise ValueError(
            'sensealg=AutoAdjoint() chooses by measuring the autograd graph of the torch engine; backend="julia" '
            "builds none. Pass DirectAdjoint(), InterpolatingAdjoint(), GaussAdjoint() or BacksolveAdjoint()"
        )
    opts = make_options(
        prob,
        solver,
        saveat=saveat,
        dt=dt,
        adaptive=adaptive,
        rtol=rtol,
        atol=atol,
        internalnorm=internalnorm,
        controller=controller,
        tstops=tstops,
        dtmin=dtmin,
        dtmax=dtmax,
        max_steps=max_steps,
        dense=dense,
        time_dtype=time_dtype,
        regularize=regularize,
        events=events,
        d_discontinuities=d_discontinuities,
        observers=observers,
        progress=progress,
        compile=compile,
        batch_axis=batch_axis,
    )

    device = StateLayout(prob.y0).device
    autocast = autocast_in_force(device) if backend == "torch" else None
    if autocast is not None:
        # Mixed precision: f runs under the caller's autocast, the solver's own arithmetic (stage
        # combinations, error norms, step control, the local regularizer's step) does not.
        prob = dataclasses.replace(prob, f=under_autocast(prob.f, *autocast))

    def run(options: SolveOptions) -> Solution:
        if options.batch_axis is not None:  # each element steps on its own: integrate/per_sample.py
            used = sensealg.choose_per_sample(prob, solver, options) if isinstance(sensealg, AutoAdjoint) else sensealg
            sol = solve_per_sample(
                used.chosen if isinstance(used, AutoAdjoint) else used, prob, solver, options, throw, backend, local
            )
            sol.sensealg = used
            return sol
        # AutoAdjoint becomes a concrete algorithm first: the routing below sees that one.
        used = sensealg.choose(prob, solver, options) if isinstance(sensealg, AutoAdjoint) else sensealg
        concrete = used.chosen if isinstance(used, AutoAdjoint) else used
        if backend == "julia":
            from .backends.julia._solve import solve_julia

            # What the user set explicitly: the Julia engine keeps SciML's defaults for the rest.
            given = dict(dtmin=dtmin, dtmax=dtmax, internalnorm=internalnorm, controller=controller, dense=dense)
            sol = solve_julia(prob, solver, options, concrete, throw=throw, given=given, regularize=regularize)
        elif options.events and not isinstance(concrete, DirectAdjoint):
            sol = solve_segments(concrete, prob, solver, options, throw)
        else:
            sol = concrete.solve(prob, solver, options, throw=throw)
        sol.sensealg = used
        return sol

    with no_autocast(device):
        sol = run(opts) if local is None else _locally_regularized(prob, opts, run, local, backend)
    sol.prob = user_prob
    if isinstance(prob, NoisyODEProblem):
        sol.bm = prob.noise.bm
    return sol


_SDE_SOLVERS = "EulerMaruyama(), EulerHeun(), Heun(), Midpoint(), ReversibleHeun(), Milstein(), SRA1() or ShARK()"


def _lower_sde(prob: SDEProblem, solver: AbstractSolver, sensealg: Any, backend: str, asked: dict) -> NoisyODEProblem:
    """An SDE as its drift ODE carrying its noise, which the SDE methods read; what they and the
    gradient methods cannot do is refused here by name."""
    from .brownian import BrownianInterval, as_brownian

    if backend == "julia":
        raise ValueError('SDEProblem: stochastic differential equations run on backend="torch" only')
    refused = sorted(k for k, v in asked.items() if v is not None and v is not False and v != ())
    if refused:
        raise ValueError(
            f"{', '.join(refused)}: not available for an SDEProblem (its steps have no dense interpolant, and "
            "per-sample and compiled steps are for ODEs)"
        )
    if not isinstance(solver, AbstractSDESolver):
        raise TypeError(f"{solver!r} is not a method for SDEs; use {_SDE_SOLVERS}")
    # With additive noise the Itô and Stratonovich integrals agree: every method converges to both.
    if prob.sde_type not in solver.sde_types and prob.noise != "additive":
        fix = (
            "EulerHeun(), Heun(), Midpoint(), ReversibleHeun() or Milstein()"
            if prob.sde_type == "stratonovich"
            else "EulerMaruyama(), Milstein() or (additive noise) SRA1() or ShARK()"
        )
        raise ValueError(
            f"{solver!r} converges to the {' or '.join(solver.sde_types)} solution, but this SDE has "
            f"sde_type={prob.sde_type!r}: use {fix}"
        )
    if prob.noise not in solver.noise_types:
        raise ValueError(
            f"{solver!r} handles {', '.join(solver.noise_types)} noise; this SDE has noise={prob.noise!r}. Use "
            "EulerMaruyama() (Itô) or EulerHeun()/Heun()/ReversibleHeun() (Stratonovich), which handle any noise"
        )
    if sensealg is not None and not isinstance(sensealg, (DirectAdjoint, BacksolveAdjoint, ReversibleAdjoint)):
        raise ValueError(
            f"sensealg={sensealg!r}: an SDEProblem is differentiated by DirectAdjoint(), BacksolveAdjoint() (the "
            "stochastic adjoint, re-reading the same Brownian path backward) or ReversibleAdjoint() with "
            "ReversibleHeun()"
        )
    if isinstance(sensealg, ReversibleAdjoint) and not isinstance(solver, AbstractReversibleSolver):
        raise TypeError(f"ReversibleAdjoint needs ReversibleHeun() for an SDE; got {solver!r}")
    if isinstance(sensealg, BacksolveAdjoint):
        from .sensitivity.sde_adjoint import backward_solver

        backward_solver(sensealg, solver)  # refuses a backward method that cannot step the adjoint SDE
    shape = prob.brownian_shape()
    y0 = prob.y0
    t0, t1 = (float(t.detach()) if isinstance(t, torch.Tensor) else float(t) for t in prob.tspan)
    if prob.bm is None:
        bm = BrownianInterval(
            min(t0, t1), max(t0, t1), shape, dtype=y0.dtype, device=y0.device, levy_area=solver.levy_area
        )
    else:
        bm = as_brownian(prob.bm)
        got = tuple(bm.shape) if getattr(bm, "shape", None) is not None else tuple(shape)  # a plain callable: unknown
        if got != tuple(shape):
            raise ValueError(
                f"bm has shape {got}, but noise={prob.noise!r} with y0 of shape {tuple(y0.shape)} needs Brownian "
                f"motion of shape {tuple(shape)}"
            )
        dtype, device = getattr(bm, "dtype", None) or y0.dtype, getattr(bm, "device", None) or y0.device
        if dtype != y0.dtype or torch.device(device) != y0.device:
            raise TypeError(f"bm is {dtype} on {device} but y0 is {y0.dtype} on {y0.device}: build bm like y0")
        lo, hi = getattr(bm, "t0", None), getattr(bm, "t1", None)
        if lo is not None and hi is not None and not (float(lo) <= min(t0, t1) and max(t0, t1) <= float(hi)):
            raise ValueError(
                f"bm covers [{float(lo):.6g}, {float(hi):.6g}], which does not contain tspan = ({t0:.6g}, {t1:.6g})"
            )
        if solver.levy_area and not getattr(bm, "levy_area", False):
            raise ValueError(
                f"{solver!r} reads the space-time Lévy area of the Brownian motion: pass bm=pyode.BrownianInterval"
                "(..., levy_area=True) or pyode.VirtualBrownianTree(..., levy_area=True), or leave bm to the default"
            )
    noise = SDENoise(prob.g, bm, prob.noise, prob.sde_type)
    return NoisyODEProblem(prob.f, y0, prob.tspan, prob.params, noise=noise)


def _lower_cde(
    prob: CDEProblem, tstops: Any, d_discontinuities: Any, batch_axis: int | None, backend: str
) -> tuple[ODEProblem, Any, Any]:
    """A CDE as the ODE it amounts to, with the path's knots joined to the steps' stops."""
    if backend == "julia":
        raise ValueError('CDEProblem: controlled differential equations run on backend="torch" only')
    stops, jumps = prob.knot_stops()
    if jumps and batch_axis is not None:
        raise ValueError(
            "batch_axis=0 with a piecewise-linear path (linear, rectilinear): its derivative jumps at every knot, "
            "where each step must restart, which the per-sample loop does not do. Use hermite_cubic_backward (C¹, "
            "also causal) or natural_cubic_spline, or solve without batch_axis"
        )

    def joined(given: Any, extra: list[float]) -> Any:
        if not extra:
            return given
        if given is None:
            return extra
        return list(given.tolist() if isinstance(given, torch.Tensor) else given) + extra

    return prob.as_ode(), joined(tstops, stops), joined(d_discontinuities, jumps)


def _locally_regularized(
    prob: ODEProblem,
    opts: SolveOptions,
    run: Callable[[SolveOptions], Solution],
    local: LocalRegularization,
    backend: str = "torch",
) -> Solution:
    """Solve with t_s added to the save times, then take the local step from y(t_s).

    The local step evaluates `prob.f` in torch on either engine: on the Julia engine `f` is a
    `pyode.julia.Chain`, the same function as the Lux model, so only y(t_s) comes from Julia.
    """
    t0, t1 = time_span(prob)
    t_s = t0 + float(torch.rand((), dtype=torch.float64)) * (t1 - t0)
    index = inserted = None
    if opts.saveat is not None:
        if opts.saveat_tensor is not None:
            raise ValueError("LocalRegularization cannot be combined with save times that require grad; detach saveat")
        inserted = t_s not in opts.saveat
        saves = sorted(set(opts.saveat) | {t_s}, reverse=t1 < t0)
        index = saves.index(t_s)
        opts = dataclasses.replace(opts, saveat=tuple(saves))
    elif backend == "julia":
        # The Julia engine has no dense output, but without saveat it saves every step: make t_s
        # a tstop, so that a step ends there and y(t_s) is saved (a real step: its column stays).
        opts = dataclasses.replace(opts, tstops=tuple(sorted(set(opts.tstops) | {t_s}, reverse=t1 < t0)))
    elif not opts.dense:
        raise ValueError(
            "LocalRegularization reads the solution at a random time: pass saveat= (or keep dense output on)"
        )
    sol = run(opts)
    layout = StateLayout(prob.y0)
    like = layout.flatten(prob.y0)
    saved = sol.t.shape[0]
    if opts.saveat is None and backend == "julia":
        hits = (sol.t == t_s).nonzero()
        y_s = layout.flatten_batch(sol.y)[int(hits[0])].detach() if len(hits) else None
    elif index is None:
        with torch.no_grad():  # y(t_s) is a constant starting point for the local step
            y_s = layout.flatten(sol(t_s)) if sol.retcode.successful else None
    elif index < saved:
        ys = layout.flatten_batch(sol.y)
        y_s = ys[index].detach()
        if inserted:
            keep = [i for i in range(saved) if i != index]
            sol.t = sol.t[keep]
            sol.y = layout.unflatten_batch(ys[keep])
    else:
        y_s = None
    sol.regularization_time = t_s
    if y_s is None:  # the solve stopped before t_s: nothing to estimate there
        zero = like.new_zeros(())
        sol.error_estimate = zero if local.error else None
        sol.stiffness_estimate = zero if local.stiffness else None
        return sol

    def f(t: float, y: torch.Tensor) -> torch.Tensor:
        sol.stats.nfe += 1
        return layout.call(prob.f, t, y)

    sol.error_estimate, sol.stiffness_estimate = local_estimates(f, t_s, y_s, t1, opts.rtol, opts.atol, local)
    return sol


__all__ = ["solve"]
