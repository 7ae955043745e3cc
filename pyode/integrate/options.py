"""What `solve` was asked for, validated against the problem and the solver, in host floats."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Union

import torch

from ..norms import Norm, rms_norm
from ..problem import ODEProblem
from ..regularizers import Regularization
from ..regularizers import check as check_regularization
from ..solvers.base import AbstractSolver
from ..solvers.reversible import AbstractReversibleSolver
from ..solvers.sde import AbstractSDESolver
from ..step_control import AbstractController, PIController
from .compiled import compile_options
from .events import check_events
from .progress import check_progress
from .record import Observer
from .state import StateLayout

EPS = 2.220446049250313e-16  # float64 machine epsilon: host-side time arithmetic is float64


Tolerance = Union[float, torch.Tensor]  # a number, or one per element of the flat state (n,)


@dataclass(frozen=True)
class SolveOptions:
    """Everything `solve` was asked for, validated and in host floats."""

    saveat: tuple[float, ...] | None
    saveat_tensor: torch.Tensor | None  # the save times when they require grad
    dt: float | None
    adaptive: bool
    rtol: Tolerance
    atol: Tolerance
    internalnorm: Norm
    controller: AbstractController
    tstops: tuple[float, ...]
    dtmin: float
    dtmax: float
    max_steps: int
    dense: bool
    time_dtype: torch.dtype
    regularize: Regularization | None = None
    events: tuple = ()  # of integrate.events.Event
    observers: tuple = ()  # of integrate.record.Observer
    progress: bool = False
    discontinuities: frozenset[float] = frozenset()  # tstops where f jumps: torchdiffeq's perturb there
    batch_axis: int | None = None  # 0: each element of dim 0 steps on its own (`integrate/per_sample.py`)
    saveat_batch: torch.Tensor | None = None  # per-element save times (B, T), with batch_axis=0
    compile: tuple | None = None  # torch.compile's keywords for the compiled step; None: eager


def _times(
    values: Any, name: str, t0: float, t1: float, strict_inside: bool = False
) -> tuple[tuple[float, ...], torch.Tensor | None]:
    """Validate a sequence of times: 1-D, finite, strictly monotone in the direction of t0 → t1,
    and within the span. Returns them as floats, plus the tensor when it requires grad."""
    tensor = values if isinstance(values, torch.Tensor) else None
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{name} must be a 1-D tensor or a sequence of numbers; got the string {values!r}")
    if tensor is not None:
        if tensor.dim() != 1:
            raise ValueError(f"{name} must be a 1-D tensor of times; got shape {tuple(tensor.shape)}")
        floats = tuple(float(v) for v in tensor.detach().cpu().tolist())
    else:
        try:
            floats = tuple(float(v) for v in values)
        except TypeError:
            raise TypeError(
                f"{name} must be a 1-D tensor or a sequence of numbers; got {type(values).__name__}"
            ) from None
    direction = 1.0 if t1 >= t0 else -1.0
    word = "increasing" if direction > 0 else "decreasing (t1 < t0 integrates backward)"
    for i, v in enumerate(floats):
        if not math.isfinite(v):
            raise ValueError(f"{name}[{i}] = {v} is not finite")
        if i and direction * (v - floats[i - 1]) <= 0:
            kind = "duplicated" if v == floats[i - 1] else "out of order"
            raise ValueError(f"{name} must be strictly {word}; {name}[{i}] = {v} is {kind} after {floats[i - 1]}")
        lo, hi = min(t0, t1), max(t0, t1)
        if not lo <= v <= hi:
            raise ValueError(f"{name}[{i}] = {v} lies outside tspan ({t0}, {t1})")
    return floats, (tensor if tensor is not None and tensor.requires_grad else None)


def step_floor(opts: SolveOptions, t: float) -> float:
    """The smallest step a rejection may propose at time t: `dtmin`, or 16 ulps of t if larger."""
    return max(opts.dtmin, 16 * EPS * abs(t))


def time_span(prob: ODEProblem) -> tuple[float, float]:
    """(t0, t1) as host floats."""
    return tuple(float(t.detach()) if isinstance(t, torch.Tensor) else float(t) for t in prob.tspan)


def _tolerance(value: Any, name: str, layout: StateLayout) -> Tolerance:
    """A tolerance as a float, or as a flat (n,) tensor on the state's device and dtype.

    Accepts what torchdiffeq accepts: a number, a tensor broadcastable to the state (or already
    flat, (n,)), or for tuple states a tuple with one number or tensor per component.
    """
    if not isinstance(value, (torch.Tensor, numbers.Real, str, tuple, list)) and hasattr(value, "__array__"):
        value = torch.as_tensor(value)  # a numpy array
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, torch.Tensor) or (isinstance(value, (tuple, list)) and layout.is_tuple):
        if isinstance(value, torch.Tensor) and value.numel() == layout.numel and value.dim() == 1:
            flat = value.detach().to(dtype=layout.dtype, device=layout.device)
        else:
            if isinstance(value, torch.Tensor):
                parts = (value,) * len(layout.shapes) if layout.is_tuple else (value,)
            elif len(value) != len(layout.shapes):
                raise ValueError(
                    f"{name} has {len(value)} entries, but the state has {len(layout.shapes)} components; "
                    "give one tolerance per component"
                )
            else:
                parts = value
            pieces = []
            for part, shape in zip(parts, layout.shapes):
                part = torch.as_tensor(part).detach().to(dtype=layout.dtype, device=layout.device)
                try:
                    pieces.append(part.broadcast_to(shape).reshape(-1))
                except RuntimeError:
                    raise ValueError(
                        f"{name} of shape {tuple(part.shape)} does not broadcast to the state's shape {tuple(shape)}"
                    ) from None
            flat = torch.cat(pieces)
        if not bool((torch.isfinite(flat) & (flat >= 0)).all()):
            raise ValueError(f"{name} must be non-negative and finite everywhere")
        return flat.contiguous()
    if isinstance(value, (tuple, list)):
        raise TypeError(f"{name} as a tuple needs a tuple state (one tolerance per component); give a number")
    return _positive(value, name, allow_zero=True)


def _stop_times(values: Any, name: str, t0: float, t1: float) -> tuple[float, ...]:
    """Times the steps must land on, in any order and with repeats: sorted in the direction of
    integration, deduplicated, and checked to lie in the span."""
    if values is None:
        return ()
    floats = {float(s) for s in (values.tolist() if isinstance(values, torch.Tensor) else values)}
    return _times(sorted(floats, reverse=t1 < t0), name, t0, t1)[0]


def _positive(value: Any, name: str, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number; got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'non-negative' if allow_zero else 'positive'} and finite; got {value}")
    return value


def _check_batch_axis(batch_axis: Any, y0: Any, saveat: Any, t0: float, t1: float) -> torch.Tensor | None:
    """Validate `batch_axis` against the state. Returns per-element save times (B, T) when
    `saveat` is a 2-D tensor (each row checked as `_times` checks one), else None."""
    if batch_axis is None:
        if isinstance(saveat, torch.Tensor) and saveat.dim() == 2:
            raise ValueError(
                f"saveat must be a 1-D tensor of times; got shape {tuple(saveat.shape)} (one row of save times "
                "per element, (B, T), needs batch_axis=0)"
            )
        return None
    if isinstance(batch_axis, bool) or not isinstance(batch_axis, int) or batch_axis != 0:
        raise ValueError(
            f"batch_axis must be 0 (the batch on the leading dimension of y0) or None; got {batch_axis!r}. "
            "Move the batch to dim 0 first, e.g. y0.movedim(axis, 0)"
        )
    if isinstance(y0, tuple):
        raise ValueError("batch_axis=0 needs y0 to be one tensor of shape (B, ...); got a tuple state")
    if y0.dim() < 1 or y0.shape[0] == 0 or y0[0].numel() == 0:
        raise ValueError(
            f"batch_axis=0 needs y0 of shape (B, ...) with B ≥ 1 and non-empty elements; got {tuple(y0.shape)}"
        )
    if not (isinstance(saveat, torch.Tensor) and saveat.dim() == 2):
        return None
    if saveat.shape[0] != y0.shape[0] or saveat.shape[1] == 0:
        raise ValueError(
            f"saveat of shape {tuple(saveat.shape)}: per-element save times need shape (B, T) with B = "
            f"{y0.shape[0]} (y0's batch) and T ≥ 1"
        )
    if not saveat.is_floating_point():
        raise TypeError(f"saveat must be a real floating-point tensor; got dtype {saveat.dtype}")
    values = saveat.detach().to(device="cpu", dtype=torch.float64)
    direction = 1.0 if t1 >= t0 else -1.0
    bad = ~torch.isfinite(values) | (values < min(t0, t1)) | (values > max(t0, t1))
    bad[:, 1:] |= direction * values.diff(dim=1) <= 0
    if bool(bad.any()):
        i, k = (int(x) for x in bad.nonzero()[0])
        word = "increasing" if direction > 0 else "decreasing (t1 < t0 integrates backward)"
        raise ValueError(
            f"saveat[{i}, {k}] = {float(values[i, k])}: each row of save times must be finite, inside tspan "
            f"({t0}, {t1}) and strictly {word}"
        )
    return saveat


def make_options(
    prob: ODEProblem,
    solver: AbstractSolver,
    *,
    saveat: Any = None,
    dt: float | None = None,
    adaptive: bool | None = None,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    internalnorm: Norm | None = None,
    controller: AbstractController | None = None,
    tstops: Any = None,
    dtmin: float | None = None,
    dtmax: float | None = None,
    max_steps: int = 100_000,
    dense: bool | None = None,
    time_dtype: torch.dtype | None = None,
    regularize: bool | Regularization = False,
    events: Any = None,
    observers: Any = (),
    progress: bool = False,
    d_discontinuities: Any = None,
    batch_axis: int | None = None,
    compile: Any = False,
) -> SolveOptions:
    """Validate `solve`'s keywords against the problem and the solver."""
    if not isinstance(prob, ODEProblem):
        raise TypeError(f"prob must be a pyode.ODEProblem; got {type(prob).__name__}")
    if not isinstance(solver, AbstractSolver):
        raise TypeError(f"solver must be a pyode solver such as pyode.Tsit5(); got {solver!r}")
    t0, t1 = time_span(prob)
    layout = StateLayout(prob.y0)
    rtol = _tolerance(rtol, "rtol", layout)
    atol = _tolerance(atol, "atol", layout)
    if not bool((torch.as_tensor(rtol) + torch.as_tensor(atol) > 0).all()):
        raise ValueError("rtol and atol are both 0 (for some component); at least one must be positive")
    if controller is None:
        controller = PIController()
    elif not isinstance(controller, AbstractController):
        raise TypeError(
            "controller must be a pyode step-size controller (PIController, IController, PIDController, "
            f"ConstantStepSize, or a subclass of pyode.AbstractController); got {type(controller).__name__}"
        )
    if not controller.adaptive:
        if adaptive:
            raise ValueError(f"adaptive=True contradicts controller={controller!r}, which steps with a fixed dt")
        adaptive = False
    if adaptive is None:
        adaptive = solver.adaptive
    elif adaptive and not solver.adaptive:
        raise ValueError(f"{solver!r} has no error estimate, so it cannot step adaptively; pass dt= for fixed steps")
    if dt is not None:
        dt = _positive(dt, "dt")
    elif not adaptive:
        why = (
            f"controller={controller!r}"
            if not controller.adaptive
            else "adaptive=False"
            if solver.adaptive
            else f"{solver!r} has no error estimate and"
        )
        raise ValueError(f"{why} steps with a fixed step size: pass dt=")
    if internalnorm is None:
        internalnorm = rms_norm
    elif not callable(internalnorm):
        raise TypeError(f"internalnorm must be callable on a state; got {type(internalnorm).__name__}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, numbers.Integral) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive integer; got {max_steps!r}")
    max_steps = int(max_steps)
    span = abs(t1 - t0)
    dtmax = span if dtmax is None else _positive(dtmax, "dtmax")
    if dtmin is None:
        # Only an absolute floor far below any useful step: the loop also ends a solve whose
        # rejected step falls below 16 ulps of the current time (`step_floor`), which is what a
        # step can still resolve there. (A floor of 16 ulps of the span's end, as before, stopped
        # Robertson's problem on [0, 1e11] in its initial layer, whose steps are 1e-4.)
        dtmin = 16 * EPS * EPS * max(abs(t0), abs(t1), span, 1e-300)
    else:
        dtmin = _positive(dtmin, "dtmin", allow_zero=True)
    saves_batch = _check_batch_axis(batch_axis, prob.y0, saveat, t0, t1)
    if saves_batch is not None:
        saves, saves_tensor = None, None
    else:
        saves, saves_tensor = (None, None) if saveat is None else _times(saveat, "saveat", t0, t1)
    stops = _stop_times(tstops, "tstops", t0, t1)
    jumps = _stop_times(d_discontinuities, "d_discontinuities", t0, t1)
    if jumps and isinstance(solver, AbstractReversibleSolver):
        raise ValueError(
            f"d_discontinuities (also the knots of a CDE's linear or rectilinear path): {solver!r} cannot restart "
            "its step at a discontinuity; use a Runge–Kutta solver such as Tsit5(), or a C¹ path "
            "(pyode.cde.hermite_cubic_backward)"
        )
    if jumps:
        stops = tuple(sorted(set(stops) | set(jumps), reverse=t1 < t0))
    events = check_events(events)
    if (
        isinstance(observers, Observer)
        or not isinstance(observers, (list, tuple))
        or not all(isinstance(o, Observer) for o in observers)
    ):
        raise TypeError(f"observers must be a list of pyode.Observer instances; got {observers!r}")
    check_progress(progress)
    if events and isinstance(solver, AbstractReversibleSolver):
        raise ValueError(
            f"events are located on dense output, which {solver!r} does not have; use a Runge–Kutta solver such "
            "as Tsit5() with events"
        )
    if isinstance(solver, (AbstractReversibleSolver, AbstractSDESolver)):
        # No dense interpolant: the steps land on the save points instead.
        if dense:
            raise ValueError(f"{solver!r} has no dense output, so dense=True is not available; use saveat=")
        dense = False
        if saves:
            stops = tuple(sorted(set(stops) | set(saves), reverse=t1 < t0))
    if dense is None:
        dense = saveat is None
    if time_dtype is None:
        time_dtype = torch.float32 if layout.device.type == "mps" else torch.float64
    elif time_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"time_dtype must be torch.float32 or torch.float64; got {time_dtype}")
    if regularize is True:
        regularize = Regularization()
    elif regularize is False or regularize is None:
        regularize = None
    elif not isinstance(regularize, Regularization):
        raise TypeError(
            f"regularize must be True, False, a pyode.Regularization or a pyode.LocalRegularization; got {regularize!r}"
        )
    if regularize is not None:
        check_regularization(regularize, solver)
    return SolveOptions(
        saveat=saves,
        saveat_tensor=saves_tensor,
        dt=dt,
        adaptive=bool(adaptive),
        rtol=rtol,
        atol=atol,
        internalnorm=internalnorm,
        controller=controller,
        tstops=stops,
        dtmin=dtmin,
        dtmax=dtmax,
        max_steps=max_steps,
        dense=bool(dense),
        time_dtype=time_dtype,
        regularize=regularize,
        events=events,
        observers=tuple(observers),
        progress=progress,
        discontinuities=frozenset(jumps),
        batch_axis=batch_axis,
        saveat_batch=saves_batch,
        compile=compile_options(compile),
    )
