"""torchdiffeq's method names and options as a pyode solver and `solve` keywords; its fixed
grids and their interpolation."""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import math
import numbers
from typing import Any, Callable

import torch

from ..norms import mixed_norm
from ..problem import State
from ..solvers import BS3, DP5, DP8, RK4, Euler, Heun, Midpoint, Tsit5
from ..solvers.base import AbstractSolver
from ..step_control import AbstractController, PIController

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
# torchdiffeq's wrapper of scipy.integrate.solve_ivp: a method name without a pyode solver.
SCIPY_METHOD = "scipy_solver"
_SCIPY_SOLVERS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")

_ADAPTIVE_OPTIONS = {
    "first_step",
    "max_num_steps",
    "norm",
    "dtype",
    "safety",
    "ifactor",
    "dfactor",
    "step_t",
    "jump_t",
    "min_step",
    "max_step",
    # pyode's cdeint only: jump_t values on the span's ends (the knots of a linear path there),
    # where the first step restarts after the jump and the last stops before it
    "_jump_t_on_ends",
}
_FIXED_OPTIONS = {"step_size", "grid_constructor", "norm", "dtype", "interp", "max_num_steps", "perturb"}
# torchdiffeq's scipy wrapper drops norm, grid_points and eps without a word; so does pyode.
_SCIPY_OPTIONS = {"solver", "min_step", "max_step", "norm", "grid_points", "eps"}
_DEFAULT_MAX_STEPS = 100_000  # solve's default


def _initial_only(y0: State) -> State:
    """A single output time is the initial state; nothing to integrate."""
    return tuple(y.unsqueeze(0) for y in y0) if isinstance(y0, tuple) else y0.unsqueeze(0)


def _identity(ys: State) -> State:
    return ys


@dataclasses.dataclass
class _Plan:
    """A torchdiffeq call as a pyode solve: the solver, `solve`'s keywords, and what turns the
    solution's saved states into torchdiffeq's output (linear interpolation on fixed grids)."""

    solver: AbstractSolver
    kwargs: dict[str, Any]
    output: Callable[[State], State] = _identity


def _number(value: Any, option: str, name: str, *, low: float = 0.0, strict: bool = True, inf: bool = False) -> float:
    """An option's value as a float, checked: > low (or ≥ low unless strict), finite unless inf."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: option {option!r} must be a number; got {type(value).__name__}")
    value = float(value)
    ok = (value > low if strict else value >= low) and (math.isfinite(value) or (inf and value == math.inf))
    if not ok:
        bound = f"{'>' if strict else '≥'} {low:g}" + ("" if inf else " and finite")
        raise ValueError(f"{name}: option {option!r} must be {bound}; got {value}")
    return value


def _translate(
    func: Callable, y0: State, t: torch.Tensor, rtol: Any, atol: Any, method: str | None, options: Any, name: str
) -> _Plan:
    """torchdiffeq's method name and options as a pyode solver and `solve` keywords."""
    method_name = "dopri5" if method is None else method
    if method_name not in METHODS:
        raise ValueError(f"{name}: unknown method {method!r}; pyode has {sorted([*METHODS, SCIPY_METHOD])}")
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
    if norm is not None and not callable(norm):
        raise TypeError(f"{name}: option 'norm' must be a callable on states; got {type(norm).__name__}")
    kwargs["internalnorm"] = norm if norm is not None else (mixed_norm if isinstance(y0, tuple) else None)
    if options.get("dtype") is not None:
        if options["dtype"] not in (torch.float32, torch.float64):
            raise ValueError(f"{name}: option 'dtype' must be torch.float32 or torch.float64; got {options['dtype']}")
        kwargs["time_dtype"] = options["dtype"]
    if options.get("max_num_steps") is not None:
        steps = _number(options["max_num_steps"], "max_num_steps", name, low=1.0, strict=False, inf=True)
        if not fixed:
            # torchdiffeq counts the steps between consecutive output times (and ignores the option
            # on fixed grids); pyode counts the whole solve.
            kwargs["max_steps"] = int(min(steps, 2**62)) * max(1, t.numel() - 1)
    if fixed:
        return _fixed_grid(func, y0, t, solver, kwargs, options, name)
    _adaptive(t, kwargs, options, name)
    return _Plan(solver, kwargs)


