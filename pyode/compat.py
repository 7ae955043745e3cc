"""torchdiffeq's `odeint`, with the same signature, method names and options, on pyode's engine.

Switching is a one-line change: `from pyode import odeint`. Differences worth knowing:
- Output between steps comes from each method's dense interpolant (the free interpolants of
  dopri5 and tsit5, cubic Hermite otherwise); torchdiffeq uses the same for dopri5 and linear
  interpolation on fixed grids by default.
- Step-size control is a PI controller (torchdiffeq's is an I controller, `pyode.IController`),
  so step counts differ slightly at the same tolerances.
- "rk4" is the classical RK4 (torchdiffeq's "rk4" is the 3/8 rule); both are fourth order.
- `max_num_steps` bounds the steps between two output times in torchdiffeq; pyode bounds the
  whole solve, so it becomes `max_steps = max_num_steps · (len(t) - 1)`: every solve torchdiffeq
  finishes, pyode finishes too. Fixed-grid methods ignore it, as in torchdiffeq.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from .integrate import StateLayout
from .norms import mixed_norm
from .problem import ODEProblem, State
from .sensitivity import BacksolveAdjoint
from .solve import solve
from .solvers import BS3, DP5, DP8, RK4, Euler, Heun, Midpoint, Tsit5
from .solvers.base import AbstractSolver
from .step_control import PIController

# torchdiffeq's method names, and which pyode solver each maps to.
METHODS: dict[str, AbstractSolver] = {
    "dopri8": DP8(),
    "dopri5": DP5(),
    "tsit5": Tsit5(),
    "bosh3": BS3(),
    "adaptive_heun": Heun(),
    "euler": Euler(),
    "midpoint": Midpoint(),
    "heun2": Heun(),
    "rk4": RK4(),
}
FIXED_GRID = {"euler", "midpoint", "heun2", "rk4"}

_ADAPTIVE_OPTIONS = {"first_step", "max_num_steps", "norm", "dtype", "safety", "ifactor", "dfactor", "step_t"}
_FIXED_OPTIONS = {"step_size", "norm", "dtype", "interp", "max_num_steps"}


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
        rtol, atol: tolerances of the adaptive methods.
        method: one of `pyode.compat.METHODS` ("dopri5" by default).
        options: torchdiffeq's option keys: for adaptive methods first_step, max_num_steps, norm,
            dtype, safety, ifactor, dfactor, step_t; for fixed-grid methods step_size (without it
            the grid is `t`), norm, dtype, interp ("cubic" only), max_num_steps.

    Returns:
        (len(t), *y0.shape), or a tuple of such for tuple states. Gradients flow by autograd
        through the solver (pyode's `DirectAdjoint`).
    """
    if event_fn is not None:
        raise ValueError("odeint: event_fn is not supported by pyode yet")
    _check_t(t, "odeint")
    solver, kwargs = _translate(y0, t, rtol, atol, method, options, "odeint")
    if t.numel() == 1:
        return _initial_only(y0)
    return solve(ODEProblem(func, y0, (t[0], t[-1])), solver, **kwargs).y


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
            is used as is.
        adjoint_params: the tensors to differentiate with respect to; by default
            `func.parameters()`, which needs `func` to be an `nn.Module`. Given explicitly (even
            `()`), tensors that func uses but that are not listed get no gradient, as in
            torchdiffeq; otherwise pyode refuses such closures by name.
    """
    if event_fn is not None:
        raise ValueError("odeint_adjoint: event_fn is not supported by pyode yet")
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
    solver, kwargs = _translate(y0, t, rtol, atol, method, options, "odeint_adjoint")
    adjoint_options = dict(adjoint_options or {})
    norm = adjoint_options.pop("norm", None)
    seminorm = norm == "seminorm"
    if isinstance(norm, str) and not seminorm:
        raise ValueError(f"odeint_adjoint: adjoint_options norm must be 'seminorm' or a callable; got {norm!r}")
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
    kwargs["sensealg"] = sensealg
    if t.numel() == 1:
        return _initial_only(y0)
    return solve(ODEProblem(func, y0, (t[0], t[-1]), params=tuple(adjoint_params)), solver, **kwargs).y


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


def _initial_only(y0: State) -> State:
    """A single output time is the initial state; nothing to integrate."""
    return tuple(y.unsqueeze(0) for y in y0) if isinstance(y0, tuple) else y0.unsqueeze(0)


def _translate(y0, t, rtol, atol, method, options, name) -> tuple[AbstractSolver, dict[str, Any]]:
    """torchdiffeq's method name and options as a pyode solver and `solve` keywords."""
    method_name = "dopri5" if method is None else method
    if method_name not in METHODS:
        raise ValueError(f"{name}: unknown method {method!r}; pyode has {sorted(METHODS)}")
    solver = METHODS[method_name]
    fixed = method_name in FIXED_GRID
    options = dict(options or {})
    allowed = _FIXED_OPTIONS if fixed else _ADAPTIVE_OPTIONS
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(
            f"{name}: option(s) {unknown} are not supported for method {method_name!r}; supported: {sorted(allowed)}"
        )

    kwargs: dict[str, Any] = {"saveat": t, "dense": False, "rtol": rtol, "atol": atol}
    norm = options.get("norm")
    kwargs["internalnorm"] = norm if norm is not None else (mixed_norm if isinstance(y0, tuple) else None)
    if "dtype" in options:
        kwargs["time_dtype"] = options["dtype"]
    if "max_num_steps" in options and not fixed:
        # torchdiffeq counts the steps between consecutive output times (and ignores the option
        # on fixed grids); pyode counts the whole solve.
        kwargs["max_steps"] = int(options["max_num_steps"]) * max(1, t.numel() - 1)
    if fixed:
        if options.get("interp", "cubic") != "cubic":
            raise ValueError(f"{name}: pyode interpolates fixed grids with cubic Hermite only (interp='cubic')")
        kwargs["adaptive"] = False
        step_size = options.get("step_size")
        if step_size is not None:
            kwargs["dt"] = float(step_size)
        else:
            # No step size: step from each output time to the next, as torchdiffeq does.
            times = t.detach()
            kwargs["tstops"] = times
            kwargs["dt"] = float((times[1:] - times[:-1]).abs().max()) if t.numel() > 1 else 1.0
    else:
        if options.get("first_step") is not None:
            kwargs["dt"] = float(options["first_step"])
        controller = {}
        for ours, theirs in (("safety", "safety"), ("factor_max", "ifactor"), ("factor_min", "dfactor")):
            if theirs in options:
                controller[ours] = float(options[theirs])
        if controller:
            kwargs["controller"] = PIController(**controller)
        if options.get("step_t") is not None:
            kwargs["tstops"] = options["step_t"]
    return solver, kwargs
