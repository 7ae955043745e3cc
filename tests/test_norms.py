"""Norms and seminorms."""

from __future__ import annotations

import math

import pytest
import torch

import pyode


def test_rms_max_mixed_on_tensors():
    x = torch.tensor([3.0, -4.0], dtype=torch.float64)
    assert pyode.rms_norm(x).item() == pytest.approx(math.sqrt(12.5))
    assert pyode.max_norm(x).item() == 4.0
    assert pyode.mixed_norm(x).item() == pytest.approx(math.sqrt(12.5))


def test_norms_on_tuples():
    small = torch.full((1000,), 1e-3, dtype=torch.float64)
    big = torch.tensor([2.0], dtype=torch.float64)
    # RMS over everything lets many small entries dilute one large one; mixed does not.
    assert pyode.rms_norm((small, big)).item() == pytest.approx(math.sqrt((1000 * 1e-6 + 4) / 1001))
    assert pyode.mixed_norm((small, big)).item() == pytest.approx(2.0)
    assert pyode.max_norm((small, big)).item() == 2.0
    assert pyode.rms_norm((small, big)).item() == pytest.approx(pyode.rms_norm(torch.cat((small, big))).item())


def test_norms_are_homogeneous():
    # The controller pulls |h| out of the norm, which is only right for homogeneous norms.
    x = (torch.randn(5, dtype=torch.float64), torch.randn(3, dtype=torch.float64))
    for norm in (pyode.rms_norm, pyode.max_norm, pyode.mixed_norm, pyode.make_seminorm(1)):
        scaled = tuple(-2.5 * p for p in x)
        assert norm(scaled).item() == pytest.approx(2.5 * norm(x).item())


def test_seminorm_ignores_the_other_components():
    sem = pyode.make_seminorm(keep=2)
    z, a_z, a_theta = torch.ones(2), torch.ones(2) * 0.5, torch.ones(10) * 1e6
    assert sem((z, a_z, a_theta)).item() == pytest.approx(1.0)
    assert pyode.make_seminorm(keep=[2])((z, a_z, a_theta)).item() == pytest.approx(1e6)
    assert pyode.make_seminorm(keep=1, norm=pyode.max_norm)((z * 3, a_theta)).item() == 3.0


def test_seminorm_errors():
    with pytest.raises(ValueError, match="at least one"):
        pyode.make_seminorm(keep=[])
    with pytest.raises(TypeError, match="single tensor"):
        pyode.make_seminorm(keep=1)(torch.ones(2))
    with pytest.raises(ValueError, match="state has 2"):
        pyode.make_seminorm(keep=[3])((torch.ones(1), torch.ones(1)))


def test_empty_tensors():
    assert pyode.rms_norm(torch.ones(0)).item() == 0.0
    assert pyode.max_norm(torch.ones(0)).item() == 0.0


def test_seminorm_drives_a_solve():
    # A tuple state whose second component is an integral of the first: with the seminorm the
    # step control ignores it and takes no more steps than the first component alone needs.
    def f(t, y):
        x, _integral = y
        return -x, x.sum(0, keepdim=True) * 1e3

    y0 = (torch.ones(3, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    full = pyode.solve(
        pyode.ODEProblem(f, y0, (0.0, 5.0)), pyode.Tsit5(), internalnorm=pyode.mixed_norm, rtol=1e-8, atol=1e-8
    )
    semi = pyode.solve(
        pyode.ODEProblem(f, y0, (0.0, 5.0)), pyode.Tsit5(), internalnorm=pyode.make_seminorm(1), rtol=1e-8, atol=1e-8
    )
    alone = pyode.solve(pyode.ODEProblem(lambda t, x: -x, y0[0], (0.0, 5.0)), pyode.Tsit5(), rtol=1e-8, atol=1e-8)
    assert semi.stats.naccept == alone.stats.naccept
    assert semi.stats.nfe < full.stats.nfe
