"""The integration loop: the one forward loop that every sensitivity method runs.

Step control runs on host floats: each step reads its error ratio once (`.item()`, the step's
only device sync) and decides accept/reject in plain Python. States travel as one flat vector,
so a stage combination is one matrix-vector product over the stacked stages.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

import torch

from . import interpolation
from ._autocast import autocast_in_force, no_autocast, under_autocast
from .interpolation import DenseOutput
from .norms import Norm, max_norm, rms_norm
from .problem import ODEProblem, ReturnCode, Solution, SolveError, State, Stats
from .regularizers import Accumulator, LocalRegularization, Regularization, local_estimates
from .regularizers import check as check_regularization
from .solvers.base import AbstractSolver
from .solvers.reversible import AbstractReversibleSolver
from .step_control import AbstractController, PIController, initial_step

_EPS = 2.220446049250313e-16  # float64 machine epsilon: host-side time arithmetic is float64


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


class StateLayout:
    """How a state (a tensor of any shape, or a tuple of them) maps to one flat vector."""

    def __init__(self, y0: State):
        self.is_tuple = isinstance(y0, tuple)
        # A namedtuple state comes back (and reaches f) as the same namedtuple.
        self.tuple_type = type(y0) if self.is_tuple and hasattr(y0, "_fields") else None
        parts = y0 if self.is_tuple else (y0,)
        self.shapes = tuple(p.shape for p in parts)
        self.sizes = tuple(p.numel() for p in parts)
        self.numel = sum(self.sizes)
        self.dtype, self.device = parts[0].dtype, parts[0].device

    def _pack(self, parts: Sequence[torch.Tensor]) -> tuple:
        return self.tuple_type(*parts) if self.tuple_type is not None else tuple(parts)

    def flatten(self, y: State) -> torch.Tensor:
        if self.is_tuple:
            return torch.cat([p.reshape(-1) for p in y])
        return y.reshape(-1)

    def unflatten(self, flat: torch.Tensor) -> State:
        if self.is_tuple:
            return self._pack([p.view(s) for p, s in zip(flat.split(self.sizes), self.shapes)])
        return flat.view(self.shapes[0])

    def flatten_batch(self, ys: State) -> torch.Tensor:
        """(T, *shape), or a tuple of those, -> (T, n); T may be 0."""
        if self.is_tuple:
            return torch.cat([p.reshape(p.shape[0], size) for p, size in zip(ys, self.sizes)], dim=1)
        return ys.reshape(ys.shape[0], self.numel)

    def unflatten_batch(self, flat: torch.Tensor) -> State:
        """(T, n) -> (T, *shape), or a tuple of those."""
        T = flat.shape[0]
        if self.is_tuple:
            return self._pack([p.reshape(T, *s) for p, s in zip(flat.split(self.sizes, dim=1), self.shapes)])
        return flat.reshape(T, *self.shapes[0])

    def flat_norm(self, norm: Norm) -> Callable[[torch.Tensor], torch.Tensor]:
        # RMS and max give the same value on the flat vector as on the structured state.
        if norm is rms_norm or norm is max_norm:
            return norm
        return lambda flat: norm(self.unflatten(flat))

    def call(self, f: Callable, t: float, y: torch.Tensor) -> torch.Tensor:
        """f(t, y) on flat states: t as a 0-d tensor of y's dtype, the output checked and flattened."""
        return self.derivative(f(torch.scalar_tensor(t, dtype=y.dtype, device=y.device), self.unflatten(y)), t)

    def call_at(self, f: Callable, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """`call` at a time given as a tensor, which may carry a gradient."""
        return self.derivative(f(t.to(dtype=y.dtype, device=y.device), self.unflatten(y)), float(t.detach()))

    def derivative(self, out: Any, t: float) -> torch.Tensor:
        """f's output as one flat vector of the state's dtype, checked against the state.

        Checked on every call (a few attribute comparisons), because a wrong shape would otherwise
        broadcast silently into the stage buffer. Half-precision output (f under `torch.autocast`)
        is cast to the state's dtype.
        """
        if self.is_tuple:
            if not isinstance(out, (tuple, list)) or len(out) != len(self.shapes):
                raise TypeError(
                    f"f must return a tuple of {len(self.shapes)} tensors like y; at t = {t:.6g} it returned "
                    f"{type(out).__name__}" + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else "")
                )
            parts = out
        else:
            parts = (out,)
        cast = False
        for i, (o, shape) in enumerate(zip(parts, self.shapes)):
            if isinstance(o, torch.Tensor) and o.shape == shape and o.dtype == self.dtype and o.device == self.device:
                continue
            name = f"f(t, y)[{i}]" if self.is_tuple else "f(t, y)"
            if not isinstance(o, torch.Tensor):
                raise TypeError(
                    f"{name} must return a tensor shaped like y; at t = {t:.6g} it returned {type(o).__name__}"
                )
            if o.shape != shape:
                raise ValueError(
                    f"{name} returned shape {tuple(o.shape)} at t = {t:.6g}, but the state has shape {tuple(shape)}; "
                    "f must return dy/dt shaped like y on every call"
                )
            if o.device != self.device:
                raise TypeError(f"{name} returned a tensor on {o.device}, but the state is on {self.device}")
            if o.dtype in (torch.float16, torch.bfloat16):
                cast = True
                continue
            raise TypeError(
                f"{name} returned dtype {o.dtype}, but the state has dtype {self.dtype}; f must return dy/dt of "
                "y's dtype (half-precision output from f under torch.autocast is cast back)"
            )
        if cast:
            parts = [o.to(self.dtype) for o in parts]
        if self.is_tuple:
            return torch.cat([p.reshape(-1) for p in parts])
        return parts[0].reshape(-1)


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


