"""A stand-in for the loaded PyODE Julia module, written to the same contract in Python.

It receives what juliacall would hand Julia (numpy views of the torch tensors) and answers
as PyODE.jl does: arrays that expose `__array_interface__` exactly like PythonCall's
ArrayValue (column-major strides, `data=(pointer, readonly)`, version 3), return-code
names, statistics, a pullback and Julia's captured log. The vector field is evaluated the
Julia way, independently of `pyode.julia.Chain.forward`: each weight read column-major from
the flat θ, the state reshaped column-major to (D, B). So a test comparing the engines checks
the layout conventions and the marshalling, not just the plumbing.

Where SciMLSensitivity answers a request wrongly, the stand-in answers as SciMLSensitivity
does when the request reaches it unchanged (PyODE.jl refuses or repairs these requests itself
as a second line; `julia/test/runtests.jl` checks that part on a machine with Julia). So each
test of the Python side's fix fails against a Python side that forwards the request as is:

1. InterpolatingAdjoint with checkpointing and fixed steps: the checkpoint re-solve gets only
   reltol/abstol (interpolating_adjoint.jl:89-92): Euler raises in the pullback, other fixed
   steps are re-solved adaptively (modelled with Tsit5), so the gradient follows another
   trajectory.
2. BacksolveAdjoint with t1 not saved: the reverse solve starts at t1 from the last saved state
   (adjoint_common.jl:91), so the gradient follows the trajectory through that state at t1.
3. float32 with InterpolatingAdjoint/GaussAdjoint and save times: the states come back float64
   (interpolated in the Float64 time type, concrete_solve.jl:751-757).
4. A failed solve still has a pullback, which differentiates the partial solution.
5. The reverse pass can fail (`reverse_retcode`); the pullback then reports it, as PyODE.jl
   reads it from the solver's log, with the log message.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import numpy as np
import torch

import pyode

ACTIVATIONS = {
    "identity": lambda x: x,
    "tanh": torch.tanh,
    "relu": torch.relu,
    "sigmoid": torch.sigmoid,
    "softplus": torch.nn.functional.softplus,
    "swish": lambda x: x * torch.sigmoid(x),
}

# SciMLLogging's form of a solver failure (SciMLLogging src/utils.jl:33, DiffEqBase check_error.jl).
FAILURE_MESSAGES = {
    "MaxIters": "Verbosity toggle: max_iters \n Interrupted. Larger maxiters is needed.",
    "DtLessThanMin": "Verbosity toggle: dt_min_unstable \n dt(1.0e-20) <= dtmin(1.0e-14) at t=0.3. Aborting.",
    "Unstable": "Verbosity toggle: instability \n Instability detected. Aborting.",
}


class JuliaError(RuntimeError):
    """What juliacall raises for a Julia exception."""


class JuliaArray:
    """Julia memory (column-major) seen through PythonCall's array interface."""

    def __init__(self, values: np.ndarray):
        self.memory = np.asfortranarray(values)

    @property
    def __array_interface__(self) -> dict[str, Any]:
        m = self.memory
        return {
            "shape": m.shape,
            "typestr": m.dtype.str,
            "data": (m.ctypes.data, False),
            "strides": m.strides,
            "version": 3,
        }


class JuliaFunction:
    """A Julia callable as juliacall wraps it: called directly (GIL held) or through
    `_jl_call_nogil` (GIL released); each call is logged as (name, "gil" | "nogil")."""

    def __init__(self, name: str, fn: Callable[..., Any], log: list[tuple[str, str]]):
        self.name, self.fn, self.log = name, fn, log

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.log.append((self.name, "gil"))
        return self.fn(*args, **kwargs)

    def _jl_call_nogil(self, *args: Any, **kwargs: Any) -> Any:
        self.log.append((self.name, "nogil"))
        return self.fn(*args, **kwargs)


