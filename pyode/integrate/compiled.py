"""The compiled step: `solve(..., compile=True)`.

An explicit Runge–Kutta step — every stage with its call of f, the stage combinations, the error
ratio and the dense coefficients — traced once by `torch.compile(fullgraph=True)` and then run as
one graph per step (one autograd node when gradients are recorded, whose backward is compiled
too). Time and step size enter as one tensor, so steps of any size reuse the same graph.

Compiled steps are cached per (solver, f's code, state layout, dtype, device, norm, options):
a training loop that solves the same problem every iteration compiles once. Each cache entry
gets its own copy of the step's code object, so that torch's per-code limit on recompilations
is never shared between problems; f and the norm are arguments of the step, so problems that
share an entry are told apart by dynamo's guards. Where compilation fails (no C++ compiler for
the CPU backend, an f that cannot be traced in one graph, such as one calling
`torch.autograd.grad`), the solve warns once per cache entry and steps eagerly; it never fails
because of `compile=True`. What does fail is what fails eagerly too (an error raised by f, a
wrong shape from f, which propagate unchanged) and a `compile=` that torch.compile would refuse.
"""

from __future__ import annotations

import itertools
import threading
import types
import warnings
from collections import OrderedDict
from typing import Any, Callable, Sequence

import torch

from ..problem import Stats
from ..solvers.base import StepResult
from ..solvers.runge_kutta import AbstractExplicitRK, RKStepper
from .state import StateLayout

CompileOptions = tuple[tuple[str, Any], ...]  # torch.compile's keywords, as sorted items

_CACHE_SIZE = 64
_cache: OrderedDict[tuple, _Entry] = OrderedDict()
_names = itertools.count()
# `trace_autograd_ops` is one setting for all threads: a step that sets it holds this lock, so
# that another thread's step cannot reset it mid-call (which made its entry fail to compile).
_autograd_ops_lock = threading.RLock()


class _Entry:
    """One compiled step, or the reason it could not be compiled. `autograd_ops`: the step
    calls `torch.autograd.grad` (an adjoint's vector field), which torch traces only with
    `torch._dynamo.config.trace_autograd_ops` set, on every call (the setting is guarded)."""

    def __init__(self, fn: Callable | None, failure: str | None = None):
        self.fn, self.failure = fn, failure
        self.autograd_ops = False

    def __call__(self, *args: Any) -> Any:
        if self.autograd_ops:
            return self._with_autograd_ops(*args)
        try:
            return self.fn(*args)
        except torch._dynamo.exc.Unsupported as error:
            # (Decided by this call's error, not by the flag, which another thread may have set.)
            if "trace_autograd_ops" not in str(error):
                raise
        self.autograd_ops = True
        return self._with_autograd_ops(*args)

    def _with_autograd_ops(self, *args: Any) -> Any:
        config = torch._dynamo.config
        with _autograd_ops_lock:
            before = config.trace_autograd_ops
            config.trace_autograd_ops = True
            try:
                return self.fn(*args)
            finally:
                config.trace_autograd_ops = before


def compile_options(value: Any) -> CompileOptions | None:
    """`solve`'s `compile=` as torch.compile keywords (None: eager)."""
    if value is False or value is None:
        return None
    if value is True:
        return ()
    if isinstance(value, tuple) and all(isinstance(kv, tuple) and len(kv) == 2 for kv in value):
        value = dict(value)  # normalised already (options carried to a backward solve)
    if not isinstance(value, dict):
        raise TypeError(f"compile must be True, False or a dict of torch.compile options; got {value!r}")
    allowed = {"backend", "mode", "options", "dynamic"}
    unknown = sorted(set(value) - allowed, key=repr)
    if unknown:
        raise ValueError(f"compile: unknown torch.compile option(s) {unknown}; allowed: {sorted(allowed)}")
    _check_values(value)
    return tuple(sorted(value.items(), key=lambda kv: kv[0]))


