"""Gradients of per-sample solves (`solve(..., batch_axis=0)`, `pyode/integrate/per_sample.py`):
which sensitivity algorithms apply, and how they run the per-sample loop.

- `DirectAdjoint()`: autograd through the batched loop. Every element's steps are recorded in
  the batched operations; frozen elements and rejected attempts enter only through
  `torch.where`, whose backward gives them zero gradient, so each element's gradient is that of
  its own solve (step sizes held constant, as always).
- `GaussAdjoint()`: each element's adjoint solved backward with its own steps, the parameter
  gradient by quadrature on them (`per_sample_gauss.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..integrate import flow_shift
from ..integrate.per_sample import check_per_sample, integrate_per_sample
from .direct import DirectAdjoint
from .gauss import GaussAdjoint
from .per_sample_gauss import solve_gauss

if TYPE_CHECKING:
    from ..integrate import SolveOptions
    from ..problem import ODEProblem, Solution
    from ..solvers.base import AbstractSolver

SUPPORTED = "DirectAdjoint(), GaussAdjoint()"


def solve_per_sample(
    sensealg: object,
    prob: ODEProblem,
    solver: AbstractSolver,
    opts: SolveOptions,
    throw: bool,
    backend: str,
    local: object = None,
) -> Solution:
    """Solve with each element of dim 0 stepping on its own, differentiated by `sensealg`.
    `local`: the `LocalRegularization` that `solve` was given, refused here."""
    if backend != "torch":
        raise ValueError(f'batch_axis=0 is not available with backend="{backend}"; use backend="torch"')
    if local is not None:
        raise ValueError(
            "regularize=LocalRegularization(...) is not available with batch_axis=0; solve without batch_axis"
        )
    check_per_sample(solver, opts)
    if isinstance(sensealg, DirectAdjoint):
        if sensealg.checkpoint_every is not None:
            raise ValueError(
                f"sensealg={sensealg!r}: checkpointing is not available with batch_axis=0; use DirectAdjoint()"
            )
        return _direct(prob, solver, opts, throw)
    if isinstance(sensealg, GaussAdjoint):
        return solve_gauss(sensealg, prob, solver, opts, throw)
    raise ValueError(f"sensealg={sensealg!r} is not available with batch_axis=0; supported: {SUPPORTED}")


def _direct(prob: ODEProblem, solver: AbstractSolver, opts: SolveOptions, throw: bool) -> Solution:
    """Autograd through the per-sample loop, with the flow identities of `DirectAdjoint` for
    t0 and t1 that require grad: ∂y/∂t0 = -∂y/∂y0 · f(t0, y0), and ∂y(t1)/∂t1 = f(t1, y(t1))
    when the last save point is t1 (saveat omitted)."""
    import dataclasses

    t0, t1 = prob.tspan
    grad = torch.is_grad_enabled()
    wants_t0 = grad and isinstance(t0, torch.Tensor) and t0.requires_grad
    wants_t1 = grad and isinstance(t1, torch.Tensor) and t1.requires_grad
    wants_t1 = wants_t1 and opts.saveat is None and opts.saveat_batch is None
    B = prob.y0.shape[0]
    calls = 0

    def f_at(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return prob.f(t.to(y.dtype).expand(B), y)

    if wants_t0:
        # Starting at t0 + δ from y0 is starting at t0 from y0 carried back by δ.
        prob = dataclasses.replace(prob, y0=flow_shift(f_at, t0, prob.y0, -(t0 - t0.detach())))
    sol = integrate_per_sample(prob, solver, opts, throw)
    if wants_t1 and sol.retcode.successful:
        end = flow_shift(f_at, float(t1.detach()), sol.y[-1], t1 - t1.detach())
        sol.y = torch.cat((sol.y[:-1], end.unsqueeze(0)))
    sol.stats.nfe += calls
    sol.stats.per_element.nfe.add_(calls)
    return sol
