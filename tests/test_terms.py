"""The terms of `pyode.terms` (diffrax's names): a vector field, a control increment, and how
the two combine into a change of state."""

from __future__ import annotations

import pytest
import torch

import pyode
from pyode.terms import AbstractTerm, ControlTerm, MultiTerm, ODETerm

F64 = torch.float64


def test_ode_term_is_f_times_the_time_step():
    term = ODETerm(lambda t, y: -2 * y)
    y = torch.tensor([1.0, 3.0], dtype=F64)
    t0, t1 = torch.tensor(0.5, dtype=F64), torch.tensor(0.75, dtype=F64)
    torch.testing.assert_close(term.vf_prod(t0, y, term.contr(t0, t1)), -2 * y * 0.25, rtol=0, atol=0)
    tuple_term = ODETerm(lambda t, y: (y[0], 2 * y[1]))
    out = tuple_term.prod(tuple_term.vf(t0, (y, y)), term.contr(t0, t1))
    torch.testing.assert_close(out, (y * 0.25, y * 0.5), rtol=0, atol=0)


def test_control_term_increment_is_the_paths():
    t = torch.linspace(0, 1, 5, dtype=F64)
    x = torch.randn(3, 5, 2, dtype=F64)
    X = pyode.cde.linear(t, x)
    A = torch.randn(4, 2, dtype=F64)
    term = ControlTerm(lambda t, z: A.expand(3, 4, 2), X)
    t0, t1 = torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64)
    dX = term.contr(t0, t1)
    torch.testing.assert_close(dX, x[:, -1] - x[:, 0], rtol=0, atol=1e-14)
    out = term.vf_prod(t0, torch.zeros(3, 4, dtype=F64), dX)
    torch.testing.assert_close(out, dX @ A.T, rtol=0, atol=1e-14)


def test_multi_term_sums_each_terms_product():
    t = torch.linspace(0, 1, 5, dtype=F64)
    X = pyode.cde.linear(t, torch.randn(5, 1, dtype=F64))
    drift = ODETerm(lambda t, y: -y)
    diffusion = ControlTerm(lambda t, y: torch.ones(*y.shape, 1, dtype=F64), X)
    both = MultiTerm(drift, diffusion)
    y = torch.tensor([1.0, 2.0], dtype=F64)
    t0, t1 = torch.tensor(0.25, dtype=F64), torch.tensor(0.5, dtype=F64)
    control = both.contr(t0, t1)
    expected = drift.vf_prod(t0, y, control[0]) + diffusion.vf_prod(t0, y, control[1])
    torch.testing.assert_close(both.vf_prod(t0, y, control), expected, rtol=0, atol=0)


def test_bad_terms_are_refused():
    with pytest.raises(TypeError):
        AbstractTerm()
    with pytest.raises(TypeError, match="callable"):
        ODETerm(3)
    with pytest.raises(TypeError, match="evaluate"):
        ControlTerm(lambda t, y: y, object())
    with pytest.raises(TypeError, match="one or more terms"):
        MultiTerm()
