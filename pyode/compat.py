"""torchdiffeq's `odeint`, with the same signature, method names and options, on pyode's engine.

Switching is a one-line change: `from pyode import odeint`. Differences worth knowing:
- Output between steps comes from each method's dense interpolant (the free interpolants of
  dopri5 and tsit5, cubic Hermite otherwise); torchdiffeq uses the same for dopri5 and linear
  interpolation on fixed grids by default.
- Step-size control is a PI controller (torchdiffeq's is an I controller), so step counts differ
  slightly at the same tolerances.
- "rk4" is the classical RK4 (torchdiffeq's "rk4" is the 3/8 rule); both are fourth order.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .norms import mixed_norm
from .problem import ODEProblem, State
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
    name = "dopri5" if method is None else method
    if name not in METHODS:
        raise ValueError(f"odeint: unknown method {method!r}; pyode has {sorted(METHODS)}")
    solver = METHODS[name]
    fixed = name in FIXED_GRID
    options = dict(options or {})
    allowed = _FIXED_OPTIONS if fixed else _ADAPTIVE_OPTIONS
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(
            f"odeint: option(s) {unknown} are not supported for method {name!r}; supported: {sorted(allowed)}"
        )
    if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.numel() < 1:
        raise ValueError("odeint: t must be a 1-D tensor of output times")
    if t.numel() > 1:
        steps = (t[1:] - t[:-1]).detach()
        if not (bool((steps > 0).all()) or bool((steps < 0).all())):
            raise ValueError(f"odeint: t must be strictly increasing or strictly decreasing; got {t.tolist()}")

    kwargs: dict[str, Any] = {"saveat": t, "dense": False, "rtol": rtol, "atol": atol}
    norm = options.get("norm")
    kwargs["internalnorm"] = norm if norm is not None else (mixed_norm if isinstance(y0, tuple) else None)
    if "dtype" in options:
        kwargs["time_dtype"] = options["dtype"]
    if "max_num_steps" in options:
        kwargs["max_steps"] = options["max_num_steps"]
    if fixed:
        if options.get("interp", "cubic") != "cubic":
            raise ValueError("odeint: pyode interpolates fixed grids with cubic Hermite only (interp='cubic')")
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

    if t.numel() == 1:
        # A single output time is the initial state; nothing to integrate.
        return tuple(y.unsqueeze(0) for y in y0) if isinstance(y0, tuple) else y0.unsqueeze(0)
    prob = ODEProblem(func, y0, (t[0], t[-1]))
    return solve(prob, solver, **kwargs).y
