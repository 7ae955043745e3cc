"""torchdiffeq's `odeint`, with the same signature, method names and options, on pyode's engine.

Switching is a one-line change: `from pyode import odeint`. Differences worth knowing (the
migration page `docs/torchdiffeq.md` has the full table of options):
- Fixed grids (euler, midpoint, heun2, rk4) step on torchdiffeq's grid (`t`, `step_size` or
  `grid_constructor`) and interpolate output times between grid points as torchdiffeq does:
  linearly by default, cubic Hermite with `interp="cubic"`; euler, midpoint and heun2 agree with
  torchdiffeq to rounding. Adaptive methods read output times from each method's dense
  interpolant (the free interpolants of dopri5 and tsit5, DOP853's for dopri8, cubic Hermite
  otherwise); torchdiffeq fits its own 4th-order polynomial for every adaptive method.
- Step-size control is pyode's PI controller (with an integral start-up); torchdiffeq's is an I
  controller. Over `benchmarks/step_counts.py`'s problems pyode takes slightly fewer evaluations
  in total (5038 against 5086), fewer rejections, at half the geometric-mean error; the step
  sequences differ. `pyode.IController` is torchdiffeq's rule.
- "rk4" is the classical RK4 (torchdiffeq's "rk4" is the 3/8 rule); both are fourth order.
- `max_num_steps` bounds the steps between two output times in torchdiffeq; pyode bounds the
  whole solve, so it becomes `max_steps = max_num_steps · (len(t) - 1)`: every solve torchdiffeq
  finishes, pyode finishes too. Fixed-grid methods ignore it, as in torchdiffeq.
- `min_step` keeps torchdiffeq's meaning (steps never shrink below it, and a step of that size is
  accepted whatever its error), not that of `solve`'s `dtmin` (which ends the solve).
- method="scipy_solver" calls `scipy.integrate.solve_ivp` as torchdiffeq does: no gradients.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from ..integrate import AcceptedStep, Event, Observer, StateLayout
from ..problem import ODEProblem, SolveError, State
from ..sensitivity import BacksolveAdjoint
from ..solve import solve
from ._options import (
    METHODS,
    SCIPY_METHOD,
    _initial_only,
    _translate,
)
from ._scipy import _scipy_odeint


def odeint(
    func: Callable[[torch.Tensor, State], State],
    y0: State,
    t: torch.Tensor,
    *,
    rtol: float = 1e-7,
    atol: float = 1e-9,
    method: str | None = None,
    options: dict[str, Any] | None = None,
    event_fn: Any = None,
) -> State:
    """Solve dy/dt = func(t, y) from y(t[0]) = y0 and return y at every time in `t`.

    Args:
        func: called as `func(t, y)`; returns dy/dt shaped like y (a tuple for tuple states).
        y0: the initial state, a tensor of any shape or a tuple of tensors.
        t: 1-D tensor of output times, strictly increasing or strictly decreasing.
        rtol, atol: tolerances of the adaptive methods (and of scipy's).
        method: one of `pyode.compat.METHODS` ("dopri5" by default), or "scipy_solver".
        options: torchdiffeq's option keys: for adaptive methods first_step, min_step, max_step,
            max_num_steps, norm, dtype, safety, ifactor, dfactor, step_t; for fixed-grid methods
            step_size or grid_constructor (without either the grid is `t`), interp ("linear", the
            default, or "cubic"), norm, dtype, max_num_steps; for "scipy_solver" solver
            ("LSODA" by default), min_step, max_step.

    Returns:
        (len(t), *y0.shape), or a tuple of such for tuple states. Gradients flow by autograd
        through the solver (pyode's `DirectAdjoint`); "scipy_solver" gives none.
    """
    _check_t(t, "odeint")
    if method == SCIPY_METHOD:
        if event_fn is not None:
            raise ValueError("odeint: event_fn is not available with method='scipy_solver'")
        return _scipy_odeint(func, y0, t, rtol, atol, options, "odeint")
    if event_fn is not None:
        return _until_event(func, y0, t, rtol, atol, method, options, event_fn, None, None, "odeint")
    plan = _translate(func, y0, t, rtol, atol, method, options, "odeint")
    if t.numel() == 1:
        return _initial_only(y0)
    plan.kwargs["observers"] = _callbacks(func, y0)
    return plan.output(solve(ODEProblem(func, y0, (t[0], t[-1])), plan.solver, **plan.kwargs).y)


def odeint_adjoint(
    func: Callable[[torch.Tensor, State], State],
    y0: State,
    t: torch.Tensor,
    *,
    rtol: float = 1e-7,
    atol: float = 1e-9,
    method: str | None = None,
    options: dict[str, Any] | None = None,
    event_fn: Any = None,
    adjoint_rtol: float | None = None,
    adjoint_atol: float | None = None,
    adjoint_method: str | None = None,
    adjoint_options: dict[str, Any] | None = None,
    adjoint_params: Any = None,
) -> State:
    """torchdiffeq's `odeint_adjoint`: the forward solve of `odeint`, gradients by the continuous
    adjoint (pyode's `BacksolveAdjoint`), memory independent of the number of steps.

    Args:
        adjoint_rtol, adjoint_atol, adjoint_method: the backward solve's (default: the forward's).
        adjoint_options: options of the backward solve; `norm="seminorm"` selects the seminorm
            (step control ignores the parameter adjoint; pyode's seminorm also has no a_t
            channel to keep, as time gradients come from flow identities), and a callable `norm`
            receives torchdiffeq's augmented state (t, y, adj_y, *adj_params), with y and adj_y
            split into their parts for tuple states (t is always 0: pyode integrates no time
            adjoint).
        adjoint_params: the tensors to differentiate with respect to; by default
            `func.parameters()`, which needs `func` to be an `nn.Module`. Given explicitly (even
            `()`), tensors that func uses but that are not listed get no gradient, as in
            torchdiffeq; otherwise pyode refuses such closures by name.
    """
    for role, name in (("method", method), ("adjoint_method", adjoint_method)):
        if name == SCIPY_METHOD:
            raise ValueError(
                f"odeint_adjoint: {role}='scipy_solver' is not available: scipy integrates outside autograd, so "
                "pyode has no gradients through it; use a pyode method (e.g. 'dopri5'), or odeint for a "
                "gradient-free scipy solve"
            )
    explicit_params = adjoint_params is not None
    if adjoint_params is None:
        if not isinstance(func, torch.nn.Module):
            raise ValueError(
                "odeint_adjoint: func must be an nn.Module so that its parameters can be found; "
                "otherwise pass them as adjoint_params=(...)"
            )
        adjoint_params = tuple(func.parameters())
    adjoint_params = tuple(p for p in adjoint_params if p.requires_grad)
    _check_t(t, "odeint_adjoint")
    plan = _translate(func, y0, t, rtol, atol, method, options, "odeint_adjoint")
    adjoint_options = dict(adjoint_options or {})
    norm = adjoint_options.pop("norm", None)
    seminorm = norm == "seminorm"
    if isinstance(norm, str) and not seminorm:
        raise ValueError(f"odeint_adjoint: adjoint_options norm must be 'seminorm' or a callable; got {norm!r}")
    if norm is not None and not seminorm and not callable(norm):
        raise TypeError(f"odeint_adjoint: adjoint_options norm must be 'seminorm' or a callable; got {norm!r}")
    unknown = sorted(set(adjoint_options))
    if unknown:
        raise ValueError(f"odeint_adjoint: adjoint_options {unknown} are not supported; supported: ['norm']")
    backward_solver = None
    if adjoint_method is not None:
        if adjoint_method not in METHODS:
            raise ValueError(f"odeint_adjoint: unknown adjoint_method {adjoint_method!r}; pyode has {sorted(METHODS)}")
        backward_solver = METHODS[adjoint_method]
    sensealg = BacksolveAdjoint(
        seminorm=seminorm,
        internalnorm=_torchdiffeq_adjoint_norm(norm, y0, adjoint_params) if callable(norm) else None,
        solver=backward_solver,
        rtol=adjoint_rtol,
        atol=adjoint_atol,
    )
    if explicit_params:
        # torchdiffeq differentiates only the listed tensors and ignores the rest.
        sensealg = dataclasses.replace(sensealg, _check_closure=False)
    if event_fn is not None:
        params = tuple(adjoint_params)
        return _until_event(func, y0, t, rtol, atol, method, options, event_fn, sensealg, params, "odeint_adjoint")
    if t.numel() == 1:
        return _initial_only(y0)
    plan.kwargs["observers"] = _callbacks(func, y0)
    prob = ODEProblem(func, y0, (t[0], t[-1]), params=tuple(adjoint_params))
    return plan.output(solve(prob, plan.solver, sensealg=sensealg, **plan.kwargs).y)


def odeint_event(
    func: Callable[[torch.Tensor, State], State],
    y0: State,
    t0: torch.Tensor,
    *,
    event_fn: Callable[[torch.Tensor, State], torch.Tensor],
    reverse_time: bool = False,
    odeint_interface: Callable = odeint,
    **kwargs: Any,
) -> tuple[torch.Tensor, State]:
    """torchdiffeq's `odeint_event`: solve from t0 until `event_fn(t, y)` crosses zero.

    Returns `(event_t, solution)` with `solution` the states at t0 and at the event, stacked
    (a tuple of such for tuple states). Gradients reach the event time and the state there
    through the implicit function theorem (pyode's events), with `odeint_interface=pyode.odeint`
    (autograd through the solver) or `pyode.odeint_adjoint` (the continuous adjoint); t0 may
    require grad. `reverse_time=True` integrates toward earlier times.
    """
    if not isinstance(t0, torch.Tensor):
        t0 = torch.as_tensor(t0, dtype=torch.float64)
    t0 = t0.reshape(-1)
    t = torch.cat([t0, t0.detach() + (-1.0 if reverse_time else 1.0)])
    return odeint_interface(func, y0, t, event_fn=event_fn, **kwargs)


def _until_event(func, y0, t, rtol, atol, method, options, event_fn, sensealg, params, name):
    """torchdiffeq's odeint with an event_fn: integrate from t[0] (in the direction of t[1]) until
    event_fn changes sign; return (event_t, states at t[0] and at the event)."""
    if not callable(event_fn):
        raise TypeError(f"{name}: event_fn must be callable as event_fn(t, y); got {type(event_fn).__name__}")
    if t.numel() < 2:
        raise ValueError(f"{name}: with event_fn, t must hold t0 and a second time giving the direction")
    t0 = t[0]
    direction = 1.0 if float(t[1].detach()) > float(t0.detach()) else -1.0
    # torchdiffeq integrates without end; pyode needs one: far enough never to be reached.
    far = float(t0.detach()) + direction * 1e100
    plan = _translate(func, y0, t.detach()[:2], rtol, atol, method, options, name)
    kwargs = dict(plan.kwargs)
    kwargs.pop("saveat", None)
    kwargs["dense"] = False
    kwargs["dtmin"] = 16 * 2.2e-16 * max(1.0, abs(float(t0.detach())))
    if not kwargs.get("adaptive", True):
        kwargs.pop("tstops", None)
        if options is None or options.get("step_size") is None:
            raise ValueError(
                f"{name}: event_fn with a fixed-grid method needs options=dict(step_size=...), as in torchdiffeq"
            )
    kwargs["max_steps"] = max(kwargs.get("max_steps", 0), 20_000 if not kwargs.get("adaptive", True) else 2**31 - 1)

    def condition(tt, y):
        out = event_fn(tt, y)
        return out.reshape(()) if isinstance(out, torch.Tensor) and out.numel() == 1 else out

    event = Event(condition, terminal=True, direction=0)
    prob = ODEProblem(func, y0, (t0, far), params=params)
    extra = {} if sensealg is None else {"sensealg": sensealg}
    sol = solve(prob, plan.solver, events=event, observers=_callbacks(func, y0), **extra, **kwargs)
    if sol.event_time is None:
        raise SolveError(sol.retcode, float(sol.t[-1]), sol)
    states = sol.y
    if isinstance(states, tuple):
        solution = tuple(torch.stack((p[0], p[-1])) for p in states)
    else:
        solution = torch.stack((states[0], states[-1]))
    return sol.event_time.to(t.dtype), solution


class _Callbacks(Observer):
    """torchdiffeq's callbacks on func: callback_step before each attempted step,
    callback_accept_step / callback_reject_step after it, each as (t0, y0, dt)."""

    def __init__(self, func: Any, y0: State):
        self.layout = StateLayout(y0)
        self.step = getattr(func, "callback_step", None)
        self.accept = getattr(func, "callback_accept_step", None)
        self.reject = getattr(func, "callback_reject_step", None)
        self.like = self.layout.flatten(y0)

    def _args(self, t: float, y: torch.Tensor, h: float) -> tuple:
        like = self.like
        return (
            torch.scalar_tensor(t, dtype=like.dtype, device=like.device),
            self.layout.unflatten(y),
            torch.scalar_tensor(abs(h), dtype=like.dtype, device=like.device),
        )

    def attempt(self, t: float, y: torch.Tensor, h: float) -> None:
        if self.step is not None:
            self.step(*self._args(t, y, h))

    def accepted(self, step: AcceptedStep) -> None:
        if self.accept is not None:
            self.accept(*self._args(step.t, step.y0, step.h))
        return None

    def rejected(self, t: float, y: torch.Tensor, h: float, ratio: float) -> None:
        if self.reject is not None:
            self.reject(*self._args(t, y, h))


def _callbacks(func: Any, y0: State) -> list[Observer]:
    names = ("callback_step", "callback_accept_step", "callback_reject_step")
    return [_Callbacks(func, y0)] if any(callable(getattr(func, n, None)) for n in names) else []


def _torchdiffeq_adjoint_norm(norm: Callable, y0: State, params: tuple[torch.Tensor, ...]) -> Callable:
    """A user's adjoint norm, written for torchdiffeq's augmented state (t, y, adj_y, *adj_params)
    (with y and adj_y split into their parts for tuple states), applied to BacksolveAdjoint's
    (z, a, a_θ). pyode integrates no time adjoint (time gradients come from flow identities),
    so the t entry is 0."""
    layout = StateLayout(y0)
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]

    def parts(flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        state = layout.unflatten(flat)
        return tuple(state) if layout.is_tuple else (state,)

    def adjoint_norm(state: tuple) -> torch.Tensor:
        z, a, a_theta = state
        adj_params = [g.view(shape) for g, shape in zip(a_theta.split(sizes), shapes)]
        return norm((z.new_zeros(()), *parts(z), *parts(a), *adj_params))

    return adjoint_norm


def _check_t(t: Any, name: str) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.numel() < 1:
        raise ValueError(f"{name}: t must be a 1-D tensor of output times")
    if t.numel() > 1:
        steps = (t[1:] - t[:-1]).detach()
        if not (bool((steps > 0).all()) or bool((steps < 0).all())):
            raise ValueError(f"{name}: t must be strictly increasing or strictly decreasing; got {t.tolist()}")