def _adaptive(t: torch.Tensor, kwargs: dict[str, Any], options: dict[str, Any], name: str) -> None:
    """Step control: first_step, min_step, max_step, safety, ifactor, dfactor, step_t."""
    min_step = _number(options.get("min_step", 0.0), "min_step", name, strict=False)
    max_step = _number(options.get("max_step", math.inf), "max_step", name, inf=True)
    if min_step > max_step:
        raise ValueError(f"{name}: option 'min_step' ({min_step}) exceeds option 'max_step' ({max_step})")
    if max_step < math.inf:
        kwargs["dtmax"] = max_step
    if options.get("first_step") is not None:
        # torchdiffeq clamps every step, the first too, into [min_step, max_step].
        first = _number(options["first_step"], "first_step", name)
        kwargs["dt"] = min(max(first, min_step), max_step)
    factors = {}
    # pyode's controllers need safety in (0, 1], factor_min in (0, 1) and factor_max > 1.
    if options.get("safety") is not None:
        factors["safety"] = _number(options["safety"], "safety", name)
        if factors["safety"] > 1:
            raise ValueError(f"{name}: option 'safety' must be in (0, 1]; got {factors['safety']}")
    if options.get("ifactor") is not None:
        factors["factor_max"] = _number(options["ifactor"], "ifactor", name, low=1.0)
    if options.get("dfactor") is not None:
        factors["factor_min"] = _number(options["dfactor"], "dfactor", name)
        if factors["factor_min"] >= 1:
            raise ValueError(f"{name}: option 'dfactor' must be in (0, 1); got {factors['factor_min']}")
    controller: AbstractController | None = PIController(**factors) if factors else None
    if min_step > 0:
        kwargs["controller"] = _MinStep(controller or PIController(), min_step)
        # With finite error ratios _MinStep never proposes a step below min_step; a step that blew
        # up (NaN or inf) still shrinks, and below min_step ends the solve as Unstable.
        kwargs["dtmin"] = min_step
    elif controller is not None:
        kwargs["controller"] = controller
    # torchdiffeq ignores step_t and jump_t values outside the span (and on its ends). jump_t are
    # discontinuities of func: steps land there, the stage at a jump sees the time just before it
    # and the next step restarts with func just after it (torchdiffeq's perturb).
    for option, keyword in (("step_t", "tstops"), ("jump_t", "d_discontinuities")):
        if options.get(option) is not None:
            kwargs[keyword] = _strictly_inside(options[option], t)
    if options.get("_jump_t_on_ends"):
        kwargs["d_discontinuities"] = [*kwargs.get("d_discontinuities", []), *options["_jump_t_on_ends"]]


def _strictly_inside(values: Any, t: torch.Tensor) -> list[float]:
    """The times strictly between t[0] and t[-1]."""
    t0, t1 = float(t[0]), float(t[-1])
    direction = 1.0 if t1 >= t0 else -1.0
    values = values.detach().reshape(-1).tolist() if isinstance(values, torch.Tensor) else list(values)
    return [float(s) for s in values if direction * (float(s) - t0) > 0 and direction * (t1 - float(s)) > 0]


@dataclasses.dataclass(frozen=True)
class _MinStep(AbstractController):
    """torchdiffeq's `min_step` around another controller: no proposed step is below min_step,
    and a step of at most min_step is accepted whatever its error (torchdiffeq's
    `_adaptive_step`). A step whose error ratio is NaN or inf is still rejected: torchdiffeq
    would accept it and then stop on the non-finite state."""

    inner: AbstractController
    min_step: float

    def init(self, error_order: int) -> Any:
        return self.inner.init(error_order)

    def adapt(self, ratio: float, h: float, state: Any) -> tuple[bool, float, Any]:
        accepted, h_next, state = self.inner.adapt(ratio, h, state)
        if not math.isfinite(ratio):
            return accepted, h_next, state
        return accepted or h <= self.min_step, max(h_next, self.min_step), state


