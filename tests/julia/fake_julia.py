"""A stand-in for the loaded PyODE Julia module, written to the same contract in Python.

It receives what juliacall would hand Julia (numpy views of the torch tensors) and answers
as PyODE.jl does: arrays that expose `__array_interface__` exactly like PythonCall's
ArrayValue (column-major strides, `data=(pointer, readonly)`, version 3), return-code
names, statistics and a pullback. The vector field is evaluated the Julia way, independently
of `pyode.julia.Chain.forward`: each weight read column-major from the flat θ, the state
reshaped column-major to (D, B). So a test comparing the engines checks the layout
conventions and the marshalling, not just the plumbing.
"""

from __future__ import annotations

from typing import Any, ClassVar

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
        self.calls: list[dict[str, Any]] = []
        self.nfe = 0

    def version(self) -> str:
        return self._version

    def dense(self, nin: int, nout: int, activation: str, bias: bool) -> tuple[int, int, str, bool]:
        assert type(nin) is int and type(nout) is int and type(activation) is str and type(bias) is bool
        return (nin, nout, activation, bias)

    def build_model(self, nin: int, *layers: tuple[int, int, str, bool]) -> FakeModel:
        return FakeModel(nin, list(layers))

    def nparams(self, model: FakeModel) -> int:
        return model.nparams

    def solve_forward(self, model: FakeModel, theta: Any, u0: Any, t0: float, t1: float, saveat: Any, **kw: Any):
        self.calls.append({"theta": theta, "u0": u0, "t0": t0, "t1": t1, "saveat": saveat, **kw})
        for name, a in (("theta", theta), ("u0", u0)):
            assert isinstance(a, np.ndarray) and a.ndim == 1, f"{name} must reach Julia as a flat vector"
        assert saveat is None or (isinstance(saveat, np.ndarray) and saveat.dtype == np.float64)
        theta_t = torch.tensor(theta, requires_grad=kw["differentiate"])
        u0_t = torch.tensor(u0, requires_grad=kw["differentiate"])

        def f(t, u):
            self.nfe += 1
            return model(u, theta_t)

        prob = pyode.ODEProblem(f, u0_t, (t0, t1), params=[theta_t])
        with torch.enable_grad():  # autograd.Function.forward runs under no_grad; Julia records anyway
            sol = self._solve(prob, saveat, kw)
            Y = sol.y.t()  # (n, T) as Julia's Array(sol)
        retcode = self.forced_retcode or sol.retcode.name
        pullback = None
        if kw["differentiate"] and retcode in ("Success", "Terminated"):  # PyODE.jl: no pullback of a failure

            def pullback(gY: Any) -> tuple[JuliaArray, JuliaArray, int]:
                assert isinstance(gY, np.ndarray) and gY.ndim == 1
                G = torch.tensor(gY).reshape(Y.shape[1], Y.shape[0]).t()  # column-major (n, T)
                with torch.enable_grad():
                    g_u0, g_theta = torch.autograd.grad(Y, (u0_t, theta_t), G, retain_graph=True, allow_unused=True)
                g_u0 = torch.zeros_like(u0_t) if g_u0 is None else g_u0
                g_theta = torch.zeros_like(theta_t) if g_theta is None else g_theta
                # 7 stands for PyODE's count of evaluations of f during the pullback.
                return JuliaArray(g_u0.numpy()), JuliaArray(g_theta.numpy()), 7

        st = sol.stats
        return (
            JuliaArray(Y.detach().numpy()),
            retcode,
            st.nfe,
            st.naccept,
            st.nreject,
            JuliaArray(sol.t.numpy()),
            pullback,
        )

    def _solve(self, prob: pyode.ODEProblem, saveat: Any, kw: dict[str, Any]) -> pyode.Solution:
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
