"""The torch <-> Julia array exchange, against objects with PythonCall's array interface."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyode import ReturnCode, Stats
from pyode.backends.julia import _marshal

from .fake_julia import JuliaArray

DTYPES = [torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES)
def test_to_julia_is_a_flat_view_of_the_tensor(dtype):
    t = torch.arange(12, dtype=dtype).reshape(3, 4).requires_grad_()
    a = _marshal.to_julia(t, "y0")
    assert a.shape == (12,) and a.dtype == np.dtype(str(dtype).removeprefix("torch."))
    assert np.shares_memory(a, t.detach().numpy())
    a[5] = -1.0  # a write from Julia into a PyArray lands in the tensor
    assert t[1, 1].item() == -1.0


def test_to_julia_of_a_noncontiguous_tensor_copies_in_C_order():
    t = torch.arange(6, dtype=torch.float64).reshape(2, 3).t()
    a = _marshal.to_julia(t, "y0")
    np.testing.assert_array_equal(a, [0, 3, 1, 4, 2, 5])


@pytest.mark.parametrize(
    ("tensor", "error", "words"),
    [
        (torch.zeros(3, dtype=torch.int64), TypeError, "float32 or float64"),
        (torch.zeros(3, device="meta"), ValueError, "CPU tensors"),
        ([1.0, 2.0], TypeError, "torch.Tensor"),
    ],
)
def test_to_julia_refuses(tensor, error, words):
    with pytest.raises(error, match=words):
        _marshal.to_julia(tensor, "y0")


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_julia_matrix_comes_back_transposed_without_copy(dtype):
    n, T = 5, 3
    values = np.arange(n * T, dtype=np.dtype(str(dtype).removeprefix("torch."))).reshape(n, T)
    julia = JuliaArray(values)  # column-major (n, T), as Julia's Array(sol)
    assert julia.__array_interface__["strides"] == (values.itemsize, values.itemsize * n)
    ys = _marshal.from_julia_matrix(julia, n, dtype, "states")
    assert ys.shape == (T, n) and ys.dtype == dtype and ys.is_contiguous()
    np.testing.assert_array_equal(ys.numpy(), values.T)
    assert np.shares_memory(ys.numpy(), julia.memory)
    julia.memory[2, 1] = 99  # Julia writes, torch sees it: the same memory
    assert ys[1, 2].item() == 99


def test_a_julia_vector_comes_back_without_copy():
    julia = JuliaArray(np.array([1.0, 2.0, 3.0]))
    v = _marshal.from_julia_vector(julia, 3, torch.float64, "dL/dθ")
    assert np.shares_memory(v.numpy(), julia.memory)
    np.testing.assert_array_equal(v.numpy(), [1, 2, 3])


@pytest.mark.parametrize(
    ("value", "call", "error"),
    [
        (JuliaArray(np.zeros((4, 3))), lambda x: _marshal.from_julia_matrix(x, 5, torch.float64, "s"), RuntimeError),
        (
            JuliaArray(np.zeros((5, 3), np.float32)),
            lambda x: _marshal.from_julia_matrix(x, 5, torch.float64, "s"),
            TypeError,
        ),
        (JuliaArray(np.zeros(4)), lambda x: _marshal.from_julia_vector(x, 3, torch.float64, "g"), RuntimeError),
        (object(), lambda x: _marshal.from_julia_vector(x, 3, torch.float64, "g"), TypeError),
    ],
)
def test_wrong_shapes_and_types_from_julia_are_named(value, call, error):
    with pytest.raises(error, match="the Julia engine returned"):
        call(value)


def test_times_are_float64_vectors():
    a = _marshal.times_to_julia((0, 0.5, 1))
    assert a.dtype == np.float64 and a.shape == (3,) and a.flags.c_contiguous


# Every code in SciMLBase's ReturnCode (src/retcodes.jl) maps to a pyode ReturnCode, and only
# the successful ones count as success.
SCIML_RETCODES = [
    "Default",
    "Success",
    "Terminated",
    "DtNaN",
    "MaxIters",
    "MaxNumSub",
    "DtLessThanMin",
    "Unstable",
    "InitialFailure",
    "ConvergenceFailure",
    "Failure",
    "ExactSolutionLeft",
    "ExactSolutionRight",
    "FloatingPointLimit",
    "Infeasible",
    "MaxTime",
    "InternalLineSearchFailed",
    "ShrinkThresholdExceeded",
    "Stalled",
    "StalledSuccess",
    "InternalLinearSolveFailed",
    "APosterioriSafetyFailure",
]


@pytest.mark.parametrize("name", SCIML_RETCODES)
def test_every_sciml_return_code_maps(name):
    code = _marshal.retcode_from_julia(name)
    assert isinstance(code, ReturnCode)
    if name in ReturnCode.__members__:
        assert code is ReturnCode[name]
    else:
        assert code is ReturnCode.Failure
    assert code.successful == (name in ("Success", "Terminated"))


def test_retcode_must_be_a_name():
    with pytest.raises(TypeError, match="not a name"):
        _marshal.retcode_from_julia(3)


def test_stats_and_backward_counts():
    assert _marshal.stats_from_julia(38, 6, 1) == Stats(nfe=38, naccept=6, nreject=1)
    counts = _marshal.BackwardCounts(120)
    assert counts.nfe == 120
    for field in ("naccept", "nreject", "nquad"):
        with pytest.raises(AttributeError, match=f"adjoint_stats.{field} is not available on the Julia engine"):
            getattr(counts, field)