def _span(prob: ODEProblem) -> tuple[float, float]:
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


def flow_shift(f: Callable, t: float | torch.Tensor, y: torch.Tensor, delta: torch.Tensor, k=None) -> torch.Tensor:
    """y carried along the flow of f for a time δ that is zero in value but carries a time's
    gradient (δ = s - s.detach() for a save time s, say): one midpoint step,

        y + δ·f(t + δ/2, y + δ/2·k),   k = f(t, y) (given, or evaluated here).

    Its value is y. Its first and second derivatives in δ are the exact flow's, f and
    ∂f/∂t + ∂f/∂y·f, so first and second derivatives with respect to times come out right.
    `f(t, y)` takes t as a tensor (`StateLayout.call_at`); t may itself be a tensor.
    """
    half = delta / 2
    if k is None:
        k = f(t + 0 * delta, y)
    step = delta.to(y.dtype)
    return y + step * f(t + half, y + (step / 2) * k)


def _positive(value: Any, name: str, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number; got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'non-negative' if allow_zero else 'positive'} and finite; got {value}")
    return value


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
) -> SolveOptions:
    """Validate `solve`'s keywords against the problem and the solver."""
    if not isinstance(prob, ODEProblem):
        raise TypeError(f"prob must be a pyode.ODEProblem; got {type(prob).__name__}")
    if not isinstance(solver, AbstractSolver):
        raise TypeError(f"solver must be a pyode solver such as pyode.Tsit5(); got {solver!r}")
    t0, t1 = _span(prob)
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
        dtmin = 16 * _EPS * max(abs(t0), abs(t1), span, 1e-300)
    else:
        dtmin = _positive(dtmin, "dtmin", allow_zero=True)
    saves, saves_tensor = (None, None) if saveat is None else _times(saveat, "saveat", t0, t1)
    stops = (
        ()
        if tstops is None
        else _times(
            sorted(
                set(float(s) for s in (tstops.tolist() if isinstance(tstops, torch.Tensor) else tstops)),
                reverse=t1 < t0,
            ),
            "tstops",
            t0,
            t1,
        )[0]
    )
    if isinstance(solver, AbstractReversibleSolver):
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
    )


StepHook = Callable[[float, float, torch.Tensor, torch.Tensor, torch.Tensor], None]