def _check_values(value: dict) -> None:
    """torch.compile's own rules for its keywords, checked before the solve: a typo fails here by
    name, rather than as a failure to compile that warns and steps eagerly."""
    backend, mode, options, dynamic = (value.get(k) for k in ("backend", "mode", "options", "dynamic"))
    if isinstance(backend, str):
        known = torch._dynamo.list_backends(exclude_tags=())
        if backend not in known:
            raise ValueError(f"compile: unknown backend {backend!r}; torch.compile has {known}")
    elif backend is not None and not callable(backend):
        raise TypeError(f"compile: backend must be a name such as 'inductor' or a callable; got {backend!r}")
    if mode is not None and options is not None:
        raise ValueError("compile: give mode or options, not both (torch.compile takes one of them)")
    if mode is not None and mode not in torch._inductor.list_mode_options():
        raise ValueError(
            f"compile: unknown mode {mode!r}; torch.compile has {sorted(torch._inductor.list_mode_options())}"
        )
    if options is not None:
        if not isinstance(options, dict):
            raise TypeError(f"compile: options must be a dict of inductor options; got {options!r}")
        if backend in (None, "inductor"):
            # (guard_filter_fn and use_aoti are torch.compile's, read from options before inductor's)
            unknown = sorted(set(options) - set(torch._inductor.list_options()) - {"guard_filter_fn", "use_aoti"})
            if unknown:
                raise ValueError(f"compile: unknown inductor option(s) {unknown}; see torch._inductor.list_options()")
    if dynamic is not None and not isinstance(dynamic, bool):
        raise TypeError(f"compile: dynamic must be True, False or None; got {dynamic!r}")


