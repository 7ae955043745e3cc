"""Arrays across the torch/Julia boundary without copying, and the names of what comes back.

Nothing here imports juliacall, so all of it is tested without Julia. The protocol, as read
from PythonCall's source (`src/Convert/numpy.jl`, `src/JlWrap/array.jl`, `src/Wrap/PyArray.jl`):

- Python -> Julia: a 1-D numpy array passed to a Julia function arrives as a `PyArray`, a view
  of the numpy buffer. `Tensor.numpy()` shares memory with a CPU tensor, so a contiguous
  tensor reaches Julia with no copy. Vectors only: a C-ordered (B, D) buffer reshaped in Julia
  as (D, B) is exactly Lux's (features, batch) layout.
- Julia -> Python: a Julia array comes back as a juliacall `ArrayValue` exposing
  `__array_interface__` (pointer, shape, byte strides). `np.asarray` makes a view of it, and
  `torch.from_numpy` a tensor over the same memory, kept alive through the numpy base.
  A Julia (n, T) Matrix is column-major, so its numpy transpose (T, n) is C-contiguous.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ...problem import ReturnCode, Stats

_FLOAT_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}

# SciMLBase's ReturnCode names (retcodes.jl) that an explicit Runge–Kutta solve can end with,
# mapped to pyode's. Any other name maps to ReturnCode.Failure, and the message keeps the name.
RETCODES: dict[str, ReturnCode] = {
    "Success": ReturnCode.Success,
    "Terminated": ReturnCode.Terminated,
    "MaxIters": ReturnCode.MaxIters,
    "DtLessThanMin": ReturnCode.DtLessThanMin,
    "Unstable": ReturnCode.Unstable,
    "DtNaN": ReturnCode.DtNaN,
    "ConvergenceFailure": ReturnCode.ConvergenceFailure,
}


def retcode_from_julia(name: str) -> ReturnCode:
    """pyode's ReturnCode for the name of a SciMLBase ReturnCode (e.g. "MaxIters")."""
    if not isinstance(name, str):
        raise TypeError(f"the Julia engine returned a return code that is not a name: {name!r}")
    return RETCODES.get(name, ReturnCode.Failure)


def stats_from_julia(nf: Any, naccept: Any, nreject: Any) -> Stats:
    """The forward `Stats` from SciMLBase's DEStats fields nf, naccept and nreject."""
    return Stats(nfe=int(nf), naccept=int(naccept), nreject=int(nreject))


class BackwardCounts:
    """`Solution.adjoint_stats` on the Julia engine: the evaluations of f in the backward pass,
    counted by the vector field itself (the primal calls of every VJP included).

    SciMLSensitivity builds its reverse solve internally and drops it, so the reverse pass's
    accepted and rejected steps and quadrature nodes are not known; asking for them raises.
    """

    def __init__(self, nfe: int):
        self.nfe = int(nfe)

    def _unknown(self, name: str) -> AttributeError:
        return AttributeError(
            f"adjoint_stats.{name} is not available on the Julia engine: SciMLSensitivity does not "
            "return its reverse solve's statistics. adjoint_stats.nfe (evaluations of f, counted) is; "
            "the torch engine reports every field"
        )

    @property
    def naccept(self) -> int:
        raise self._unknown("naccept")

    @property
    def nreject(self) -> int:
        raise self._unknown("nreject")

    @property
    def nquad(self) -> int:
        raise self._unknown("nquad")

    def __repr__(self) -> str:
        return f"BackwardCounts(nfe={self.nfe})"


def to_julia(tensor: torch.Tensor, name: str) -> np.ndarray:
    """A 1-D numpy array over `tensor`'s memory (no copy when it is contiguous), for Julia.

    Raises:
        TypeError: not a float32/float64 tensor.
        ValueError: not on the CPU (the Julia engine's CUDA path is not implemented).
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(tensor).__name__}")
    if tensor.device.type != "cpu":
        raise ValueError(
            f"{name} is on {tensor.device}; the Julia engine takes CPU tensors (its CUDA path, "
            "DLPack into CUDA.jl, is not implemented). Use the torch engine on the GPU"
        )
    if tensor.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64 for the Julia engine; got {tensor.dtype}")
    return tensor.detach().reshape(-1).numpy()


def times_to_julia(times: Any) -> np.ndarray:
    """Times as a 1-D float64 numpy array (Julia's time type stays Float64, as in pyode)."""
    return np.ascontiguousarray(np.asarray(times, dtype=np.float64).reshape(-1))


def _as_numpy(x: Any, name: str) -> np.ndarray:
    if not (hasattr(x, "__array_interface__") or hasattr(x, "__array_struct__") or isinstance(x, np.ndarray)):
        raise TypeError(
            f"the Julia engine returned {name} as {type(x).__name__}, which exposes no array interface; "
            "expected a Julia array of Float32 or Float64"
        )
    return np.asarray(x)


def _check_dtype(a: np.ndarray, dtype: torch.dtype, name: str) -> None:
    if a.dtype != np.dtype(_FLOAT_DTYPES[dtype]):
        raise TypeError(f"the Julia engine returned {name} as {a.dtype}; expected {_FLOAT_DTYPES[dtype].__name__}")


def from_julia_matrix(x: Any, rows: int, dtype: torch.dtype, name: str) -> torch.Tensor:
    """A Julia (rows, T) matrix as a (T, rows) tensor over the same memory.

    A float64 matrix for a float32 state is converted (a copy): with save times,
    SciMLSensitivity's InterpolatingAdjoint and GaussAdjoint interpolate the saved states in
    the Float64 time type (concrete_solve.jl:751-757). PyODE.jl converts them back; this is
    the second line. Anything else of the wrong type is a bug, and raises.
    """
    a = _as_numpy(x, name)
    if a.ndim != 2 or a.shape[0] != rows:
        raise RuntimeError(f"the Julia engine returned {name} of shape {a.shape}; expected ({rows}, T)")
    if dtype == torch.float32 and a.dtype == np.float64:
        return torch.from_numpy(a.T).to(dtype)
    _check_dtype(a, dtype, name)
    return torch.from_numpy(a.T)


def from_julia_vector(x: Any, length: int, dtype: torch.dtype, name: str) -> torch.Tensor:
    """A Julia vector of `length` entries as a 1-D tensor over the same memory."""
    a = _as_numpy(x, name)
    if a.shape != (length,):
        raise RuntimeError(f"the Julia engine returned {name} of shape {a.shape}; expected ({length},)")
    _check_dtype(a, dtype, name)
    return torch.from_numpy(a)


__all__ = [
    "RETCODES",
    "BackwardCounts",
    "from_julia_matrix",
    "from_julia_vector",
    "retcode_from_julia",
    "stats_from_julia",
    "times_to_julia",
    "to_julia",
]