def integrate(
    prob: ODEProblem, solver: AbstractSolver, opts: SolveOptions, throw: bool = True, on_step: StepHook | None = None
) -> Solution:
    """Run the forward loop; autograd records it unless the caller disabled grad.

    `on_step(t, h, s_n, s_n+1, r)` is called after every accepted step with the stepper's state
    before and after it (the flat user state for Runge–Kutta methods) and the step's dense
    coefficients r (see `interpolation.py`; None for steppers without an interpolant): the step
    record that the quadrature and reversible adjoints read. The regularizers read the same
    record inside the loop.
    """
    layout = StateLayout(prob.y0)
    y0 = layout.flatten(prob.y0)
    dtype, device = y0.dtype, y0.device
    t0, t1 = _span(prob)
    direction = 1.0 if t1 >= t0 else -1.0
    stats = Stats()
    user_f = prob.f

    def f(t: float, y: torch.Tensor) -> torch.Tensor:
        stats.nfe += 1
        return layout.call(user_f, t, y)

    def f_at(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # for save times that require grad
        stats.nfe += 1
        return layout.call_at(user_f, t, y)

    norm = layout.flat_norm(opts.internalnorm)
    stepper = solver.stepper(f, dtype, device)
    controller = opts.controller
    control = controller.init(solver.error_order) if opts.adaptive else None

    k1 = f(t0, y0)
    output = stepper.output

    out_t: list[float] = []
    out_y: list[torch.Tensor] = []
    saves = opts.saveat
    save_i = 0
    if saves is None:
        out_t.append(t0)
        out_y.append(y0.unsqueeze(0))
    else:
        while save_i < len(saves) and saves[save_i] == t0:
            out_t.append(t0)
            if opts.saveat_tensor is not None:
                # The value is y0; its derivatives with respect to its save time are the flow's.
                out_y.append(flow_shift(f_at, t0, y0, opts.saveat_tensor[save_i] - t0, k=k1).unsqueeze(0))
            else:
                out_y.append(y0.unsqueeze(0))
            save_i += 1
    dense = DenseOutput(t0, t1, y0, layout.unflatten_batch, layout.unflatten, opts.time_dtype) if opts.dense else None

    stops = [s for s in opts.tstops if direction * (s - t0) > 0 and s != t1] + [t1]
    stop_i = 0
    retcode = ReturnCode.Success
    t, y = t0, stepper.init(t0, y0, k1)

    if t0 == t1:
        h_abs = 0.0
    elif opts.adaptive and opts.dt is None:
        h_abs = initial_step(f, t0, y0, k1, direction, solver.order, opts.rtol, opts.atol, norm)
        if not math.isfinite(h_abs):
            retcode = ReturnCode.Unstable
        h_abs = min(h_abs, opts.dtmax)
    else:
        h_abs = min(opts.dt, opts.dtmax)
    grad_enabled = torch.is_grad_enabled()
    regularizer = Accumulator(opts.regularize, solver) if opts.regularize is not None else None
    # The regularizers differentiate the error estimate; otherwise it stays off the graph.
    ratio_on_graph = regularizer is not None and opts.regularize.error is not None
    if not stepper.uses_k1:
        k1 = None

    while retcode is ReturnCode.Success and direction * (t1 - t) > 0:
        if stats.naccept + stats.nreject >= opts.max_steps:
            retcode = ReturnCode.MaxIters
            break
        stop = stops[stop_i]
        remaining = direction * (stop - t)
        # Stretch a step by up to 1% to land on a stop rather than leave a sliver (Hairer's
        # DOPRI5); a fixed step lands when it is within rounding of the stop.
        reach = min(1.01 * h_abs, opts.dtmax) if opts.adaptive else h_abs + 64 * _EPS * max(abs(t), abs(stop))
        if reach >= remaining:
            h, t_new, on_stop = direction * remaining, stop, True
        else:
            h, t_new, on_stop = direction * h_abs, t + direction * h_abs, False
        if t_new == t:
            retcode = ReturnCode.DtLessThanMin
            break

        step = stepper.step(t, y, h, k1)

        ratio_tensor = stepper.error_ratio(step, opts.rtol, opts.atol, norm) if ratio_on_graph else None
        if opts.adaptive:
            if ratio_tensor is not None:
                ratio = ratio_tensor.item()
            elif grad_enabled:
                # The controller is not differentiated: keep the error estimate off the graph.
                with torch.no_grad():
                    ratio = stepper.error_ratio(step, opts.rtol, opts.atol, norm).item()
            else:
                ratio = stepper.error_ratio(step, opts.rtol, opts.atol, norm).item()
            accepted, h_next, control = controller.adapt(ratio, abs(h), control)
            if not accepted:
                stats.nreject += 1
                h_abs = h_next
                if not h_abs >= opts.dtmin:  # also NaN
                    retcode = ReturnCode.DtLessThanMin if math.isfinite(ratio) else ReturnCode.Unstable
                continue
            h_abs = min(h_next, opts.dtmax)
        if regularizer is not None:
            regularizer.accept(step, ratio_tensor)
        stats.naccept += 1

        y_new = step.y1
        if on_stop:
            stop_i += 1
        at_end = on_stop and t_new == t1
        next_k1 = step.next_k1
        if next_k1 is None and not at_end and stepper.uses_k1:
            next_k1 = f(t_new, y_new)

        # Save points inside this step, and dense output.
        j0 = save_i
        if saves is not None:
            while save_i < len(saves) and direction * (saves[save_i] - t_new) <= 0:
                save_i += 1
        interior = (
            saves is not None
            and save_i > j0
            and not (save_i - j0 == 1 and saves[j0] == t_new and opts.saveat_tensor is None)
        )
        r = None
        if stepper.interpolates and (interior or dense is not None or on_step is not None):
            f1 = next_k1
            if f1 is None and stepper.dense_needs_f1:
                f1 = f(t_new, y_new)
            r = stepper.dense(step, f1)
            if dense is not None:
                dense.append(t, h, y, r)
        if on_step is not None:
            on_step(t, h, y, y_new, r)
        if saves is None:
            out_t.append(t_new)
            out_y.append(output(y_new).unsqueeze(0))
        elif save_i > j0:
            saved_before = len(out_y)
            out_t.extend(saves[j0:save_i])
            if not stepper.interpolates:
                # Such steppers land on every save point: exactly one, at the step's end.
                assert save_i - j0 == 1 and saves[j0] == t_new, "save points are steps' ends"
                y_save = output(y_new)
                if opts.saveat_tensor is not None and grad_enabled:
                    # The value is y(t_k); its derivatives with respect to its save time are the flow's.
                    y_save = flow_shift(f_at, t_new, y_save, opts.saveat_tensor[j0] - t_new)
                out_y.append(y_save.unsqueeze(0))
            elif opts.saveat_tensor is not None:
                theta = ((opts.saveat_tensor[j0:save_i] - t) / h).to(dtype)
                out_y.append(interpolation.evaluate(y, r, theta))
            else:
                ends_here = saves[save_i - 1] == t_new
                inside = saves[j0 : save_i - 1] if ends_here else saves[j0:save_i]
                if inside:
                    out_y.append(interpolation.evaluate_at(y, r, [(s - t) / h for s in inside]))
                if ends_here:
                    out_y.append(output(y_new).unsqueeze(0))
            if not opts.adaptive and not bool(torch.isfinite(out_y[-1]).all()):
                # Fixed steps have no error test to catch a blow-up, so save points are checked.
                retcode = ReturnCode.Unstable
                del out_t[j0 - save_i :]
                del out_y[saved_before:]
                break
        t, y, k1 = t_new, y_new, next_k1

    if retcode is ReturnCode.Success and saves is not None:
        assert save_i == len(saves), "every save point inside the span is reached"

    if out_y:
        ys = torch.cat(out_y)
    else:
        ys = y0.unsqueeze(0)[:0]  # still on the graph of y0, so backward gives zeros
    if retcode is not ReturnCode.Unstable:
        # A state that overflowed without failing an error test (fixed steps, or an estimate
        # that stayed finite) is caught here, whatever else ended the solve: one check, one
        # sync, for the whole solve.
        finite = torch.isfinite(ys).all(dim=1)
        if not bool(finite.all() & torch.isfinite(y).all()):
            retcode = ReturnCode.Unstable
            kept = int(finite.long().cumprod(0).sum())  # the save points before the first bad one
            ys, out_t = ys[:kept], out_t[:kept]
            t = out_t[-1] if out_t else t0
            if dense is not None:
                dense.truncate(t)
    if opts.saveat_tensor is not None:
        ts = opts.saveat_tensor[: len(out_t)]
    else:
        ts = torch.tensor(out_t, dtype=opts.time_dtype, device=device)
    sol = Solution(
        t=ts,
        y=layout.unflatten_batch(ys),
        stats=stats,
        retcode=retcode,
        prob=prob,
        solver=solver,
        dense=dense,
        dt_next=h_abs,
    )
    if regularizer is not None:
        sol.error_estimate, sol.stiffness_estimate = regularizer.results(y0)
    if throw and not retcode.successful:
        raise SolveError(retcode, t, sol)
    return sol


def solve(
    prob: ODEProblem,
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
    sensealg: Any = None,
    throw: bool = True,
    backend: str = "torch",
) -> Solution:
    """Integrate `prob.f` over `prob.tspan` starting at `prob.y0`.

    Args:
        prob: the `ODEProblem`.
        solver: the time-stepping method, e.g. `Tsit5()`.
        saveat: times (1-D, strictly monotone in the direction of integration, inside tspan) at
            which to return the solution, reached by dense interpolation rather than by shortening
            steps. By default every step is saved.
        dt: with an adaptive solver, the first step (chosen by Hairer's heuristic when omitted);
            with `adaptive=False` or a solver without an error estimate, the fixed step.
        adaptive: step adaptively (the default when the solver has an error estimate).
        rtol, atol: the error test is internalnorm(err / (atol + rtol·max(|y_n|, |y_{n+1}|))) ≤ 1.
        internalnorm: a norm on states (`pyode.rms_norm` by default, `pyode.max_norm`,
            `pyode.mixed_norm`, a seminorm from `pyode.make_seminorm`, or any homogeneous callable).
        controller: the step-size controller: `PIController()` (the default), `IController()`
            (torchdiffeq's), `PIDController(pcoeff, icoeff, dcoeff)`, `ConstantStepSize()` (fixed
            steps of `dt`), or any subclass of `AbstractController`.
        tstops: times the steps must land on exactly (discontinuities of f).
        dtmin: a rejected step below this size ends the solve with `DtLessThanMin`.
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
        sensealg: how gradients flow back through the solve; `DirectAdjoint()` by default
            (`ReversibleAdjoint()` for reversible solvers).
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
    from .sensitivity import AbstractSensitivityAlgorithm, DirectAdjoint, ReversibleAdjoint

    if backend not in ("torch", "julia"):
        raise ValueError(f'backend must be "torch" or "julia"; got {backend!r}')
    local = None
    if isinstance(regularize, LocalRegularization):
        local, regularize = regularize, False
    if sensealg is None:
        sensealg = ReversibleAdjoint() if isinstance(solver, AbstractReversibleSolver) else DirectAdjoint()
    elif not isinstance(sensealg, AbstractSensitivityAlgorithm):
        raise TypeError(
            f"sensealg must be a pyode sensitivity algorithm such as pyode.DirectAdjoint(); got {sensealg!r}"
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
    )

    user_prob = prob
    device = StateLayout(prob.y0).device
    autocast = autocast_in_force(device) if backend == "torch" else None
    if autocast is not None:
        # Mixed precision: f runs under the caller's autocast, the solver's own arithmetic (stage
        # combinations, error norms, step control, the local regularizer's step) does not.
        prob = dataclasses.replace(prob, f=under_autocast(prob.f, *autocast))

    def run(options: SolveOptions) -> Solution:
        if backend == "julia":
            from .backends.julia._solve import solve_julia

            # What the user set explicitly: the Julia engine keeps SciML's defaults for the rest.
            given = dict(dtmin=dtmin, dtmax=dtmax, internalnorm=internalnorm, controller=controller, dense=dense)
            return solve_julia(prob, solver, options, sensealg, throw=throw, given=given, regularize=regularize)
        return sensealg.solve(prob, solver, options, throw=throw)

    with no_autocast(device):
        sol = run(opts) if local is None else _locally_regularized(prob, opts, run, local, backend)
    sol.prob = user_prob
    return sol


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
    t0, t1 = _span(prob)
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


__all__ = ["SolveError", "SolveOptions", "StateLayout", "integrate", "make_options", "solve"]