def _fixed_grid(
    func: Callable,
    y0: State,
    t: torch.Tensor,
    solver: AbstractSolver,
    kwargs: dict[str, Any],
    options: dict[str, Any],
    name: str,
) -> _Plan:
    """Steps from grid point to grid point of torchdiffeq's grid, and torchdiffeq's interpolation
    of the output times between them."""
    interp = options.get("interp", "linear")
    if interp not in ("linear", "cubic"):
        raise ValueError(f"{name}: option 'interp' must be 'linear' (the default) or 'cubic'; got {interp!r}")
    step_size, constructor = options.get("step_size"), options.get("grid_constructor")
    if step_size is not None and constructor is not None:
        raise ValueError(f"{name}: options 'step_size' and 'grid_constructor' are mutually exclusive")
    if step_size is not None:
        _number(step_size, "step_size", name)
    if constructor is not None and not callable(constructor):
        raise TypeError(
            f"{name}: option 'grid_constructor' must be callable as grid_constructor(func, y0, t); "
            f"got {type(constructor).__name__}"
        )
    kwargs["adaptive"] = False
    if t.numel() == 1:
        kwargs["dt"] = 1.0
        return _Plan(solver, kwargs)
    grid = _grid(func, y0, t, step_size, constructor, name)
    times = [float(g) for g in grid.tolist()]
    direction = 1.0 if times[-1] > times[0] else -1.0
    # The steps land on every grid point: tstops at them, and a step no shorter than any gap.
    kwargs["tstops"] = times[1:-1]
    if options.get("perturb"):
        # Every grid point is a discontinuity: stages there see the time just before it, and each
        # step starts with func just after it.
        kwargs["d_discontinuities"] = times
    kwargs["dt"] = max(direction * (b - a) for a, b in itertools.pairwise(times))
    # torchdiffeq has no step limit on fixed grids.
    kwargs["max_steps"] = max(_DEFAULT_MAX_STEPS, len(times))
    keys = [direction * g for g in times]
    outputs = [float(v) for v in t.detach().tolist()]
    # Each output time's step: the first grid interval (g_i, g_i+1] that reaches it.
    right = [bisect.bisect_left(keys, direction * s) for s in outputs]
    on_grid = [keys[i] == direction * s for i, s in zip(right, outputs)]
    if interp == "cubic" or all(on_grid):
        # pyode's interpolant between fixed steps is torchdiffeq's cubic Hermite (f at both ends).
        return _Plan(solver, kwargs)
    return _linear_plan(t, grid, times, right, on_grid, kwargs, solver)