class FakeModel:
    def __init__(self, nin: int, layers: list[tuple[int, int, str, bool]]):
        self.nin = nin
        self.layers = layers
        self.nparams = sum(o * i + (o if b else 0) for i, o, _, b in layers)

    def __call__(self, u: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """du/dt for a flat u, as Lux computes it on reshape(u, D, :)."""
        x = u.reshape(-1, self.nin).t()  # column-major (D, B) view of the flat vector
        offset = 0
        for n_in, n_out, act, bias in self.layers:
            W = theta[offset : offset + n_in * n_out].reshape(n_in, n_out).t()  # column-major (out, in)
            offset += n_in * n_out
            x = W @ x
            if bias:
                x = x + theta[offset : offset + n_out, None]
                offset += n_out
            x = ACTIVATIONS[act](x)
        return x.t().reshape(-1)


class FakePyODE:
    """The subset of PyODE.jl that Python calls, backed by the torch engine."""

    SOLVERS: ClassVar[dict[str, type]] = {
        n: getattr(pyode, n) for n in ("Euler", "Midpoint", "Heun", "RK4", "BS3", "DP5", "Tsit5", "DP8")
    }

    def __init__(self, version: str = pyode.__version__, retcode: str | None = None):
        self._version = version
        self.forced_retcode = retcode
        self.reverse_retcode: str | None = None  # a failure of the reverse pass to report
        self.calls: list[dict[str, Any]] = []
        self.gil: list[tuple[str, str]] = []
        self.pullback_calls = 0
        self.nfe = 0
        self.solve_forward = JuliaFunction("solve_forward", self._solve_forward, self.gil)

    def version(self) -> str:
        return self._version

    def dense(self, nin: int, nout: int, activation: str, bias: bool) -> tuple[int, int, str, bool]:
        assert type(nin) is int and type(nout) is int and type(activation) is str and type(bias) is bool
        return (nin, nout, activation, bias)

    def build_model(self, nin: int, *layers: tuple[int, int, str, bool]) -> FakeModel:
        return FakeModel(nin, list(layers))

    def nparams(self, model: FakeModel) -> int:
        return model.nparams

    def _solve_forward(self, model: FakeModel, theta: Any, u0: Any, t0: float, t1: float, saveat: Any, **kw: Any):
        self.calls.append({"theta": theta, "u0": u0, "t0": t0, "t1": t1, "saveat": saveat, **kw})
        for name, a in (("theta", theta), ("u0", u0)):
            assert isinstance(a, np.ndarray) and a.ndim == 1, f"{name} must reach Julia as a flat vector"
        assert saveat is None or (isinstance(saveat, np.ndarray) and saveat.dtype == np.float64)
        theta_t = torch.tensor(theta, requires_grad=kw["differentiate"])
        u0_t = torch.tensor(u0, requires_grad=kw["differentiate"])
        with torch.enable_grad():  # autograd.Function.forward runs under no_grad; Julia records anyway
            sol = self._solve(model, theta_t, u0_t, (t0, t1), saveat, kw)
            Y = sol.y.t()  # (n, T) as Julia's Array(sol)
        retcode = self.forced_retcode or sol.retcode.name
        messages = [] if retcode in ("Success", "Terminated") else [FAILURE_MESSAGES.get(retcode, retcode)]
        Y_out = Y.detach()
        if (
            Y_out.dtype == torch.float32
            and saveat is not None
            and kw["sensealg"] in ("InterpolatingAdjoint", "GaussAdjoint")
        ):
            Y_out = Y_out.double()  # finding 3
        pullback = None
        if kw["differentiate"]:  # finding 4: SciMLSensitivity differentiates a failed solve too

            def back(gY: Any) -> tuple[JuliaArray, JuliaArray, int, str, list[str]]:
                self.pullback_calls += 1
                assert isinstance(gY, np.ndarray) and gY.ndim == 1
                G = torch.tensor(gY).reshape(Y.shape[1], Y.shape[0]).t().to(Y.dtype)  # column-major (n, T)
                g_u0, g_theta = self._gradient(model, Y, G, u0_t, theta_t, sol, (t0, t1), saveat, kw)
                code = self.reverse_retcode or "Success"
                log = [] if code == "Success" else [FAILURE_MESSAGES[code]]
                # 7 stands for PyODE's count of evaluations of f during the pullback.
                return JuliaArray(g_u0.numpy()), JuliaArray(g_theta.numpy()), 7, code, log

            pullback = JuliaFunction("pullback", back, self.gil)
        st = sol.stats
        return (
            JuliaArray(Y_out.numpy()),
            retcode,
            st.nfe,
            st.naccept,
            st.nreject,
            JuliaArray(sol.t.numpy()),
            pullback,
            messages,
        )

    def _gradient(self, model, Y, G, u0_t, theta_t, sol, tspan, saveat, kw):
        sensealg, t0, t1 = kw["sensealg"], tspan[0], tspan[1]
        if sensealg == "InterpolatingAdjoint" and kw["checkpointing"] and not kw["adaptive"]:  # finding 1
            if kw["solver"] == "Euler":
                raise JuliaError("ArgumentError: Fixed timestep methods require a choice of dt or choosing the tstops")
            return self._gradient_along(
                model, G, u0_t, theta_t, tspan, sol.t, dict(kw, solver="Tsit5", adaptive=True, dt=None)
            )
        if sensealg == "BacksolveAdjoint" and saveat is not None and t1 not in saveat:  # finding 2
            with torch.no_grad():  # the trajectory through the last saved state at t1, back to t0
                back = self._solve(model, theta_t.detach(), Y[:, -1].detach(), (t1, t0), np.array([t0]), kw)
            return self._gradient_along(model, G, back.y[-1], theta_t, tspan, sol.t, kw)
        with torch.enable_grad():
            g = torch.autograd.grad(Y, (u0_t, theta_t), G, retain_graph=True, allow_unused=True)
        return tuple(torch.zeros_like(x) if d is None else d for d, x in zip(g, (u0_t, theta_t)))

    def _gradient_along(self, model, G, start, theta_t, tspan, times, kw):
        """The gradient of Σ G·y(t_k) for a solve from `start` with `kw` (another trajectory)."""
        x = start.detach().clone().requires_grad_(True)
        theta = theta_t.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            Y = self._solve(model, theta, x, tspan, times.numpy(), kw).y.t()
            return torch.autograd.grad(Y, (x, theta), G)

    def _solve(self, model, theta_t, u0_t, tspan, saveat, kw) -> pyode.Solution:
        def f(t, u):
            self.nfe += 1
            return model(u, theta_t)

        prob = pyode.ODEProblem(f, u0_t, tspan, params=[theta_t])
        return pyode.solve(
            prob,
            self.SOLVERS[kw["solver"]](),
            saveat=None if saveat is None else torch.as_tensor(saveat),
            rtol=kw["rtol"],
            atol=kw["atol"],
            dt=kw["dt"],
            adaptive=kw["adaptive"],
            max_steps=kw["maxiters"],
            tstops=kw["tstops"],
            throw=False,
        )