def _combine(ks: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Σ_j w_j k_j over the nonzero weights, unrolled (the compiler fuses it into one kernel)."""
    out = None
    for k, w in zip(ks, weights):
        if w:
            out = k * w if out is None else out + k * w
    return out if out is not None else torch.zeros_like(ks[0])


def _step_function(
    solver: AbstractExplicitRK, dense_weights: torch.Tensor | None, with_ratio: bool, with_stage_inputs: bool
) -> Callable:
    """The step as one traceable function of (f, norm, layout, [t, h], y, k1, rtol, atol).

    What belongs to the problem is an argument, never a constant of the function: the cache
    shares one function between problems with equal keys, and dynamo guards on what an argument
    reads (a module's mode, a bound method's instance, a default argument) where a closure would
    run the first problem's norm for all of them.
    """
    tab = solver.tableau
    s = tab.stages
    a = [[float(x) for x in row] for row in tab.a]
    c = [float(x) for x in tab.c]
    b = [float(x) for x in tab.b]
    errors = [[float(x) for x in e] for e in tab.b_error]
    fsal = tab.fsal

    def compiled_rk_step(f, norm, layout, th, y, k1, rtol, atol):
        t, h = th[0], th[1]
        hy = h.to(y.dtype)
        ks = [k1]
        y_prev = yi = y
        for i in range(1, s):
            y_prev = yi
            yi = y + hy * _combine(ks, a[i])
            out = f((t + c[i] * h).to(y.dtype), layout.unflatten(yi))
            ks.append(layout.derivative(out, float("nan")))
        y1 = yi if fsal else y + hy * _combine(ks, b)
        stages = torch.stack(ks)
        ratio = None
        if with_ratio:
            scale = torch.maximum(y.abs(), y1.abs()) * rtol + atol
            norms = [norm(_combine(ks, e) / scale) for e in errors]
            combined = solver.combine_error_norms(norms) if len(norms) > 1 else norms[0]
            ratio = (combined * hy.abs()).detach()
        r = torch.mm(dense_weights, stages) * hy if dense_weights is not None else None
        return y1, stages, ratio, r, ((y_prev, yi) if with_stage_inputs else None)

    # A fresh code object per cache entry: torch's recompilation limit counts per code object.
    code = compiled_rk_step.__code__
    code = code.replace(co_name=f"{code.co_name}_{next(_names)}")
    return types.FunctionType(code, compiled_rk_step.__globals__, code.co_name, None, compiled_rk_step.__closure__)


def _f_code(f: Callable) -> Any:
    """What identifies f's computation for the cache: a module's class and its parameters'
    shapes (networks of one class in other sizes, as in a sweep, each get their own entry rather
    than use up one entry's recompilations), a function's code."""
    own = getattr(f, "compile_key", None)
    if callable(own):  # a wrapper of the user's f (a CDE's f·dX/dt) names what it wraps
        return type(f), own(_f_code)
    if isinstance(f, torch.nn.Module):
        return type(f), tuple(tuple(p.shape) for p in f.parameters())
    code = getattr(f, "__code__", None)
    return code if code is not None else type(f)


def _norm_key(norm: Callable) -> Any:
    """What identifies a norm for the cache: a function's code and closure values when they are
    hashable (a seminorm made afresh for every backward solve is the same norm), else itself.
    Norms with one key share a compiled function, not a norm: the step takes it as an argument."""
    code, cells = getattr(norm, "__code__", None), getattr(norm, "__closure__", None) or ()
    if code is None:
        return norm
    key = (code, tuple(c.cell_contents for c in cells))
    try:
        hash(key)
    except TypeError:
        return norm
    return key


class CompiledRKStepper(RKStepper):
    """An `RKStepper` whose steps run compiled; its eager steps (the fallback, and steps that
    land on a discontinuity of f) are the base class's."""

    def __init__(
        self,
        base: RKStepper,
        entry: _Entry,
        key: tuple,
        user_f: Callable,
        norm: Callable[[torch.Tensor], torch.Tensor],
        layout: StateLayout,
        rtol: torch.Tensor,
        atol: torch.Tensor,
        stats: Stats,
        eager_now: Callable[[], bool],
        time_dtype: torch.dtype,
    ):
        self.__dict__.update(base.__dict__)
        self.entry, self.key, self.user_f, self.norm, self.layout = entry, key, user_f, norm, layout
        self.rtol, self.atol = rtol, atol
        self.stats, self.eager_now = stats, eager_now
        self.adjoint_count = getattr(user_f, "nfe_counter", None)  # an adjoint's count of its f (`VectorField`)
        # Stage times in the wider of the time and state dtypes: the eager step computes them on
        # the host in float64 and rounds once to the state's dtype (float32 where the device has
        # no float64), and neither a float32 time_dtype nor a float32 state may round them first.
        self.time_dtype = torch.promote_types(time_dtype, layout.dtype)

    def step(self, t: float, y: torch.Tensor, h: float, k1: torch.Tensor | None) -> StepResult:
        entry = self.entry
        if entry.fn is None or self.eager_now():
            return super().step(t, y, h, k1)
        y_in = y
        if k1.requires_grad and not y.requires_grad:
            # A recorded solve from a y0 without a gradient (f's parameters have one): the first
            # step's state enters as a leaf that requires grad, so that the step runs the graph
            # every later step runs, rather than a second one. Nothing reads that leaf's gradient.
            y_in = y.detach().requires_grad_(True)
        elif y.requires_grad and not k1.requires_grad:  # f ignores y and has no parameters
            return super().step(t, y, h, k1)
        th = torch.tensor((t, h), dtype=self.time_dtype, device=y.device)
        args = (self.user_f, self.norm, self.layout, th, y_in, k1, self.rtol, self.atol)
        failure = None
        try:
            y1, stages, ratio, r, stage_inputs = entry(*args)
        except Exception as error:
            failure = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}"
        if failure is not None:
            # The same step eagerly (outside the `except`, so that its errors come unchained).
            # Where that raises too, the error is f's own (a wrong shape; the user's exception,
            # which dynamo reports as an "observed exception"): it propagates as an eager solve's
            # would, and the entry stays compiled. Where it succeeds, compiling is what failed.
            result = super().step(t, y, h, k1)
            entry.fn, entry.failure = None, failure
            _warn(failure)
            return result
        self.stats.nfe += self.stages - 1
        if self.adjoint_count is not None:
            self.adjoint_count.nfe += self.stages - 1
        return StepResult(
            t,
            h,
            y,
            y1,
            stages=stages,
            next_k1=stages[-1] if self.fsal else None,
            stage_inputs=stage_inputs,
            ratio=ratio,
            dense=r,
        )


def _warn(reason: str) -> None:
    warnings.warn(
        f"compile=True: the step could not be compiled, so this problem steps eagerly ({reason})",
        RuntimeWarning,
        stacklevel=4,
    )


def compiled_stepper(
    stepper: Any,
    solver: Any,
    user_f: Callable,
    layout: StateLayout,
    norm: Callable,
    internalnorm: Callable,
    options: CompileOptions,
    rtol: Any,
    atol: Any,
    adaptive: bool,
    ratio_on_graph: bool,
    stage_inputs: bool,
    time_dtype: torch.dtype,
    stats: Stats,
    eager_now: Callable[[], bool],
) -> Any:
    """`stepper` with its steps compiled, or `stepper` itself (after a warning) where the
    solver's steps cannot be compiled."""
    if type(stepper) is not RKStepper:
        warnings.warn(
            f"compile=True compiles explicit Runge–Kutta steps; {solver!r} steps eagerly",
            RuntimeWarning,
            stacklevel=4,
        )
        return stepper
    dense_weights = stepper.interpolant_weights if not stepper.dense_stages else None
    with_ratio = adaptive and not ratio_on_graph
    key = (
        solver,
        _f_code(user_f),
        layout.shapes,
        layout.tuple_type if layout.is_tuple else None,
        layout.dtype,
        layout.device,
        _norm_key(internalnorm),
        repr(options),  # (nested dicts are not hashable)
        dense_weights is not None,
        with_ratio,
        stage_inputs,
    )
    entry = _cache.get(key)
    if entry is None:
        fn = _step_function(solver, dense_weights, with_ratio, stage_inputs)
        kwargs = {"dynamic": False, **dict(options)}
        if kwargs.get("options") is not None:
            kwargs["options"] = dict(kwargs["options"])  # torch.compile pops its own keys from it
        untuned = kwargs.get("mode") is None and kwargs.get("options") is None
        if layout.device.type == "cpu" and kwargs.get("backend") in (None, "inductor") and untuned:
            # Inductor's C++ wrapper: the generated code that calls the kernels is C++ rather than
            # Python, which is most of a small step's cost on the CPU (0.39 → 0.32 of
            # torchdiffeq's fwd+bwd time on benchmarks/core.py's small problem; compiles as fast).
            # Only without a mode: torch.compile takes a mode or options, never both.
            kwargs["options"] = {"cpp_wrapper": True}
        try:
            entry = _Entry(torch.compile(fn, fullgraph=True, **kwargs))
        except Exception as error:  # torch.compile unavailable here
            entry = _Entry(None, f"{type(error).__name__}: {error}")
            _warn(entry.failure)
        _cache[key] = entry
        if len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    else:
        _cache.move_to_end(key)
    if entry.fn is None:
        return stepper
    as_tensor = lambda v: torch.as_tensor(v, dtype=layout.dtype, device=layout.device)  # noqa: E731
    return CompiledRKStepper(
        stepper, entry, key, user_f, norm, layout, as_tensor(rtol), as_tensor(atol), stats, eager_now, time_dtype
    )


def clear_cache() -> None:
    """Forget every compiled step (torch's own caches are `torch.compiler.reset()`)."""
    _cache.clear()
