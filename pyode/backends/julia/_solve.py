"""`pyode.solve(..., backend="julia")`: one solve in Julia, one pullback kept for backward.

The forward call returns Zygote's pullback of the SciML solve along with the states; the
autograd.Function keeps it in `ctx`, so backward runs SciMLSensitivity's reverse pass and
never re-solves forward. Arrays cross as flat vectors without copies (`_marshal`).

Both Julia calls release the GIL (`_jl_call_nogil`, PythonCall docs/src/juliacall.md:165-185),
so other Python threads run during a long solve. PyODE.jl touches no Python object then: its
arguments are converted before the GIL is released, and Julia's log is captured and handed
back, to be re-emitted here as `JuliaLogWarning`s.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from ...integrate import SolveOptions
from ...problem import ODEProblem, ReturnCode, Solution, SolveError
from . import _marshal
from ._request import JuliaRequest, build_request
from ._runtime import JuliaLogWarning, load, model_for


class _Outcome:
    """What the forward call learned besides the states (set inside the Function)."""

    retcode_name: str = ""
    retcode: ReturnCode = ReturnCode.Success
    stats: Any = None
    times: np.ndarray | None = None
    solution: Solution | None = None
    counts_backward: bool = True


class _NoDenseOutput:
    """`Solution.dense` on the Julia engine, which returns the saved states only."""

    def __call__(self, t: Any) -> Any:
        raise ValueError(
            "sol(t) is not available on the Julia engine: its Solution holds only the states at the save "
            "times (OrdinaryDiffEq's interpolant stays in Julia and is not differentiable from torch). Pass "
            "saveat= with the times you need"
        )


def _emit(messages: Any) -> None:
    for message in messages:
        warnings.warn(f"Julia: {message}", JuliaLogWarning, stacklevel=4)


def _call_forward(request: JuliaRequest, differentiate: bool) -> tuple[Any, ...]:
    module = load()
    model = model_for(request.spec, module)
    return module.solve_forward._jl_call_nogil(
        model,
        _marshal.to_julia(request.theta, "the Chain's parameters"),
        _marshal.to_julia(request.y0, "y0"),
        request.t0,
        request.t1,
        request.saveat,
        differentiate=differentiate,
        **request.kwargs,
    )


def _unpack(result: tuple[Any, ...], request: JuliaRequest, outcome: _Outcome) -> tuple[torch.Tensor, Any]:
    ys_jl, retcode, nf, naccept, nreject, times, pullback, messages = result
    _emit(messages)
    outcome.retcode_name = str(retcode)
    outcome.retcode = _marshal.retcode_from_julia(outcome.retcode_name)
    outcome.stats = _marshal.stats_from_julia(nf, naccept, nreject)
    outcome.times = np.array(np.asarray(times, dtype=np.float64).reshape(-1))
    ys = _marshal.from_julia_matrix(ys_jl, request.y0.numel(), request.y0.dtype, "the saved states")
    if ys.shape[0] != outcome.times.shape[0]:
        raise RuntimeError(
            f"the Julia engine returned {ys.shape[0]} saved states for {outcome.times.shape[0]} save times"
        )
    return ys, pullback


class _JuliaSolve(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, request: JuliaRequest, outcome: _Outcome, theta: torch.Tensor, y0: torch.Tensor
    ) -> torch.Tensor:
        ys, pullback = _unpack(_call_forward(request, differentiate=True), request, outcome)
        # A pullback of a failed solve would differentiate the partial solution; PyODE.jl sends
        # none, and none is kept here either (nor the Julia memory it holds).
        ctx.pullback = pullback if outcome.retcode.successful else None
        ctx.outcome = outcome
        ctx.meta = (theta.numel(), theta.dtype, y0.shape)
        return ys

    @staticmethod
    @once_differentiable  # SciMLSensitivity's reverse pass is not itself differentiable from torch
    def backward(ctx: Any, grad_ys: torch.Tensor) -> tuple[Any, ...]:
        outcome = ctx.outcome
        if ctx.pullback is None:
            err = SolveError(outcome.retcode, _reached(outcome, math.nan), outcome.solution)
            err.args = (
                f"the Julia solve ended with ReturnCode.{outcome.retcode_name}, so it has no gradient "
                "(SciMLSensitivity would differentiate the partial solution); fix the solve first",
            )
            raise err
        n_theta, dtype, y0_shape = ctx.meta
        n = int(np.prod(y0_shape)) if len(y0_shape) else 1
        cotangent = grad_ys.detach().to(dtype).contiguous()
        g_y0, g_theta, nfe, reverse_code, messages = ctx.pullback._jl_call_nogil(
            _marshal.to_julia(cotangent, "the cotangent of the saved states")
        )
        _emit(messages)
        if outcome.counts_backward and outcome.solution is not None:
            previous = outcome.solution.adjoint_stats
            total = int(nfe) + (previous.nfe if previous is not None else 0)
            outcome.solution.adjoint_stats = _marshal.BackwardCounts(total)
        reverse_retcode = _marshal.retcode_from_julia(str(reverse_code))
        if not reverse_retcode.successful:
            # SciMLSensitivity drops the reverse solve's return code; PyODE.jl reads the failure
            # from the solver's log. Where it stopped is not known.
            err = SolveError(reverse_retcode, math.nan, outcome.solution)
            err.args = (
                f"the backward pass of the Julia solve failed with ReturnCode.{reverse_code} (SciML's reverse "
                f"solve: {reverse_retcode.message}), so its gradient would be wrong. The reverse solve uses "
                "the forward solve's maxiters (max_steps), dtmin and tolerances; loosen them",
            )
            raise err
        grad_theta = _marshal.from_julia_vector(g_theta, n_theta, dtype, "dL/dθ")
        grad_y0 = _marshal.from_julia_vector(g_y0, n, dtype, "dL/dy0").reshape(y0_shape)
        return None, None, grad_theta, grad_y0


def _reached(outcome: _Outcome, default: float) -> float:
    """The last time saved: where a failed solve got to, as far as Python can tell."""
    return float(outcome.times[-1]) if outcome.times is not None and len(outcome.times) else default


def solve_julia(
    prob: ODEProblem,
    solver: Any,
    opts: SolveOptions,
    sensealg: Any,
    *,
    throw: bool,
    given: dict[str, Any],
    regularize: Any,
) -> Solution:
    """Solve `prob` on the Julia engine (see `pyode.solve`'s `backend`); `given` holds the
    options the user set explicitly (dtmin, dtmax, internalnorm, controller, dense)."""
    request = build_request(prob, solver, opts, sensealg, given=given, regularize=regularize)
    outcome = _Outcome()
    outcome.counts_backward = request.sensealg != "DirectAdjoint"
    if request.wants_grad:
        ys = _JuliaSolve.apply(request, outcome, request.theta, request.y0)
    else:
        ys, _ = _unpack(_call_forward(request, differentiate=False), request, outcome)
    times = outcome.times
    if request.added_end and len(times) and times[-1] == request.t1:
        # t1 was saved for BacksolveAdjoint only; autograd gives its column a zero cotangent.
        ys, times = ys[:-1], times[:-1]
    T = ys.shape[0]
    solution = Solution(
        t=torch.as_tensor(times, dtype=opts.time_dtype),
        y=ys.reshape(T, *request.y0.shape),
        stats=outcome.stats,
        retcode=outcome.retcode,
        prob=prob,
        solver=solver,
        dense=_NoDenseOutput(),
    )
    outcome.solution = solution
    if throw and not outcome.retcode.successful:
        err = SolveError(outcome.retcode, _reached(outcome, request.t0), solution)
        err.args = (f"{err.args[0]} (SciML ReturnCode.{outcome.retcode_name}, Julia engine)",)
        raise err
    return solution


__all__ = ["solve_julia"]
