"""torchsde's `sdeint` and `sdeint_adjoint`, with the same signatures, defaults, method names and
output layout ((T, batch, d)), on pyode's SDE solvers.

Switching is a one-line change: `from pyode.compat import sdeint, sdeint_adjoint`. The methods:

| torchsde method | calculus | pyode solver |
| --- | --- | --- |
| "euler" | Itô | `EulerMaruyama()` |
| "milstein" | Itô, Stratonovich | `Milstein()` (diagonal, scalar, additive noise) |
| "srk" | Itô | `SRA1()` (additive noise only) |
| "euler_heun" | Stratonovich | `EulerHeun()` |
| "heun" | Stratonovich | `Heun()` (its SDE form) |
| "midpoint" | Stratonovich | `Midpoint()` (its SDE form) |
| "reversible_heun" | Stratonovich | `ReversibleHeun()` |

Differences worth knowing:
- Fixed steps (the default) run on torchsde's grid: steps of dt from ts[0], accumulated in ts's
  dtype, the last one shortened to end on ts[-1]; output times between grid points are
  interpolated linearly, as torchsde does. On the same Brownian motion (pass one `bm` to both)
  every method above agrees with torchsde to rounding, gradients through the solver too, with
  one exception: "milstein" with scalar noise. Its correction is ½ (∂g/∂y) g (ΔW² − h)
  (Kloeden & Platen §10.3); torchsde's uses the transpose, (∂g/∂y)ᵀ g, which is the same only
  when ∂g/∂y is symmetric, and otherwise converges with strong order 0.5 instead of 1.
- Default methods are torchsde's ("srk" for Itô with additive noise, "euler" for general noise,
  "midpoint" for Stratonovich), except for Itô SDEs with diagonal or scalar noise: torchsde's
  "srk" is then Rößler's SRI2, which pyode does not have; pyode takes "milstein", of the same
  strong order 1.0. An explicit method="srk" with such noise is refused.
- `adaptive=True` steps with each method's embedded error estimate and pyode's PI controller,
  and lands on the output times; torchsde estimates the error by step doubling and interpolates.
  Both converge to the same solution on the same Brownian path, but the steps differ. `dt` is
  the first step and `dt_min` keeps torchsde's meaning: no step is shorter, and a step of dt_min
  is accepted whatever its error. "euler" has no error estimate in pyode, so it steps with
  fixed dt only.
- `sdeint` differentiates through the solver (pyode's `DirectAdjoint`), as torchsde's does.
  `sdeint_adjoint` uses pyode's stochastic adjoint (`BacksolveAdjoint`, Li et al. 2020), whose
  backward SDE is written in Stratonovich form for both calculi: adjoint_method is "euler_heun",
  "heun" or "midpoint". By default "midpoint" for Stratonovich SDEs (torchsde's default) and
  "euler_heun" for Itô SDEs (torchsde's Itô adjoint runs "milstein" or "euler"; "euler_heun" is
  their Stratonovich counterpart, one drift evaluation per step). The backward solve steps
  adaptively exactly when the forward one does (adjoint_rtol, adjoint_atol apply then):
  adjoint_adaptive=True with fixed forward steps is refused. With method="reversible_heun" the
  default adjoint_method="adjoint_reversible_heun" gives the exact gradient of the forward
  solve (pyode's `ReversibleAdjoint`), also when ts are not multiples of dt (torchsde's is then
  approximate).
- Not available, refused by name: logqp, extra, extra_solver_state, method "log_ode", Milstein's
  grad_free=True, SDEs that define only g_prod or f_and_g_prod (pyode's solvers read the
  diffusion matrix g), a bm without Lévy area for "srk".
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
from array import array
from typing import Any, Callable, NamedTuple

import torch
from torch import nn

from ..brownian import AbstractBrownian
from ..problem import SDEProblem
from ..sensitivity import BacksolveAdjoint, DirectAdjoint, ReversibleAdjoint
from ..solve import solve
from ..solvers import SRA1, EulerHeun, EulerMaruyama, Milstein, ReversibleHeun
from ..solvers.base import AbstractSolver
from ..solvers.sde import SDEHeun, SDEMidpoint
from ..step_control import PIController
from ._options import _MinStep

NOISE_TYPES = ("diagonal", "scalar", "additive", "general")
SDE_TYPES = ("ito", "stratonovich")
ITO_METHODS: dict[str, Callable[[], AbstractSolver]] = {"euler": EulerMaruyama, "milstein": Milstein, "srk": SRA1}
STRATONOVICH_METHODS: dict[str, Callable[[], AbstractSolver]] = {
    "euler_heun": EulerHeun,
    "heun": SDEHeun,
    "midpoint": SDEMidpoint,
    "milstein": Milstein,
    "reversible_heun": ReversibleHeun,
}
ADJOINT_METHODS: dict[str, Callable[[], AbstractSolver]] = {
    "euler_heun": EulerHeun,
    "heun": SDEHeun,
    "midpoint": SDEMidpoint,
}
_LEVY_AREAS = ("none", "space-time", "davie", "foster")


def sdeint(
    sde: Any,
    y0: torch.Tensor,
    ts: Any,
    bm: Any = None,
    method: str | None = None,
    dt: float = 1e-3,
    adaptive: bool = False,
    rtol: float = 1e-5,
    atol: float = 1e-4,
    dt_min: float = 1e-5,
    options: dict[str, Any] | None = None,
    names: dict[str, str] | None = None,
    logqp: bool = False,
    extra: bool = False,
    extra_solver_state: Any = None,
) -> torch.Tensor:
    """Solve dy = f(t, y) dt + g(t, y) dW from y(ts[0]) = y0 and return y at every time in `ts`
    (torchsde's `sdeint`).

    Args:
        sde: an object with `f(t, y)` and `g(t, y)` (or `f_and_g(t, y)`) and the attributes
            `noise_type` ("diagonal", "scalar", "additive", "general") and `sde_type` ("ito",
            "stratonovich"). g returns (batch, d) for diagonal noise, else (batch, d, m).
        y0: (batch, d).
        ts: (T,) strictly increasing output times (a tensor, or a list of floats).
        bm: the Brownian motion, called as bm(s, t) with values of shape (batch, m) (a torchsde
            Brownian object, or a `pyode.brownian` one); by default a new
            `pyode.brownian.BrownianInterval`.
        method: a key of the module's method table; by default torchsde's choice (see above).
        dt: the fixed step, or the first step with `adaptive=True`.
        rtol, atol, dt_min: the adaptive step control's.
        options: {"grad_free": False} for "milstein" (True, torchsde's derivative-free variant,
            is refused); "levy_area_approximation" is accepted and, as in torchsde, has no
            effect: the Brownian motion sdeint builds carries what the method reads.
        names: other method names of `sde`: {"drift": ..., "diffusion": ...,
            "drift_and_diffusion": ...}.
        logqp, extra, extra_solver_state: not available (they raise ValueError).

    Returns:
        (T, batch, d), with gradients by autograd through the solver.
    """
    _refuse_extras("sdeint", logqp, extra, extra_solver_state)
    plan = _plan("sdeint", sde, y0, ts, bm, method, dt, adaptive, rtol, atol, dt_min, options, names)
    if plan.saveat is None:
        return y0.unsqueeze(0)
    prob = SDEProblem(plan.f, plan.g, y0, plan.tspan, plan.noise, plan.sde_type, (), bm=plan.bm)
    return plan.output(solve(prob, plan.solver, sensealg=DirectAdjoint(), **plan.kwargs).y)


def sdeint_adjoint(
    sde: nn.Module,
    y0: torch.Tensor,
    ts: Any,
    bm: Any = None,
    method: str | None = None,
    adjoint_method: str | None = None,
    dt: float = 1e-3,
    adaptive: bool = False,
    adjoint_adaptive: bool = False,
    rtol: float = 1e-5,
    adjoint_rtol: float = 1e-5,
    atol: float = 1e-4,
    adjoint_atol: float = 1e-4,
    dt_min: float = 1e-5,
    options: dict[str, Any] | None = None,
    adjoint_options: dict[str, Any] | None = None,
    adjoint_params: Any = None,
    names: dict[str, str] | None = None,
    logqp: bool = False,
    extra: bool = False,
    extra_solver_state: Any = None,
) -> torch.Tensor:
    """torchsde's `sdeint_adjoint`: the forward solve of `sdeint`, gradients by the stochastic
    adjoint (pyode's `BacksolveAdjoint`) on the same Brownian path, or, for
    method="reversible_heun" with adjoint_method="adjoint_reversible_heun" (the default then),
    the exact gradient by pyode's `ReversibleAdjoint`.

    Args:
        sde: an `nn.Module` (unless adjoint_params is given), as for `sdeint`.
        adjoint_method: "euler_heun", "heun" or "midpoint" (the backward SDE's method; see the
            module docstring for the defaults), or "adjoint_reversible_heun" with
            method="reversible_heun".
        adjoint_adaptive: must equal `adaptive` (pyode's backward solve steps as the forward one
            does), except that adaptive=True with the default adjoint_adaptive=False steps
            backward adaptively too.
        adjoint_rtol, adjoint_atol: the backward solve's tolerances when it is adaptive.
        adjoint_options: as `options`; the backward methods take none of their own.
        adjoint_params: the tensors to differentiate (those that require grad); by default
            `sde.parameters()`. Given explicitly, tensors that sde uses but that are not listed
            get no gradient, as in torchsde.

    Returns:
        (T, batch, d).
    """
    if adjoint_params is None and not isinstance(sde, nn.Module):
        raise ValueError(
            "sdeint_adjoint: sde must be an nn.Module so that its parameters can be found; otherwise pass them as "
            "adjoint_params=(...) (adjoint_params=() if there are none)"
        )
    _refuse_extras("sdeint_adjoint", logqp, extra, extra_solver_state)
    plan = _plan("sdeint_adjoint", sde, y0, ts, bm, method, dt, adaptive, rtol, atol, dt_min, options, names)
    explicit = adjoint_params is not None
    params = tuple(sde.parameters()) if adjoint_params is None else tuple(adjoint_params)
    if not all(isinstance(p, torch.Tensor) for p in params):
        raise TypeError("sdeint_adjoint: adjoint_params must be a sequence of tensors")
    params = tuple(p for p in params if p.requires_grad)
    sensealg = _adjoint_algorithm(
        plan, adjoint_method, adaptive, adjoint_adaptive, adjoint_rtol, adjoint_atol, adjoint_options
    )
    if explicit:
        # torchsde differentiates only the listed tensors and ignores the rest.
        sensealg = dataclasses.replace(sensealg, _check_closure=False)
    if plan.saveat is None:
        return y0.unsqueeze(0)
    prob = SDEProblem(plan.f, plan.g, y0, plan.tspan, plan.noise, plan.sde_type, params, bm=plan.bm)
    return plan.output(solve(prob, plan.solver, sensealg=sensealg, **plan.kwargs).y)


class _Plan(NamedTuple):
    """A torchsde call translated: the SDEProblem's pieces, the solver and `solve`'s keywords,
    and how to turn the solution at `saveat` into torchsde's output."""

    f: Callable
    g: Callable
    noise: str
    sde_type: str
    tspan: tuple[float, float]
    bm: Any
    method: str
    solver: AbstractSolver
    adaptive: bool
    saveat: list[float] | None  # None: ts holds only ts[0]
    kwargs: dict[str, Any]
    output: Callable[[torch.Tensor], torch.Tensor]


def _plan(
    name: str,
    sde: Any,
    y0: Any,
    ts: Any,
    bm: Any,
    method: str | None,
    dt: Any,
    adaptive: bool,
    rtol: Any,
    atol: Any,
    dt_min: Any,
    options: dict[str, Any] | None,
    names: dict[str, str] | None,
) -> _Plan:
    noise, sde_type = _sde_kind(name, sde)
    f, g = _vector_fields(name, sde, names)
    if not isinstance(y0, torch.Tensor):
        raise TypeError(f"{name}: y0 must be a torch.Tensor of shape (batch, d); got {type(y0).__name__}")
    if y0.dim() != 2:
        raise ValueError(f"{name}: y0 must be a 2-D tensor of shape (batch, d), as in torchsde; got {tuple(y0.shape)}")
    ts = _check_ts(name, ts, y0)
    for arg, value in (("dt", dt), ("rtol", rtol), ("atol", atol), ("dt_min", dt_min)):
        if isinstance(value, torch.Tensor) and value.requires_grad:
            raise ValueError(f"{name}: {arg} must not require gradient")
    dt, dt_min = _positive(name, "dt", dt), _positive(name, "dt_min", dt_min, allow_zero=True)
    if not isinstance(adaptive, bool):
        raise TypeError(f"{name}: adaptive must be True or False; got {adaptive!r}")
    if method is None:
        method = _default_method(sde_type, noise)
    solver = _solver(name, method, sde_type, noise)
    _check_options(name, "options", options, method, noise)
    bm = _brownian(name, bm, method)
    if adaptive and not solver.adaptive:
        raise ValueError(
            f"{name}: method={method!r} has no error estimate in pyode, so adaptive=True is not available (torchsde "
            "would step-double it); use adaptive=False, or an adaptive method such as 'milstein' or "
            "('srk' with additive noise)"
        )
    times = [float(t) for t in ts.tolist()]
    tspan = (times[0], times[-1])
    if len(times) == 1:
        return _Plan(f, g, noise, sde_type, tspan, bm, method, solver, adaptive, None, {}, lambda ys: ys)
    if adaptive:
        # Landing on ts is also asked for with tstops: the SDE steppers have no dense output.
        kwargs = dict(
            saveat=times,
            tstops=times,
            dt=dt,
            adaptive=True,
            rtol=float(rtol),
            atol=float(atol),
            controller=_MinStep(PIController(), dt_min),
            max_steps=2**31 - 1,
        )
        return _Plan(f, g, noise, sde_type, tspan, bm, method, solver, True, times, kwargs, lambda ys: ys)
    grid = _torchsde_grid(name, ts, times, dt)
    saveat, output = _linear_output(ts, times, grid)
    # Every step lands on the next grid point: dt covers the widest gap (float32 grids are uneven).
    widest = max(b - a for a, b in itertools.pairwise(grid))
    kwargs = dict(saveat=saveat, tstops=grid, dt=max(dt, widest), adaptive=False, max_steps=len(grid))
    return _Plan(f, g, noise, sde_type, tspan, bm, method, solver, False, saveat, kwargs, output)


def _sde_kind(name: str, sde: Any) -> tuple[str, str]:
    for attr, allowed in (("noise_type", NOISE_TYPES), ("sde_type", SDE_TYPES)):
        if not hasattr(sde, attr):
            raise ValueError(
                f"{name}: sde has no attribute {attr}; set it to one of {', '.join(map(repr, allowed))} (torchsde's "
                "SDEs carry noise_type and sde_type)"
            )
        value = getattr(sde, attr)
        if value not in allowed:
            raise ValueError(f"{name}: sde.{attr} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return sde.noise_type, sde.sde_type


def _vector_fields(name: str, sde: Any, names: dict[str, str] | None) -> tuple[Callable, Callable]:
    """sde's drift and diffusion, under the names `names` gives them (torchsde's keys)."""
    if names is None:
        names = {}
    elif not isinstance(names, dict):
        raise TypeError(f"{name}: names must be a dict such as {{'drift': 'h'}}; got {type(names).__name__}")

    def method(key: str, default: str) -> Callable | None:
        attr = names.get(key, default)
        return getattr(sde, attr, None) if isinstance(attr, str) else None

    f, g, f_and_g = method("drift", "f"), method("diffusion", "g"), method("drift_and_diffusion", "f_and_g")
    if f_and_g is not None:
        # torchsde's f_and_g alone: each of pyode's calls of f or g evaluates both.
        f = f if f is not None else (lambda t, y: f_and_g(t, y)[0])
        g = g if g is not None else (lambda t, y: f_and_g(t, y)[1])
    for part, fn, key, default in (("drift", f, "drift", "f"), ("diffusion", g, "diffusion", "g")):
        if fn is None:
            attr = names.get(key, default)
            products = [n for n in ("g_prod", names.get("drift_and_diffusion_prod", "f_and_g_prod")) if hasattr(sde, n)]
            hint = (
                f"; it defines {' and '.join(products)}, but pyode's solvers read the diffusion matrix itself"
                if products and part == "diffusion"
                else ""
            )
            raise ValueError(f"{name}: sde must define the {part} {attr}(t, y) (or f_and_g(t, y)){hint}")
        if not callable(fn):
            raise TypeError(f"{name}: sde's {part} must be callable as (t, y); got {type(fn).__name__}")
    return f, g


def _check_ts(name: str, ts: Any, y0: torch.Tensor) -> torch.Tensor:
    if not isinstance(ts, torch.Tensor):
        if not isinstance(ts, (tuple, list)) or not all(
            isinstance(t, (float, int)) and not isinstance(t, bool) for t in ts
        ):
            raise ValueError(f"{name}: ts must be a 1-D tensor or a list/tuple of floats")
        ts = torch.tensor(ts, dtype=y0.dtype, device=y0.device)
    if ts.dim() != 1 or ts.numel() < 1:
        raise ValueError(f"{name}: ts must be a 1-D tensor of output times; got shape {tuple(ts.shape)}")
    if not ts.is_floating_point():
        raise ValueError(f"{name}: ts must be a floating-point tensor; got dtype {ts.dtype}")
    if ts.requires_grad:
        raise ValueError(f"{name}: ts must not require gradient")
    if ts.numel() > 1 and not bool((ts[1:] > ts[:-1]).all()):
        raise ValueError(f"{name}: ts must be strictly increasing; got {ts.tolist()}")
    return ts


def _positive(name: str, arg: str, value: Any, allow_zero: bool = False) -> float:
    value = float(value)
    if not value >= 0 or (value == 0 and not allow_zero) or value == float("inf"):
        raise ValueError(
            f"{name}: {arg} must be {'non-negative' if allow_zero else 'positive'} and finite; got {value}"
        )
    return value


def _refuse_extras(name: str, logqp: Any, extra: Any, extra_solver_state: Any) -> None:
    if logqp:
        raise ValueError(
            f"{name}: logqp=True (torchsde's log-ratio penalty with the prior drift h) is not available; add the "
            "penalty ½|(f - h)/g|² as an extra state channel with zero diffusion instead"
        )
    if extra or extra_solver_state is not None:
        raise ValueError(
            f"{name}: extra=True and extra_solver_state (the solvers' internal state) are not available; pyode's "
            "solvers keep their state to themselves"
        )


def _default_method(sde_type: str, noise: str) -> str:
    """torchsde's default, with Milstein for its SRI2 (Itô, diagonal or scalar noise)."""
    if sde_type == "stratonovich":
        return "midpoint"
    return {"additive": "srk", "general": "euler"}.get(noise, "milstein")


def _solver(name: str, method: Any, sde_type: str, noise: str) -> AbstractSolver:
    table = ITO_METHODS if sde_type == "ito" else STRATONOVICH_METHODS
    other = STRATONOVICH_METHODS if sde_type == "ito" else ITO_METHODS
    if method not in table:
        if method in other:
            raise ValueError(
                f"{name}: method={method!r} is for {'Stratonovich' if sde_type == 'ito' else 'Itô'} SDEs, but "
                f"sde.sde_type={sde_type!r}; use one of {sorted(table)}"
            )
        why = {
            "log_ode": " (it needs Davie's Lévy area approximation, which pyode does not have)",
            "adjoint_reversible_heun": " (it is an adjoint_method of sdeint_adjoint, with method='reversible_heun')",
        }.get(method, "")
        raise ValueError(
            f"{name}: method={method!r} is not available{why}; for sde_type={sde_type!r} use one of {sorted(table)}"
        )
    if method == "srk" and noise != "additive":
        fix = "'euler'" if noise == "general" else "'milstein' (the same strong order 1.0) or 'euler'"
        raise ValueError(
            f"{name}: method='srk' is pyode's SRA1, for additive noise only (torchsde's SRI2 for {noise} noise is not "
            f"available); use {fix}"
        )
    if method == "milstein" and noise == "general":
        raise ValueError(
            f"{name}: method='milstein' handles diagonal, scalar and additive noise; for general noise use "
            f"{'euler' if sde_type == 'ito' else 'euler_heun, heun, midpoint or reversible_heun'}"
        )
    return table[method]()


def _check_options(name: str, arg: str, options: Any, method: str, noise: str) -> None:
    if options is None:
        return
    if not isinstance(options, dict):
        raise TypeError(f"{name}: {arg} must be a dict; got {type(options).__name__}")
    unknown = sorted(set(options) - {"grad_free", "levy_area_approximation"})
    if unknown:
        raise ValueError(
            f"{name}: {arg} {unknown} are not supported; supported: ['grad_free', 'levy_area_approximation']"
        )
    if options.get("grad_free") and method == "milstein" and noise != "additive":
        raise ValueError(
            f"{name}: {arg} grad_free=True (torchsde's derivative-free Milstein) is not available; pyode's "
            "Milstein differentiates g by autograd: drop grad_free or set it to False"
        )
    area = options.get("levy_area_approximation", "none")
    if area not in _LEVY_AREAS:
        raise ValueError(f"{name}: {arg} levy_area_approximation must be one of {list(_LEVY_AREAS)}; got {area!r}")
    if area in ("davie", "foster"):
        raise ValueError(
            f"{name}: {arg} levy_area_approximation={area!r} is not available: pyode's Brownian motions carry only "
            "the space-time Lévy area (which 'srk' reads; the Brownian motion sdeint builds has it then)"
        )


def _brownian(name: str, bm: Any, method: str) -> Any:
    if bm is None:
        return None
    if not callable(bm):
        raise TypeError(f"{name}: bm must be a Brownian motion callable as bm(s, t); got {type(bm).__name__}")
    shape = getattr(bm, "shape", None)
    if shape is not None and len(shape) != 2:
        raise ValueError(f"{name}: bm must be of shape (batch, noise channels); got {tuple(shape)}")
    if method != "srk" or isinstance(bm, AbstractBrownian):
        return bm
    if getattr(bm, "levy_area_approximation", "none") == "none":
        raise ValueError(
            f"{name}: method='srk' reads the space-time Lévy area of the Brownian motion: build bm with "
            "levy_area_approximation='space-time', or leave bm to the default"
        )
    return _TorchsdeLevyArea(bm)


class _TorchsdeLevyArea(AbstractBrownian):
    """A torchsde Brownian motion with a Lévy area, read through `return_U`: torchsde's
    U = ∫_s^t (W_r - W_s) dr = h (ΔW/2 + H), so pyode's H = U/h - ΔW/2."""

    def __init__(self, bm: Any):
        self._bm = bm
        start, end = getattr(bm, "_start", None), getattr(bm, "_end", None)
        self.t0 = None if start is None else float(start)
        self.t1 = None if end is None else float(end)
        self.shape = tuple(bm.shape)
        self.dtype = bm.dtype
        self.device = torch.device(bm.device)
        self.levy_area = True

    def __repr__(self) -> str:
        return f"_TorchsdeLevyArea({self._bm!r})"

    def _increment(self, s: float, t: float, levy_area: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not levy_area:
            return self._bm(s, t).clone(), None
        W, U = self._bm(s, t, return_U=True)
        if t == s:
            return W.clone(), torch.zeros_like(W)
        return W.clone(), U / (t - s) - 0.5 * W


def _adjoint_algorithm(
    plan: _Plan,
    adjoint_method: Any,
    adaptive: bool,
    adjoint_adaptive: Any,
    adjoint_rtol: Any,
    adjoint_atol: Any,
    adjoint_options: Any,
) -> Any:
    name = "sdeint_adjoint"
    reversible = plan.method == "reversible_heun"
    if adjoint_method is None:
        adjoint_method = (
            "adjoint_reversible_heun" if reversible else "midpoint" if plan.sde_type == "stratonovich" else "euler_heun"
        )
    _check_options(name, "adjoint_options", adjoint_options, adjoint_method, plan.noise)
    if adjoint_method == "adjoint_reversible_heun":
        if not reversible:
            raise ValueError(
                f"{name}: adjoint_method='adjoint_reversible_heun' runs method='reversible_heun' backward, but "
                f"method={plan.method!r}; use adjoint_method 'euler_heun', 'heun' or 'midpoint'"
            )
        return ReversibleAdjoint()
    if adjoint_method not in ADJOINT_METHODS:
        ito = (
            " (torchsde's Itô adjoint methods 'euler' and 'milstein' correspond to 'euler_heun', the default for Itô SDEs)"
            if adjoint_method in ("euler", "milstein")
            else ""
        )
        allowed = sorted(ADJOINT_METHODS) + (["adjoint_reversible_heun"] if reversible else [])
        raise ValueError(
            f"{name}: adjoint_method={adjoint_method!r} is not available: pyode's backward SDE has general noise in "
            f"Stratonovich form, so adjoint_method must be one of {allowed}{ito}"
        )
    if adjoint_adaptive and not adaptive:
        raise ValueError(
            f"{name}: adjoint_adaptive=True needs adaptive=True: pyode's backward solve of a fixed-step forward solve "
            "steps with the same dt"
        )
    rtol, atol = float(adjoint_rtol), float(adjoint_atol)
    return BacksolveAdjoint(solver=ADJOINT_METHODS[adjoint_method](), rtol=rtol, atol=atol)


def _rounding(dtype: torch.dtype) -> Callable[[float], float]:
    """Rounding to `dtype`, as host floats. Each sum of two such values, computed in float64 and
    then rounded, is the sum torch computes in `dtype` (float64 carries more than twice the bits)."""
    if dtype == torch.float64:
        return float
    if dtype == torch.float32:
        return lambda x: array("f", (x,))[0]
    return lambda x: torch.tensor(x, dtype=dtype).item()


def _torchsde_grid(name: str, ts: torch.Tensor, times: list[float], dt: float) -> list[float]:
    """torchsde's fixed-step times: ts[0], then t + dt computed in ts's dtype, the last one
    clipped to ts[-1] (its loop `next_t = min(curr_t + dt, ts[-1])`)."""
    rnd = _rounding(ts.dtype)
    step = rnd(dt)
    t, end = times[0], times[-1]
    grid = [t]
    while t < end:
        t_next = rnd(t + step)
        if t_next <= t:
            raise ValueError(
                f"{name}: dt={dt} is below the resolution of ts ({ts.dtype}) at t={t}: the steps would not advance; "
                "use a larger dt"
            )
        t = min(t_next, end)
        grid.append(t)
    return grid


def _linear_output(
    ts: torch.Tensor, times: list[float], grid: list[float]
) -> tuple[list[float], Callable[[torch.Tensor], torch.Tensor]]:
    """The grid points the outputs need (each output time's enclosing step, torchsde's
    (prev_t, curr_t)) and the map from the solution there to torchsde's outputs, interpolated
    linearly with torchsde's formula in ts's dtype (so that the rounding is the same)."""
    pairs: list[tuple[float | None, float]] = []
    needed = {grid[0]}
    for t in times[1:]:
        k = bisect.bisect_left(grid, t)  # torchsde steps until curr_t >= t
        end = grid[k]
        # On the grid torchsde's weights are exactly 0 and 1: the step's end state itself.
        start = None if end == t else grid[k - 1]
        pairs.append((start, end))
        needed.update(s for s in (start, end) if s is not None)
    saveat = sorted(needed)
    row = {s: i for i, s in enumerate(saveat)}

    def output(ys: torch.Tensor) -> torch.Tensor:
        out = [ys[0]]
        for i, (start, end) in enumerate(pairs, start=1):
            y1 = ys[row[end]]
            if start is None:
                out.append(y1)
                continue
            y0 = ys[row[start]]
            t0, t1, t = ts.new_tensor(start), ts.new_tensor(end), ts[i]
            out.append((t1 - t) / (t1 - t0) * y0 + (t - t0) / (t1 - t0) * y1)
        return torch.stack(out)

    return saveat, output
