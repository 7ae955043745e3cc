"""Test problems: some with closed-form solutions, some with scipy references."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

import pyode


@dataclass(frozen=True)
class Problem:
    name: str
    f: Callable  # torch vector field f(t, y)
    f_np: Callable  # the same on numpy arrays, for scipy references
    y0: tuple[float, ...]
    tspan: tuple[float, float]
    exact: Callable | None = None  # t -> numpy array


def _riccati(t, y):
    # y' = -2 t y², y(0) = 1: y = 1/(1 + t²). Nonlinear and non-autonomous, smooth.
    return -2 * t * y * y


def _oscillating_growth(t, y):
    # y' = 3 cos(3t) y, y(0) = 1: y = exp(sin 3t). Non-autonomous; its errors reach the
    # asymptotic regime of every method here at moderate step counts, well above round-off.
    if isinstance(y, torch.Tensor):
        return 3 * torch.cos(3 * t) * y
    return 3 * np.cos(3 * t) * y


OSCILLATING_GROWTH = Problem(
    "oscillating_growth",
    _oscillating_growth,
    _oscillating_growth,
    (1.0,),
    (0.0, 3.0),
    lambda t: np.array([math.exp(math.sin(3 * t))]),
)

RICCATI = Problem("riccati", _riccati, _riccati, (1.0,), (0.0, 2.0), lambda t: np.array([1 / (1 + t * t)]))

_LINEAR_A = np.array([[-0.1, 1.0], [-1.0, -0.1]])


def _linear(t, y):
    return y @ torch.as_tensor(_LINEAR_A.T, dtype=y.dtype, device=y.device)


def _linear_exact(t):
    # exp(tA) y0 for A = [[-a, w], [-w, -a]]: a damped rotation.
    a, w = 0.1, 1.0
    y0 = np.array([2.0, 0.0])
    rot = np.array([[math.cos(w * t), math.sin(w * t)], [-math.sin(w * t), math.cos(w * t)]])
    return math.exp(-a * t) * rot @ y0


LINEAR = Problem("linear", _linear, lambda t, y: _LINEAR_A @ y, (2.0, 0.0), (0.0, 10.0), _linear_exact)


def _van_der_pol(t, y, mu=1.0):
    if isinstance(y, torch.Tensor):
        return torch.stack((y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]))
    return np.array([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])


VAN_DER_POL = Problem("van_der_pol", _van_der_pol, _van_der_pol, (2.0, 0.0), (0.0, 10.0))


def _lotka_volterra(t, y, a=1.5, b=1.0, c=3.0, d=1.0):
    if isinstance(y, torch.Tensor):
        return torch.stack((a * y[0] - b * y[0] * y[1], -c * y[1] + d * y[0] * y[1]))
    return np.array([a * y[0] - b * y[0] * y[1], -c * y[1] + d * y[0] * y[1]])


LOTKA_VOLTERRA = Problem("lotka_volterra", _lotka_volterra, _lotka_volterra, (1.0, 1.0), (0.0, 10.0))

SPIRAL_A = np.array([[-0.1, 2.0], [-2.0, -0.1]])


def _spiral(t, y):
    if isinstance(y, torch.Tensor):
        return (y**3) @ torch.as_tensor(SPIRAL_A, dtype=y.dtype, device=y.device)
    return (y**3) @ SPIRAL_A


SPIRAL = Problem("cubic_spiral", _spiral, _spiral, (2.0, 0.0), (0.0, 10.0))

ALL = (LINEAR, VAN_DER_POL, LOTKA_VOLTERRA, SPIRAL)


def reference(problem: Problem, ts: np.ndarray) -> np.ndarray:
    """The solution at `ts`, (len(ts), n): exact where known, else scipy's DOP853 at rtol 1e-13."""
    if problem.exact is not None:
        return np.stack([problem.exact(t) for t in ts])
    return _scipy_reference(problem, tuple(float(t) for t in ts))


@functools.cache
def _scipy_reference(problem: Problem, ts: tuple[float, ...]) -> np.ndarray:
    from scipy.integrate import solve_ivp

    sol = solve_ivp(
        problem.f_np, problem.tspan, np.array(problem.y0), method="DOP853", t_eval=np.array(ts), rtol=1e-13, atol=1e-13
    )
    assert sol.success
    return sol.y.T


# Every reversible solver, for the tests of reversible solvers and of their adjoint.
REVERSIBLE = [
    pyode.Reversible(pyode.RK4()),
    pyode.Reversible(pyode.Tsit5()),
    pyode.Reversible(pyode.DP5()),
    pyode.ReversibleHeun(),
    pyode.AsyncLeapfrog(),
]
