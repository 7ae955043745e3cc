"""`pyode.solve(..., backend="julia")`: one solve in Julia, one pullback kept for backward.

The forward call returns Zygote's pullback of the SciML solve along with the states; the
autograd.Function keeps it in `ctx`, so backward runs SciMLSensitivity's reverse pass and
never re-solves forward. Arrays cross as flat vectors without copies (`_marshal`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ...problem import ODEProblem, ReturnCode, Solution, SolveError
from ...solve import SolveOptions
from . import _marshal
from ._request import JuliaRequest, build_request
from ._runtime import load, model_for


class _Outcome:
    """What the forward call learned besides the states (set inside the Function)."""

    retcode_name: str = ""
    retcode: ReturnCode = ReturnCode.Success
    stats: Any = None
    times: np.ndarray | None = None
    solution: Solution | None = None
    counts_backward: bool = True


def _call_forward(request: JuliaRequest, differentiate: bool) -> tuple[Any, ...]:
    module = load()
    model = model_for(request.spec, module)
    return module.solve_forward(
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
    ys_jl, retcode, nf, naccept, nreject, times, pullback = result
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
        ctx.pullback = pullback
        ctx.outcome = outcome
        ctx.meta = (theta.numel(), theta.dtype, y0.shape)
        return ys

    @staticmethod
    def backward(ctx: Any, grad_ys: torch.Tensor) -> tuple[Any, ...]:
        if ctx.pullback is None:
            raise RuntimeError(
                f"the Julia solve ended with ReturnCode.{ctx.outcome.retcode_name}, so it has no gradient "
                "(SciMLSensitivity cannot differentiate a failed solve); fix the solve first"
            )
        n_theta, dtype, y0_shape = ctx.meta
        n = int(np.prod(y0_shape)) if len(y0_shape) else 1
        cotangent = grad_ys.detach().to(dtype).contiguous()
        g_y0, g_theta, nfe = ctx.pullback(_marshal.to_julia(cotangent, "the cotangent of the saved states"))
        outcome = ctx.outcome
        if outcome.counts_backward and outcome.solution is not None:
            previous = outcome.solution.adjoint_stats
            total = int(nfe) + (previous.nfe if previous is not None else 0)
            outcome.solution.adjoint_stats = _marshal.BackwardCounts(total)
        grad_theta = _marshal.from_julia_vector(g_theta, n_theta, dtype, "dL/dθ")
        grad_y0 = _marshal.from_julia_vector(g_y0, n, dtype, "dL/dy0").reshape(y0_shape)
        return None, None, grad_theta, grad_y0


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
    T = ys.shape[0]
    solution = Solution(
        t=torch.as_tensor(outcome.times, dtype=opts.time_dtype),
        y=ys.reshape(T, *request.y0.shape),
        stats=outcome.stats,
        retcode=outcome.retcode,
        prob=prob,
        solver=solver,
    )
    outcome.solution = solution
    if throw and not outcome.retcode.successful:
        reached = float(outcome.times[-1]) if len(outcome.times) else request.t0
        err = SolveError(outcome.retcode, reached, solution)
        err.args = (f"{err.args[0]} (SciML ReturnCode.{outcome.retcode_name}, Julia engine)",)
        raise err
    return solution


__all__ = ["solve_julia"]