def _grid(
    func: Callable, y0: State, t: torch.Tensor, step_size: Any, constructor: Callable | None, name: str
) -> torch.Tensor:
    """torchdiffeq's grid: `t` itself, its grid for `step_size`, or the user's `grid_constructor`."""
    t = t.detach()
    decreasing = bool(t[-1] < t[0])
    if constructor is not None:
        grid = constructor(func, y0, t)
        if not isinstance(grid, torch.Tensor) or grid.dim() != 1 or grid.numel() < 2:
            raise ValueError(
                f"{name}: grid_constructor must return a 1-D tensor of at least two times; got "
                + (f"shape {tuple(grid.shape)}" if isinstance(grid, torch.Tensor) else type(grid).__name__)
            )
        grid = grid.detach()
        if not torch.is_floating_point(grid) or not bool(torch.isfinite(grid).all()):
            raise ValueError(f"{name}: grid_constructor must return finite floating-point times")
        if float(grid[0]) != float(t[0]) or float(grid[-1]) != float(t[-1]):
            raise ValueError(
                f"{name}: grid_constructor's grid must start at t[0] = {float(t[0])} and end at t[-1] = "
                f"{float(t[-1])}; got {float(grid[0])} and {float(grid[-1])}"
            )
        gaps = grid[1:] - grid[:-1]
        if not bool(((gaps < 0) if decreasing else (gaps > 0)).all()):
            word = "decreasing, as t is" if decreasing else "increasing, as t is"
            raise ValueError(f"{name}: grid_constructor's grid must be strictly {word}")
        return grid
    if step_size is None:
        return t
    # torchdiffeq's own grid for a step size, in t's dtype and in the direction of integration
    # (it works on -t for decreasing t): start + k·step_size, and the last point set to t[-1].
    s = -t if decreasing else t
    start, end = s[0], s[-1]
    count = int(torch.ceil((end - start) / step_size + 1).item())
    grid = torch.arange(0, count, dtype=s.dtype, device=s.device) * step_size + start
    grid[-1] = end
    # When rounding puts the last multiple of step_size on or past the end, torchdiffeq takes
    # a step back to it (or a step of zero length); pyode drops that point.
    # (start + k·step_size never decreases in k, so repeats are neighbours.)
    inside = grid[1:-1]
    inside = torch.unique_consecutive(inside[(inside > start) & (inside < end)])
    grid = torch.cat([grid[:1], inside, grid[-1:]])
    return -grid if decreasing else grid


def _linear_plan(
    t: torch.Tensor,
    grid: torch.Tensor,
    times: list[float],
    right: list[int],
    on_grid: list[bool],
    kwargs: dict[str, Any],
    solver: AbstractSolver,
) -> _Plan:
    """torchdiffeq's linear interpolation (its default on fixed grids): save the states at the
    grid points around each output time, and interpolate with torchdiffeq's arithmetic,
    y_i + (s - g_i)/(g_i+1 - g_i)·(y_i+1 - y_i), exact at grid points."""
    # Save times: the output times on the grid (as t's elements, so that a t requiring grad keeps
    # pyode's time derivative there), and the two grid points around each other output time.
    saves: dict[float, torch.Tensor | None] = {}
    for j, (i, exact) in enumerate(zip(right, on_grid)):
        if exact:
            saves[times[i]] = t[j]
        else:
            saves.setdefault(times[i - 1], None)
            saves.setdefault(times[i], None)
    direction = 1.0 if times[-1] > times[0] else -1.0
    order = sorted(saves, key=lambda v: direction * v)
    row = {v: k for k, v in enumerate(order)}
    if t.requires_grad:
        kwargs["saveat"] = torch.stack(
            [
                saves[v].to(torch.float64) if saves[v] is not None else t.new_tensor(v, dtype=torch.float64)
                for v in order
            ]
        )
    else:
        kwargs["saveat"] = order
    between = [j for j, exact in enumerate(on_grid) if not exact]
    at = torch.tensor([row[times[i] if exact else times[i - 1]] for i, exact in zip(right, on_grid)])
    lo = torch.tensor([row[times[right[j] - 1]] for j in between])
    hi = torch.tensor([row[times[right[j]]] for j in between])
    g0 = grid[[right[j] - 1 for j in between]]
    g1 = grid[[right[j] for j in between]]
    slope = (t[between] - g0) / (g1 - g0)  # in torchdiffeq's dtype: that of t and the grid
    index = torch.tensor(between)

    def interpolate(y: torch.Tensor) -> torch.Tensor:
        lo_y, hi_y = y[lo.to(y.device)], y[hi.to(y.device)]
        s = slope.to(dtype=y.dtype, device=y.device).view(-1, *([1] * (y.dim() - 1)))
        return y[at.to(y.device)].index_put((index.to(y.device),), lo_y + s * (hi_y - lo_y))

    def output(ys: State) -> State:
        if isinstance(ys, tuple):
            parts = [interpolate(y) for y in ys]
            return type(ys)(*parts) if hasattr(ys, "_fields") else tuple(parts)
        return interpolate(ys)

    return _Plan(solver, kwargs, output)
