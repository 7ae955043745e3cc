"""What a solve asks of the Julia engine, checked before Julia starts.

`build_request` turns `pyode.solve`'s arguments into the arguments of `PyODE.solve_forward`,
or raises a clear error for anything the Julia engine cannot do. It needs no Julia, so every
refusal is tested here. The names below are the keys of PyODE.jl's SOLVERS and SENSEALGS
tables (a test keeps the two in step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ... import sensitivity as sens
from ... import solvers
from ...integrate import SolveOptions
from ...julia import Chain
from ...problem import ODEProblem
from ._marshal import times_to_julia

# pyode name -> the pyode class it must be exactly (subclasses and custom tableaus are torch-only).
SOLVERS: dict[str, type] = {
    "Euler": solvers.Euler,
    "Midpoint": solvers.Midpoint,
    "Heun": solvers.Heun,
    "RK4": solvers.RK4,
    "BS3": solvers.BS3,
    "DP5": solvers.DP5,
    "Tsit5": solvers.Tsit5,
    "DP8": solvers.DP8,
}
SENSEALGS: dict[str, type] = {
    "DirectAdjoint": sens.DirectAdjoint,
    "BacksolveAdjoint": sens.BacksolveAdjoint,
    "InterpolatingAdjoint": sens.InterpolatingAdjoint,
    "GaussAdjoint": sens.GaussAdjoint,
}

SUPPORTED = (
    f"solvers {', '.join(SOLVERS)}; sensealgs {', '.join(SENSEALGS)} "
    "(InterpolatingAdjoint checkpoints only with adaptive steps); "
    "vector fields pyode.julia.Chain; one CPU tensor state of float32 or float64"
)


@dataclass
class JuliaRequest:
    """The arguments of one `PyODE.solve_forward` call, in Python types."""

    spec: Chain
    theta: torch.Tensor  # the flat parameters (detached when they are not to be differentiated)
    y0: torch.Tensor
    t0: float
    t1: float
    saveat: np.ndarray | None
    kwargs: dict[str, Any]  # keywords of solve_forward, except `differentiate`
    sensealg: str
    # t1 was added to the save times (BacksolveAdjoint needs it saved); its column is dropped
    # from the solution that pyode returns.
    added_end: bool = False

    @property
    def wants_grad(self) -> bool:
        return torch.is_grad_enabled() and (self.theta.requires_grad or self.y0.requires_grad)


def _refuse(what: str, why: str) -> NotImplementedError:
    return NotImplementedError(f"backend='julia' does not support {what}: {why}. The Julia engine supports {SUPPORTED}")


def _check_solver(solver: Any) -> str:
    if isinstance(solver, solvers.AbstractReversibleSolver):
        raise _refuse(
            f"the reversible solver {solver!r}",
            "SciML has no algebraically reversible solvers; use the torch engine for them",
        )
    if isinstance(solver, (solvers.AbstractImplicitSolver, solvers.AutoSwitch)):
        raise _refuse(
            f"the implicit solver {solver!r}",
            "OrdinaryDiffEq's Rosenbrock23/Rodas5P/Kvaerno/KenCarp4 are not wired to the engine yet (their "
            "Jacobians through Lux need ForwardDiff-compatible models, untested without Julia); use the torch engine",
        )
    name = type(solver).__name__
    if SOLVERS.get(name) is not type(solver):
        raise _refuse(f"the solver {solver!r}", "only pyode's built-in tableaus map to OrdinaryDiffEq algorithms")
    return name


def _check_sensealg(sensealg: Any) -> tuple[str, bool, bool]:
    """(name, seminorm, checkpointing) of a supported sensealg."""
    if sensealg is None:
        sensealg = sens.DirectAdjoint()
    if isinstance(sensealg, sens.QuadratureAdjoint):
        raise _refuse(
            "QuadratureAdjoint (the GQ method: fixed Gauss–Legendre nodes between save points)",
            "SciMLSensitivity has no such method (its QuadratureAdjoint is adaptive QuadGK over a dense "
            "adjoint, a different algorithm). GaussAdjoint is SciML's quadrature adjoint; or use the torch engine",
        )
    if isinstance(sensealg, sens.ReversibleAdjoint):
        raise _refuse("ReversibleAdjoint", "SciML has no reversible solvers")
    name = type(sensealg).__name__
    if SENSEALGS.get(name) is not type(sensealg):
        raise _refuse(f"the sensealg {sensealg!r}", "it has no SciMLSensitivity counterpart")
    if isinstance(sensealg, sens.DirectAdjoint) and sensealg.checkpoint_every is not None:
        raise _refuse("DirectAdjoint(checkpoint_every=...)", "ReverseDiffAdjoint records the whole solve")
    if isinstance(sensealg, sens.GaussAdjoint) and sensealg.nodes is not None:
        raise _refuse("GaussAdjoint(nodes=...)", "SciML chooses the Gauss–Legendre nodes from the solver's order")
    if isinstance(sensealg, sens.AbstractAdjoint):
        overrides = [k for k in ("solver", "rtol", "atol", "internalnorm") if getattr(sensealg, k) is not None]
        if overrides:
            raise _refuse(
                f"{name}({', '.join(f'{k}=...' for k in overrides)})",
                "SciMLSensitivity's reverse solve uses the forward solve's method, tolerances and norm",
            )
    return name, bool(getattr(sensealg, "seminorm", False)), bool(getattr(sensealg, "checkpointing", False))


def build_request(
    prob: ODEProblem, solver: Any, opts: SolveOptions, sensealg: Any, *, given: dict[str, Any], regularize: Any
) -> JuliaRequest:
    """Check a solve for the Julia engine and put its arguments in the form Julia takes.

    `given` holds what the user passed to `solve` for dtmin, dtmax, internalnorm, controller
    and dense (None when omitted): SciML keeps its own defaults for those.
    """
    dtmin, dtmax = given.get("dtmin"), given.get("dtmax")
    internalnorm, controller, dense = given.get("internalnorm"), given.get("controller"), given.get("dense")
    spec = prob.f
    if not isinstance(spec, Chain):
        raise TypeError(
            "backend='julia' needs the vector field as a pyode.julia.Chain (a Lux model described in "
            f"Python); got {type(spec).__name__}. A Python f would be called back from Julia at every stage "
            "and could not be differentiated by Zygote; see pyode/julia.py"
        )
    theta = spec.theta
    if prob.params == ():
        theta = theta.detach()
    elif len(prob.params) != 1 or prob.params[0] is not spec.theta:
        raise ValueError(
            "backend='julia' differentiates with respect to the Chain's own flat parameters; leave "
            "ODEProblem(params=...) at its default (or pass params=[] for none)"
        )
    y0 = prob.y0
    if isinstance(y0, tuple):
        raise TypeError("backend='julia' takes one tensor state, not a tuple; concatenate the parts")
    if y0.dtype != theta.dtype:
        raise TypeError(
            f"backend='julia': y0 is {y0.dtype} but the Chain's parameters are {theta.dtype}; use one dtype"
        )
    if y0.dim() == 0 or y0.shape[-1] != spec.state_size:
        raise ValueError(
            f"backend='julia': y0's last dimension must be the Chain's state size {spec.state_size}; "
            f"got shape {tuple(y0.shape)}"
        )
    for name, tensor in (("y0", y0), ("the Chain's parameters", theta)):
        if tensor.device.type != "cpu":
            raise ValueError(
                f"backend='julia': {name} is on {tensor.device}; the Julia engine runs on CPU tensors "
                "(its CUDA path is not implemented). Use the torch engine on the GPU"
            )
    if any(isinstance(t, torch.Tensor) and t.requires_grad for t in prob.tspan) or opts.saveat_tensor is not None:
        raise _refuse("gradients with respect to times (tspan or saveat requiring grad)", "Julia gets them as floats")
    if float(prob.tspan[1]) < float(prob.tspan[0]):
        raise _refuse(
            "integrating backward in time (tspan[1] < tspan[0])",
            "SciMLSensitivity's adjoints sort the save times, which would reorder the output",
        )
    if isinstance(opts.rtol, torch.Tensor) or isinstance(opts.atol, torch.Tensor):
        raise _refuse(
            "per-element rtol/atol (tensors or tuples)",
            "the bridge sends the tolerances as two numbers; give numbers, or use the torch engine",
        )
    if regularize not in (None, False):
        raise _refuse(
            "regularize=Regularization(...)",
            "the global regularizers differentiate the solver's own steps, which only the torch engine records; "
            "regularize=pyode.LocalRegularization() works on the Julia engine",
        )
    if internalnorm is not None:
        raise _refuse(
            "internalnorm=", "a Python norm cannot run inside the Julia solver (seminorms come from sensealg)"
        )
    if controller is not None:
        raise _refuse("controller=", "OrdinaryDiffEq uses its own PI controller for each method")
    if dense:
        raise _refuse("dense=True", "Solutions from Julia carry the saved states only; pass saveat=")

    solver_name = _check_solver(solver)
    sensealg_name, seminorm, checkpointing = _check_sensealg(sensealg)
    t0, t1 = (float(t) for t in prob.tspan)
    if sensealg_name == "InterpolatingAdjoint" and checkpointing and not opts.adaptive:
        # SciMLSensitivity re-solves each checkpoint interval with only reltol and abstol
        # (SciMLSensitivity 7.112.3 src/interpolating_adjoint.jl:89-92, 246-251): Euler then
        # fails ("Fixed timestep methods require a choice of dt", OrdinaryDiffEqCore
        # solve.jl:277-280) and Midpoint, RK4 or adaptive=False re-solve adaptively, a different
        # trajectory. Without checkpointing the reverse pass reads the forward steps themselves:
        # the same gradient, with the dense forward solution kept in memory.
        checkpointing = False
    kwargs: dict[str, Any] = {
        "solver": solver_name,
        "sensealg": sensealg_name,
        "seminorm": seminorm,
        "checkpointing": checkpointing,
        "rtol": float(opts.rtol),
        "atol": float(opts.atol),
        "dt": None if opts.dt is None else float(opts.dt),
        "adaptive": bool(opts.adaptive),
        "dtmin": None if dtmin is None else float(dtmin),
        "dtmax": None if dtmax is None else float(dtmax),
        "maxiters": int(opts.max_steps),
        "tstops": times_to_julia(opts.tstops) if opts.tstops else None,
    }
    saveat = None if opts.saveat is None else times_to_julia(opts.saveat)
    added_end = False
    if sensealg_name == "BacksolveAdjoint" and saveat is not None and t1 not in saveat:
        # SciMLSensitivity's reverse solve starts at t1 from the last saved state
        # (adjoint_common.jl:91, backsolve_adjoint.jl:173, 229-231): with t1 unsaved that is the
        # state at the last save point, and the gradient is silently wrong. Save t1 as well.
        saveat = np.append(saveat, t1)
        added_end = True
    return JuliaRequest(spec, theta, y0, t0, t1, saveat, kwargs, sensealg_name, added_end)


__all__ = ["SENSEALGS", "SOLVERS", "SUPPORTED", "JuliaRequest", "build_request"]
