"""The SDE solvers (`pyode/solvers/sde.py`, `ReversibleHeun`): strong and weak orders measured on
problems whose solution is known on the sample path, adaptive stepping on one Brownian path, the
evaluation counts of the table in the module docstring, and what `solve` refuses for an SDEProblem.

Convergence is measured pathwise: every step size of a study reads the same Brownian path (a
`GridBrownian`, exact at the points of a fine grid, so the study does not depend on
`pyode/brownian.py`), and the error is compared with the exact solution on that path. Slopes come
from a least-squares fit of log(mean |error|) against log(dt) over ≥ 4 step sizes and thousands of
paths; the seeds are fixed, so the numbers below are reproducible, and the ±0.15 tolerances are
several times the fitted slopes' Monte Carlo spread (a 1-2 % relative error in each mean over
a 16-fold range of dt moves a slope by ≈ 0.01) while far below the 0.5 that separates the orders.

Measured slopes (float64; float32 agrees to ±0.01):

| problem | EM | Milstein | EulerHeun | Heun | Midpoint | ReversibleHeun | SRA1 |
| --- | --- | --- | --- | --- | --- | --- | --- |
| GBM, diagonal (Itô / Strat.) | 0.52 | 0.98 / 0.98 | 0.98 | 0.99 | 0.99 | 0.97 | - |
| GBM, scalar noise | 0.50 | 0.98 / 0.98 | 0.98 | 0.98 | 0.98 | 0.96 | - |
| GBM, general commutative noise | 0.51 | - | 0.98 | 0.99 | 0.99 | 0.98 | - |
| general non-commutative noise (self-convergence) | 0.51 | - | 0.54 | 0.51 | 0.51 | 0.54 | - |
| linear drift, additive g(t) (exact) | 1.04 | 1.04 | 1.02 | 1.01 | 1.01 | 1.04 | 2.05 |
| sin drift, additive g(t) (fine SRA1 reference) | 0.99 | - | - | - | - | - | 1.49 (ShARK 1.5) |

Weak order (h = 2⁻³ … 2⁻⁷, first / second moment): EM 0.95 / 0.91, Milstein 0.97 / 0.94.
ReversibleHeun reaches order 1.0 on commutative noise (not only additive, as its docstring says);
SRA1 reaches 2.0 on a linear drift, where the order-1.5 error term (f'' g² I₍₁,₁,₀₎) vanishes.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import pyode
from pyode.brownian import AbstractBrownian, BrownianInterval, VirtualBrownianTree


class GridBrownian(AbstractBrownian):
    """An exact Brownian path on the grid t0 + kδ, δ = (t1 - t0)/n, with its space-time Lévy area.

    Increments are drawn once (float64) from `seed`; a query between grid points is answered from
    the cumulative sums W_k = W(t0 + kδ) and J_k = ∫_{t0}^{t0 + kδ} W dr, so every query is exact
    and any two queries agree. Off-grid queries fail: a solver that asked for a time it should not
    (e.g. an adaptive step where a fixed one was asked for) is caught. `W[-1]` is W(t1).
    """

    def __init__(self, t0, t1, shape, n, seed=0, dtype=torch.float64, levy_area=False):
        self.t0, self.t1, self.shape = float(t0), float(t1), tuple(shape)
        self.dtype, self.device, self.levy_area = dtype, torch.device("cpu"), levy_area
        self.delta = (self.t1 - self.t0) / n
        gen = torch.Generator().manual_seed(seed)
        dW = torch.randn((n, *self.shape), generator=gen, dtype=torch.float64) * math.sqrt(self.delta)
        zero = torch.zeros(1, *self.shape, dtype=torch.float64)
        self.W = torch.cat((zero, dW.cumsum(0)))
        if levy_area:
            H = torch.randn((n, *self.shape), generator=gen, dtype=torch.float64) * math.sqrt(self.delta / 12)
            # ∫ over one cell of (W_r - W_left) dr = δ (ΔW/2 + H) (the definition of H)
            self.J = torch.cat((zero, (self.W[:-1] * self.delta + self.delta * (dW / 2 + H)).cumsum(0)))

    def index(self, t: float) -> int:
        k = round((t - self.t0) / self.delta)
        assert abs(self.t0 + k * self.delta - t) < 1e-6 * self.delta, f"query at {t} is off the grid"
        return k

    def _increment(self, s, t, levy_area):
        a, b = self.index(s), self.index(t)
        dW = self.W[b] - self.W[a]
        if not levy_area:
            return dW.to(self.dtype), None
        h = t - s
        H = (self.J[b] - self.J[a] - self.W[a] * h) / h - dW / 2
        return dW.to(self.dtype), H.to(self.dtype)


def slope(dts, errors) -> float:
    """The least-squares slope of log(error) against log(dt)."""
    return float(np.polyfit(np.log(dts), np.log(errors), 1)[0])


def strong_slope(prob_for, solver, exact, dts) -> tuple[float, list[float]]:
    """(fitted strong order, mean |y_N - exact| per dt), the error over all paths and components."""
    errors = []
    for dt in dts:
        sol = pyode.solve(prob_for(), solver, dt=dt, adaptive=False, saveat=[prob_for().tspan[1]])
        assert sol.y.dtype == exact.dtype
        errors.append((sol.y[-1] - exact).abs().double().mean().item())
    return slope(dts, errors), errors


DTS = [2.0**-k for k in range(4, 9)]  # 16 … 256 steps on [0, 1]: asymptotic for every method below
ITO, STRAT = "ito", "stratonovich"

# --- geometric Brownian motion: dy_i = μ_i y_i dt + Σ_k b_ik y_i dW_k, solved in closed form ---------
# y_i(T) = y0_i exp((μ_i - ½ Σ_k b_ik² [Itô only]) T + Σ_k b_ik W_k(T)): all three noise types below
# are commutative, so the Heun family and Milstein reach strong order 1 and Euler–Maruyama 0.5.

MU = (1.0, 0.5)
SIGMA = (0.5, 1.0)
B_GENERAL = ((0.5, 0.3, -0.2), (0.4, -0.6, 0.5))  # 2 states × 3 Brownian motions


def gbm(noise, sde_type, dtype, batch, seed=0):
    """(problem factory, exact solution at T = 1) for GBM with `noise` on a GridBrownian."""
    mu = torch.tensor(MU, dtype=dtype)
    if noise == "general":
        b = torch.tensor(B_GENERAL, dtype=dtype)
        m = b.shape[1]

        def g(t, y):
            return y.unsqueeze(-1) * b

    else:
        b = torch.tensor(SIGMA, dtype=dtype)
        m = 2 if noise == "diagonal" else 1

        def g(t, y):
            return b * y if noise == "diagonal" else (b * y).unsqueeze(-1)

    bm = GridBrownian(0.0, 1.0, (batch, m), 2**8, seed=seed, dtype=dtype)
    y0 = torch.linspace(0.5, 1.5, batch, dtype=dtype).unsqueeze(-1).expand(batch, 2).contiguous()
    b64 = b.double() if noise == "general" else torch.diag(b.double()) if noise == "diagonal" else b.double()[:, None]
    WT = bm.W[-1]  # (batch, m), float64
    drift = mu.double() - (0.5 * (b64**2).sum(-1) if sde_type == ITO else 0)
    exact = y0.double() * torch.exp(drift + WT @ b64.T)

    def prob():
        return pyode.SDEProblem(lambda t, y: mu * y, g, y0, (0.0, 1.0), noise=noise, sde_type=sde_type, bm=bm)

    return prob, exact.to(dtype)


STRONG_GBM = [
    ("diagonal", pyode.EulerMaruyama(), ITO, 0.5),
    ("diagonal", pyode.Milstein(), ITO, 1.0),
    ("diagonal", pyode.Milstein(), STRAT, 1.0),
    ("diagonal", pyode.EulerHeun(), STRAT, 1.0),
    ("diagonal", pyode.Heun(), STRAT, 1.0),
    ("diagonal", pyode.Midpoint(), STRAT, 1.0),
    ("diagonal", pyode.ReversibleHeun(), STRAT, 1.0),
    ("scalar", pyode.EulerMaruyama(), ITO, 0.5),
    ("scalar", pyode.Milstein(), ITO, 1.0),
    ("scalar", pyode.Milstein(), STRAT, 1.0),
    ("scalar", pyode.EulerHeun(), STRAT, 1.0),
    ("scalar", pyode.Heun(), STRAT, 1.0),
    ("scalar", pyode.Midpoint(), STRAT, 1.0),
    ("scalar", pyode.ReversibleHeun(), STRAT, 1.0),
    ("general", pyode.EulerMaruyama(), ITO, 0.5),
    ("general", pyode.EulerHeun(), STRAT, 1.0),
    ("general", pyode.Heun(), STRAT, 1.0),
    ("general", pyode.Midpoint(), STRAT, 1.0),
    ("general", pyode.ReversibleHeun(), STRAT, 1.0),
]


CASES_GBM = [(*case, torch.float64) for case in STRONG_GBM] + [
    (*case, torch.float32) for case in STRONG_GBM if case[0] == "diagonal"
]


@pytest.mark.parametrize(
    ("noise", "solver", "sde_type", "order", "dtype"),
    CASES_GBM,
    ids=[f"{n}-{s!r}-{t}-{str(d)[6:]}" for n, s, t, _, d in CASES_GBM],
)
def test_strong_order_gbm(noise, solver, sde_type, order, dtype):
    # 2000 paths × 2 components. In float32 the round-off (≈ 256 steps × 1e-7) stays 100× below the
    # smallest error (≈ 2e-3 at dt = 2⁻⁸), so both precisions see the same slope.
    prob, exact = gbm(noise, sde_type, dtype, batch=2000)
    fitted, errors = strong_slope(prob, solver, exact, DTS)
    assert abs(fitted - order) < 0.15, (fitted, errors)


@pytest.mark.parametrize("brownian", [BrownianInterval, VirtualBrownianTree])
@pytest.mark.parametrize(
    ("solver", "sde_type", "order"), [(pyode.EulerMaruyama(), ITO, 0.5), (pyode.Heun(), STRAT, 1.0)]
)
def test_strong_order_on_library_brownian(brownian, solver, sde_type, order):
    # The same study on pyode's own Brownian motions: one object answers every step size, and W(T) is
    # read from it afterwards, so the exact solution is on the path the solves took.
    mu, sigma = torch.tensor(MU, dtype=torch.float64), torch.tensor(SIGMA, dtype=torch.float64)
    y0 = torch.ones(2000, 2, dtype=torch.float64)
    bm = brownian(0.0, 1.0, (2000, 2), seed=7, dtype=torch.float64)
    errors = []
    for dt in DTS:
        prob = pyode.SDEProblem(lambda t, y: mu * y, lambda t, y: sigma * y, y0, (0.0, 1.0), sde_type=sde_type, bm=bm)
        sol = pyode.solve(prob, solver, dt=dt, adaptive=False, saveat=[1.0])
        assert sol.bm is bm
        errors.append(sol.y[-1])
    drift = mu - (0.5 * sigma**2 if sde_type == ITO else 0)
    exact = y0 * torch.exp(drift + sigma * bm(0.0, 1.0))
    errors = [(y - exact).abs().mean().item() for y in errors]
    assert abs(slope(DTS, errors) - order) < 0.15, errors


@pytest.mark.parametrize(
    ("solver", "sde_type"),
    [
        (pyode.EulerMaruyama(), ITO),
        (pyode.EulerHeun(), STRAT),
        (pyode.Heun(), STRAT),
        (pyode.Midpoint(), STRAT),
        (pyode.ReversibleHeun(), STRAT),
    ],
)
def test_strong_order_noncommutative_general_noise(solver, sde_type):
    # g = [[sin y₂, y₁/2], [y₂/2, cos y₁]]: the columns' vector fields do not commute, so without the
    # Lévy area no method here beats strong order 0.5. There is no closed form; the order comes from
    # self-convergence: mean |y_dt - y_dt/2| ~ C dt^p on one path (a Cauchy estimate of the error).
    batch = 1000
    bm = GridBrownian(0.0, 1.0, (batch, 2), 2**8, seed=1)
    y0 = torch.ones(batch, 2, dtype=torch.float64)

    def g(t, y):
        y1, y2 = y[..., 0], y[..., 1]
        return torch.stack([torch.stack([torch.sin(y2), 0.5 * y1], -1), torch.stack([0.5 * y2, torch.cos(y1)], -1)], -2)

    prob = pyode.SDEProblem(lambda t, y: -0.5 * y, g, y0, (0.0, 1.0), noise="general", sde_type=sde_type, bm=bm)
    ks = range(2, 9)  # differences at dt = 2⁻² … 2⁻⁷
    ys = {k: pyode.solve(prob, solver, dt=2.0**-k, adaptive=False, saveat=[1.0]).y[-1] for k in ks}
    dts = [2.0**-k for k in ks[:-1]]
    diffs = [(ys[k] - ys[k + 1]).abs().mean().item() for k in ks[:-1]]
    assert abs(slope(dts, diffs) - 0.5) < 0.15, diffs


# --- additive noise --------------------------------------------------------------------------------
# dy_i = -λ_i y_i dt + Σ_j G_ij(t) dW_j with a time-dependent G: y(T) = e^{-λT} y0 + ∫ φ(s) dW_s with
# φ_ij(s) = e^{-λ_i (T - s)} G_ij(s). Integrating by parts (φ is deterministic and smooth),
# ∫ φ dW = φ(T) W_T - ∫ φ'(s) W_s ds, a Riemann integral of the path, which the GridBrownian knows
# exactly cell by cell (J): the midpoint rule in φ' on cells of δ = 2⁻¹⁰ errs by O(δ²) ≈ 1e-6 (a sum
# of independent O(δ^2.5) terms), 150× below the smallest error measured (SRA1 at dt = 2⁻⁶, 1.5e-4).
# A time-dependent g makes the ∫(s - t_n) dW term matter, which Euler–Maruyama misses (order 1) and
# SRA1's Lévy-area terms capture.

LAMBDA = (1.0, 2.0)


def _matrix(a, b, c, d):
    return torch.stack([torch.stack([a, b], -1), torch.stack([c, d], -1)], -2)


def _G(t):
    """G(t), (*t.shape, 2, 2)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return _matrix(1 + t, 0.5 * torch.sin(3 * t), torch.cos(2 * t), 1 - 0.5 * t)


def _dG(t):
    t = torch.as_tensor(t, dtype=torch.float64)
    return _matrix(torch.ones_like(t), 1.5 * torch.cos(3 * t), -2 * torch.sin(2 * t), -0.5 * torch.ones_like(t))


@pytest.fixture(scope="module")
def additive_linear():
    batch, n, T = 2000, 2**10, 1.0
    bm = GridBrownian(0.0, T, (batch, 2), n, seed=2, levy_area=True)
    lam = torch.tensor(LAMBDA, dtype=torch.float64)
    y0 = torch.ones(batch, 2, dtype=torch.float64)
    delta = T / n
    mids = (torch.arange(n, dtype=torch.float64) + 0.5) * delta
    G_mid, dG_mid = _G(mids), _dG(mids)
    dphi = torch.exp(-lam[:, None] * (T - mids[:, None, None])) * (lam[:, None] * G_mid + dG_mid)  # (n, 2, 2)
    integral = torch.einsum("nij,nbj->bi", dphi, bm.J[1:] - bm.J[:-1])
    exact = torch.exp(-lam * T) * y0 + bm.W[-1] @ _G(T).T - integral

    def prob(sde_type):
        return pyode.SDEProblem(
            lambda t, y: -lam * y,
            lambda t, y: _G(t).to(y).expand(*y.shape[:-1], 2, 2),
            y0,
            (0.0, T),
            noise="additive",
            sde_type=sde_type,
            bm=bm,
        )

    return prob, exact


ADDITIVE = [
    (pyode.EulerMaruyama(), ITO, 1.0),
    (pyode.Milstein(), ITO, 1.0),
    (pyode.EulerHeun(), STRAT, 1.0),
    (pyode.Heun(), STRAT, 1.0),
    (pyode.Midpoint(), STRAT, 1.0),
    (pyode.ReversibleHeun(), STRAT, 1.0),
]


@pytest.mark.parametrize(("solver", "sde_type", "order"), ADDITIVE, ids=[f"{s!r}-{t}" for s, t, _ in ADDITIVE])
def test_strong_order_additive(additive_linear, solver, sde_type, order):
    prob, exact = additive_linear
    dts = [2.0**-k for k in range(2, 7)]
    fitted, errors = strong_slope(lambda: prob(sde_type), solver, exact, dts)
    assert abs(fitted - order) < 0.15, (fitted, errors)


@pytest.mark.parametrize("sde_type", [ITO, STRAT])
def test_strong_order_sra1_linear_additive(additive_linear, sde_type):
    # SRA1 is order 1.5; with a linear drift its leading missed term f''·g² vanishes and the next one
    # (f'f'g, of order 2) shows: measured 2.04. Both calculi give the same solution for additive noise.
    prob, exact = additive_linear
    dts = [2.0**-k for k in range(2, 7)]
    fitted, errors = strong_slope(lambda: prob(sde_type), pyode.SRA1(), exact, dts)
    assert 1.5 - 0.15 < fitted < 2.0 + 0.15, (fitted, errors)
    assert errors[-1] < errors[0] / 40  # an order-1 method would have shrunk 16×


@pytest.fixture(scope="module")
def additive_nonlinear():
    # dy = sin(y) dt + 2(1 + t) dW: f'' ≠ 0 with large noise, so SRA1's order-1.5 term dominates (with
    # weaker noise the order-2 terms still show at these steps: σ = 0.5 measured 1.63). No closed form:
    # the reference is SRA1 at dt = 2⁻¹¹, whose error (~ 1e-3 · 32^-1.5 ≈ 6e-6) is 170× below the
    # smallest error fitted; Euler–Maruyama's order 1 against the same reference checks its limit.
    batch = 2000
    bm = GridBrownian(0.0, 1.0, (batch, 1), 2**11, seed=3, levy_area=True)
    y0 = torch.zeros(batch, 1, dtype=torch.float64)

    def prob():
        return pyode.SDEProblem(
            lambda t, y: torch.sin(y),
            lambda t, y: (2 * (1 + t) * torch.ones_like(y)).unsqueeze(-1),
            y0,
            (0.0, 1.0),
            noise="additive",
            bm=bm,
        )

    ref = pyode.solve(prob(), pyode.SRA1(), dt=2.0**-11, adaptive=False, saveat=[1.0]).y[-1]
    return prob, ref


@pytest.mark.parametrize(("solver", "order"), [(pyode.SRA1(), 1.5), (pyode.ShARK(), 1.5), (pyode.EulerMaruyama(), 1.0)])
def test_strong_order_additive_nonlinear(additive_nonlinear, solver, order):
    prob, ref = additive_nonlinear
    dts = [2.0**-k for k in range(1, 7)]
    fitted, errors = strong_slope(prob, solver, ref, dts)
    assert abs(fitted - order) < 0.15, (fitted, errors)


def test_sra1_float32():
    # Lévy area in float32: the SRA1 step must keep its digits (errors ~1e-3 ≫ float32 round-off).
    bm64 = GridBrownian(0.0, 1.0, (1000, 1), 2**6, seed=4, levy_area=True)
    bm32 = GridBrownian(0.0, 1.0, (1000, 1), 2**6, seed=4, levy_area=True, dtype=torch.float32)
    out = {}
    for dtype, bm in ((torch.float64, bm64), (torch.float32, bm32)):
        prob = pyode.SDEProblem(
            lambda t, y: torch.sin(y),
            lambda t, y: (2 * (1 + t) * torch.ones_like(y)).unsqueeze(-1),
            torch.zeros(1000, 1, dtype=dtype),
            (0.0, 1.0),
            noise="additive",
            bm=bm,
        )
        out[dtype] = pyode.solve(prob, pyode.SRA1(), dt=2**-6, adaptive=False, saveat=[1.0]).y[-1]
        assert out[dtype].dtype == dtype
    # 64 steps of float32 arithmetic on values of size ~3: round-off ≲ 64 · 3 · 6e-8 ≈ 1e-5
    torch.testing.assert_close(out[torch.float32].double(), out[torch.float64], rtol=0, atol=1e-4)


# --- weak order ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", [pyode.EulerMaruyama(), pyode.Milstein()])
def test_weak_order_gbm(solver):
    # Itô GBM dy = μ y dt + σ y dW. For EM (and Milstein, whose correction has mean zero)
    # E[y_N] = y0 (1 + μh)^N exactly, and for EM E[y_N²] = y0² ((1 + μh)² + σ²h)^N: the weak errors
    # against E[y(T)] = e^{μT}, E[y(T)²] = e^{(2μ+σ²)T} are known and shrink like h. Each is estimated
    # as the mean of (y_N - y(T)) over the same paths: its variance is the strong error's (≈ h), not y's,
    # so 20000 paths put the estimate within ≈ 0.0005 (one standard error) of the bias (≥ 0.01) at every h.
    M, mu, sigma = 20000, 1.0, 0.5
    bm = GridBrownian(0.0, 1.0, (M, 1), 2**7, seed=5)
    y0 = torch.ones(M, 1, dtype=torch.float64)
    exact = torch.exp((mu - sigma**2 / 2) + sigma * bm.W[-1])
    prob = pyode.SDEProblem(lambda t, y: mu * y, lambda t, y: sigma * y, y0, (0.0, 1.0), bm=bm)
    ks = range(3, 8)  # h = 2⁻³ … 2⁻⁷: the exact biases' own slopes are 0.96 and 0.93 here (0.93, 0.88 from 2⁻²)
    first, second = [], []
    for k in ks:
        h, N = 2.0**-k, 2**k
        y = pyode.solve(prob, solver, dt=h, adaptive=False, saveat=[1.0]).y[-1]
        d1, d2 = y - exact, y**2 - exact**2
        first.append(d1.mean().item())
        second.append(d2.mean().item())
        bias1 = (1 + mu * h) ** N - math.exp(mu)
        se1 = d1.std().item() / math.sqrt(M)
        assert abs(first[-1] - bias1) < 4 * se1, (k, first[-1], bias1, se1)
        if isinstance(solver, pyode.EulerMaruyama):
            bias2 = ((1 + mu * h) ** 2 + sigma**2 * h) ** N - math.exp(2 * mu + sigma**2)
            se2 = d2.std().item() / math.sqrt(M)
            assert abs(second[-1] - bias2) < 4 * se2, (k, second[-1], bias2, se2)
    dts = [2.0**-k for k in ks]
    assert abs(slope(dts, np.abs(first)) - 1.0) < 0.15, first
    assert abs(slope(dts, np.abs(second)) - 1.0) < 0.15, second


# --- adaptive stepping ------------------------------------------------------------------------------


def _gbm_adaptive(brownian, sde_type, batch=64, seed=3):
    mu = torch.tensor(MU, dtype=torch.float64)
    sigma = torch.tensor(SIGMA, dtype=torch.float64)
    y0 = torch.ones(batch, 2, dtype=torch.float64)
    bm = brownian(0.0, 1.0, (batch, 2), seed=seed, dtype=torch.float64)
    prob = pyode.SDEProblem(lambda t, y: mu * y, lambda t, y: sigma * y, y0, (0.0, 1.0), sde_type=sde_type, bm=bm)
    drift = mu - (0.5 * sigma**2 if sde_type == ITO else 0)
    return prob, y0 * torch.exp(drift + sigma * bm(0.0, 1.0))


ADAPTIVE = [
    (BrownianInterval, pyode.EulerHeun(), STRAT),
    (BrownianInterval, pyode.Heun(), STRAT),
    (BrownianInterval, pyode.Milstein(), ITO),
    (VirtualBrownianTree, pyode.Heun(), STRAT),
    pytest.param(BrownianInterval, pyode.Midpoint(), STRAT, marks=pytest.mark.slow),
    pytest.param(VirtualBrownianTree, pyode.EulerHeun(), STRAT, marks=pytest.mark.slow),
    pytest.param(VirtualBrownianTree, pyode.Milstein(), ITO, marks=pytest.mark.slow),
    pytest.param(VirtualBrownianTree, pyode.Midpoint(), STRAT, marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("brownian", "solver", "sde_type"), ADAPTIVE)
def test_adaptive_converges_to_pathwise_solution(brownian, solver, sde_type):
    # A rejected step retries a shorter step on the same path (the Brownian motion answers the
    # sub-interval consistently); if it drew fresh noise instead, the accepted steps would be biased
    # towards small increments and the error would stall. Measured max relative errors at rtol 1e-2,
    # 1e-3: ≈ 2-5e-2, 2-4e-3 (about 10× per decade); asserted: ≥ 4× per decade and < 1e-2.
    prob, exact = _gbm_adaptive(brownian, sde_type)
    errors, rejected = [], 0
    for rtol in (1e-2, 1e-3):
        sol = pyode.solve(prob, solver, adaptive=True, rtol=rtol, atol=rtol * 1e-2, dt=1e-2, saveat=[1.0])
        errors.append(((sol.y[-1] - exact).abs() / exact).max().item())
        rejected += sol.stats.nreject
    assert errors[1] < errors[0] / 4 and errors[1] < 1e-2, errors
    assert rejected > 0  # rejection happened, and the result above is still right


@pytest.mark.slow
@pytest.mark.parametrize("brownian", [BrownianInterval, VirtualBrownianTree])
@pytest.mark.parametrize(
    ("solver", "sde_type"),
    [
        (pyode.EulerHeun(), STRAT),
        (pyode.Heun(), STRAT),
        (pyode.Midpoint(), STRAT),
        (pyode.Milstein(), ITO),
        (pyode.Milstein(), STRAT),
        (pyode.ReversibleHeun(), STRAT),
    ],
)
def test_adaptive_converges_tight(brownian, solver, sde_type):
    # rtol 1e-4: measured ≈ 2-4e-4 with 6000-25000 steps.
    prob, exact = _gbm_adaptive(brownian, sde_type)
    sol = pyode.solve(prob, solver, adaptive=True, rtol=1e-4, atol=1e-6, dt=1e-2, saveat=[1.0])
    assert ((sol.y[-1] - exact).abs() / exact).max().item() < 1e-3
    assert sol.stats.nreject > 0


@pytest.mark.parametrize(
    ("brownian", "rtols"),
    [
        (BrownianInterval, (1e-2, 1e-3)),
        (VirtualBrownianTree, (1e-2, 1e-3)),
        pytest.param(BrownianInterval, (1e-2, 1e-3, 1e-4), marks=pytest.mark.slow),
        pytest.param(VirtualBrownianTree, (1e-2, 1e-3, 1e-4), marks=pytest.mark.slow),
    ],
)
def test_adaptive_sra1_matches_fixed_steps_on_the_same_path(brownian, rtols):
    # The adaptive solve and a fine fixed-step solve on one path agree: measured max errors at
    # rtol = atol = 1e-2, 1e-3 (1e-4 when slow): 2e-2, 1-2e-3 (1.4e-4), against a fixed-step reference
    # (dt = 2⁻¹⁰, error ~ 1e-3 · 2^-6 ≈ 2e-5). Asserted: ≥ 4× per decade, < 5e-3 at 1e-3.
    batch = 64
    bm = brownian(0.0, 1.0, (batch, 1), seed=3, dtype=torch.float64, levy_area=True)
    prob = pyode.SDEProblem(
        lambda t, y: torch.sin(y),
        lambda t, y: (2 * (1 + t) * torch.ones_like(y)).unsqueeze(-1),
        torch.zeros(batch, 1, dtype=torch.float64),
        (0.0, 1.0),
        noise="additive",
        bm=bm,
    )
    ref = pyode.solve(prob, pyode.SRA1(), dt=2.0**-10, adaptive=False, saveat=[1.0]).y[-1]
    errors, rejected = [], 0
    for rtol in rtols:
        sol = pyode.solve(prob, pyode.SRA1(), adaptive=True, rtol=rtol, atol=rtol, dt=1e-2, saveat=[1.0])
        errors.append((sol.y[-1] - ref).abs().max().item())
        rejected += sol.stats.nreject
    assert all(fine < coarse / 4 for coarse, fine in itertools.pairwise(errors)), errors
    assert errors[1] < 5e-3 and errors[-1] < 5 * rtols[-1], errors
    assert rejected > 0


# --- evaluation counts and solution plumbing -----------------------------------------------------------

# (f, g) evaluations per step: the table in pyode/solvers/sde.py's docstring
COUNTS = [
    (pyode.EulerMaruyama(), ITO, "diagonal", 1, 1),
    (pyode.EulerHeun(), STRAT, "diagonal", 1, 2),
    (pyode.Heun(), STRAT, "diagonal", 2, 2),
    (pyode.Midpoint(), STRAT, "diagonal", 2, 2),
    (pyode.ReversibleHeun(), STRAT, "diagonal", 1, 1),
    (pyode.Milstein(), ITO, "diagonal", 1, 1),
    (pyode.SRA1(), ITO, "additive", 2, 2),
    (pyode.ShARK(), ITO, "additive", 2, 2),
]


@pytest.mark.parametrize(("solver", "sde_type", "noise", "nf", "ng"), COUNTS, ids=[repr(c[0]) for c in COUNTS])
def test_evaluations_per_step(solver, sde_type, noise, nf, ng):
    y0 = torch.ones(4, 2, dtype=torch.float64)
    g = (lambda t, y: 0.5 * y) if noise == "diagonal" else (lambda t, y: torch.ones(4, 2, 3, dtype=y.dtype))
    prob = pyode.SDEProblem(lambda t, y: -y, g, y0, (0.0, 1.0), noise=noise, sde_type=sde_type)
    s8, s16 = (pyode.solve(prob, solver, dt=1 / n, adaptive=False, saveat=[1.0]).stats for n in (8, 16))
    assert (s8.naccept, s16.naccept) == (8, 16)
    assert (s16.nfe - s8.nfe, s16.nfe_diffusion - s8.nfe_diffusion) == (8 * nf, 8 * ng)


def test_default_brownian_is_returned_and_reproduces_the_solve():
    prob = pyode.SDEProblem(
        lambda t, y: -y, lambda t, y: 0.5 * y, torch.ones(8, 2, dtype=torch.float64), (0.0, 1.0), sde_type=STRAT
    )
    sol = pyode.solve(prob, pyode.Heun(), dt=0.05, adaptive=False)
    assert isinstance(sol.bm, BrownianInterval) and sol.bm.dtype == torch.float64 and sol.bm.shape == (8, 2)
    again = pyode.solve(dataclasses_replace(prob, bm=sol.bm), pyode.Heun(), dt=0.05, adaptive=False)
    assert torch.equal(again.y, sol.y)
    other = pyode.solve(prob, pyode.Heun(), dt=0.05, adaptive=False)  # a new path each solve
    assert not torch.equal(other.y, sol.y)


def dataclasses_replace(prob, **changes):
    fields = dict(f=prob.f, g=prob.g, y0=prob.y0, tspan=prob.tspan, noise=prob.noise, sde_type=prob.sde_type)
    fields.update(changes)
    bm = fields.pop("bm", prob.bm)
    return pyode.SDEProblem(**fields, bm=bm)


def test_backward_in_time():
    # tspan = (1, 0): W is read backward, y(0) = y(1) exp(-(μ t + σ (W_1 - W_0))) (Stratonovich).
    bm = GridBrownian(0.0, 1.0, (2000, 2), 2**8, seed=6)
    mu, sigma = torch.tensor(MU, dtype=torch.float64), torch.tensor(SIGMA, dtype=torch.float64)
    y1 = torch.ones(2000, 2, dtype=torch.float64)
    prob = pyode.SDEProblem(lambda t, y: mu * y, lambda t, y: sigma * y, y1, (1.0, 0.0), sde_type=STRAT, bm=bm)
    exact = y1 * torch.exp(-(mu + sigma * bm.W[-1]))
    errors = [(pyode.solve(prob, pyode.Heun(), dt=dt, adaptive=False).y[-1] - exact).abs().mean().item() for dt in DTS]
    assert abs(slope(DTS, errors) - 1.0) < 0.15, errors


@pytest.mark.parametrize(("solver", "order"), [(pyode.EulerMaruyama(), 0.5), (pyode.Milstein(), 1.0)])
def test_backward_in_time_ito(solver, order):
    # An Itô SDE on tspan = (1, 0) is the Itô SDE of the reversed time τ = 1 - t, driven by
    # W̃(τ) = W(1 - τ) - W(1): y(0) = y(1) exp((-μ - σ²/2) + σ (W_0 - W_1)). Milstein's term reads
    # ΔW² - |h| there (with ΔW² - h it once converged to nothing, at an error of 0.55 for every dt).
    bm = GridBrownian(0.0, 1.0, (2000, 2), 2**8, seed=7)
    mu, sigma = torch.tensor(MU, dtype=torch.float64), torch.tensor(SIGMA, dtype=torch.float64)
    y1 = torch.ones(2000, 2, dtype=torch.float64)
    prob = pyode.SDEProblem(lambda t, y: mu * y, lambda t, y: sigma * y, y1, (1.0, 0.0), sde_type=ITO, bm=bm)
    exact = y1 * torch.exp((-mu - sigma**2 / 2) - sigma * bm.W[-1])
    errors = [(pyode.solve(prob, solver, dt=dt, adaptive=False).y[-1] - exact).abs().mean().item() for dt in DTS]
    assert abs(slope(DTS, errors) - order) < 0.15, errors


def test_diffusion_shape_is_checked_on_every_call():
    calls = []

    def g(t, y):  # right on the first call, then (1, 3): it would broadcast against dW silently
        calls.append(1)
        return 0.1 * (y if len(calls) == 1 else y[:1])

    prob = pyode.SDEProblem(lambda t, y: -y, g, _Y0, (0.0, 1.0), bm=GridBrownian(0.0, 1.0, (4, 3), 2**4))
    with pytest.raises(ValueError, match=r"g\(t, y\) returned \(1, 3\)"):
        pyode.solve(prob, pyode.EulerMaruyama(), dt=2**-4)


def test_sde_solution_has_no_dense_output():
    prob = pyode.SDEProblem(
        lambda t, y: -y, lambda t, y: 0.1 * y, _Y0, (0.0, 1.0), bm=GridBrownian(0.0, 1.0, (4, 3), 2**4)
    )
    sol = pyode.solve(prob, pyode.EulerMaruyama(), dt=2**-4)
    with pytest.raises(ValueError, match="saveat"):
        sol(0.5)


# --- refusals ---------------------------------------------------------------------------------------

_Y0 = torch.ones(4, 3, dtype=torch.float64)


def _prob(sde_type=ITO, noise="diagonal", g=None, bm="grid", y0=_Y0):
    if g is None:
        g = (lambda t, y: 0.5 * y) if noise == "diagonal" else (lambda t, y: torch.ones(*y.shape, 2, dtype=y.dtype))
    if isinstance(bm, str):
        m = 3 if noise == "diagonal" else 1 if noise == "scalar" else 2
        bm = GridBrownian(0.0, 1.0, (4, m), 2**6, levy_area=True)
    return pyode.SDEProblem(lambda t, y: -y, g, y0, (0.0, 1.0), noise=noise, sde_type=sde_type, bm=bm)


def _solve(prob, solver, **kw):
    return pyode.solve(prob, solver, dt=2**-4, adaptive=kw.pop("adaptive", False), **kw)


REFUSALS = {
    "EM-stratonovich": (lambda: _solve(_prob(STRAT), pyode.EulerMaruyama()), ValueError, r"EulerMaruyama.*ito.*strat"),
    "Euler-stratonovich": (lambda: _solve(_prob(STRAT), pyode.Euler()), ValueError, r"EulerMaruyama.*strat"),
    "EulerHeun-ito": (lambda: _solve(_prob(ITO), pyode.EulerHeun()), ValueError, r"EulerHeun.*stratonovich.*'ito'"),
    "Heun-ito": (lambda: _solve(_prob(ITO), pyode.Heun()), ValueError, r"Heun\(\).*stratonovich.*'ito'"),
    "Midpoint-ito": (lambda: _solve(_prob(ITO), pyode.Midpoint()), ValueError, r"Midpoint.*stratonovich.*'ito'"),
    "ReversibleHeun-ito": (
        lambda: _solve(_prob(ITO), pyode.ReversibleHeun()),
        ValueError,
        r"ReversibleHeun.*stratonovich.*'ito'",
    ),
    "Milstein-general": (lambda: _solve(_prob(noise="general"), pyode.Milstein()), ValueError, r"Milstein.*'general'"),
    "SRA1-diagonal": (lambda: _solve(_prob(), pyode.SRA1()), ValueError, r"SRA1.*additive.*'diagonal'"),
    "ShARK-diagonal": (lambda: _solve(_prob(), pyode.ShARK()), ValueError, r"ShARK.*additive.*'diagonal'"),
    "SRA1-general": (lambda: _solve(_prob(noise="general"), pyode.SRA1()), ValueError, r"SRA1.*additive.*'general'"),
    "SRA1-no-levy-area": (
        lambda: _solve(
            _prob(noise="additive", bm=BrownianInterval(0.0, 1.0, (4, 2), dtype=torch.float64)), pyode.SRA1()
        ),
        ValueError,
        r"SRA1.*L[ée]vy area.*levy_area=True",
    ),
    "ODE-solver": (lambda: _solve(_prob(), pyode.Tsit5()), TypeError, r"Tsit5.*not a method for SDEs"),
    "SDE-solver-on-ODE": (
        lambda: pyode.solve(pyode.ODEProblem(lambda t, y: -y, _Y0, (0.0, 1.0)), pyode.EulerMaruyama(), dt=0.1),
        TypeError,
        r"EulerMaruyama.*SDEProblem",
    ),
    "EM-adaptive": (
        lambda: _solve(_prob(), pyode.EulerMaruyama(), adaptive=True),
        ValueError,
        r"EulerMaruyama.*error estimate",
    ),
    "GaussAdjoint": (
        lambda: _solve(_prob(), pyode.EulerMaruyama(), sensealg=pyode.GaussAdjoint()),
        ValueError,
        r"GaussAdjoint",
    ),
    "InterpolatingAdjoint": (
        lambda: _solve(_prob(), pyode.EulerMaruyama(), sensealg=pyode.InterpolatingAdjoint()),
        ValueError,
        r"InterpolatingAdjoint",
    ),
    "QuadratureAdjoint": (
        lambda: _solve(_prob(), pyode.EulerMaruyama(), sensealg=pyode.QuadratureAdjoint()),
        ValueError,
        r"QuadratureAdjoint",
    ),
    "ReversibleAdjoint-Heun": (
        lambda: _solve(_prob(STRAT), pyode.Heun(), sensealg=pyode.ReversibleAdjoint()),
        TypeError,
        r"ReversibleAdjoint.*ReversibleHeun",
    ),
    "events": (
        lambda: _solve(_prob(), pyode.EulerMaruyama(), events=[lambda t, y: y.sum()]),
        ValueError,
        r"events.*SDEProblem",
    ),
    "regularize": (lambda: _solve(_prob(), pyode.EulerMaruyama(), regularize=True), ValueError, r"regularize.*SDE"),
    "batch_axis": (lambda: _solve(_prob(), pyode.EulerMaruyama(), batch_axis=0), ValueError, r"batch_axis.*SDE"),
    "compile": (lambda: _solve(_prob(), pyode.EulerMaruyama(), compile=True), ValueError, r"compile.*SDE"),
    "julia": (lambda: _solve(_prob(), pyode.EulerMaruyama(), backend="julia"), ValueError, r"julia|torch"),
    "g-diagonal-shape": (
        lambda: _solve(_prob(g=lambda t, y: y[..., :2]), pyode.EulerMaruyama()),
        ValueError,
        r"g\(t, y\) returned \(4, 2\).*'diagonal'.*\(4, 3\)",
    ),
    "g-scalar-shape": (
        lambda: _solve(_prob(noise="scalar", g=lambda t, y: y), pyode.EulerMaruyama()),
        ValueError,
        r"g\(t, y\) returned \(4, 3\).*'scalar'.*\(4, 3, 1\)",
    ),
    "g-general-shape": (
        lambda: _solve(_prob(noise="general", g=lambda t, y: y), pyode.EulerMaruyama()),
        ValueError,
        r"g\(t, y\) returned \(4, 3\).*'general'",
    ),
    "g-general-batch": (
        lambda: _solve(
            _prob(noise="general", g=lambda t, y: torch.ones(5, 3, 2, dtype=y.dtype)), pyode.EulerMaruyama()
        ),
        ValueError,
        r"g\(t, y\) returned \(5, 3, 2\)",
    ),
    "g-not-a-tensor": (
        lambda: _solve(_prob(g=lambda t, y: (y,)), pyode.EulerMaruyama()),
        ValueError,
        r"g\(t, y\) returned tuple",
    ),
    "g-integer": (
        lambda: _solve(_prob(g=lambda t, y: torch.ones_like(y, dtype=torch.int64)), pyode.EulerMaruyama()),
        TypeError,
        r"g\(t, y\) returned dtype torch.int64",
    ),
    "g-shape-reversible-heun": (
        lambda: _solve(_prob(STRAT, g=lambda t, y: y[..., :2]), pyode.ReversibleHeun()),
        ValueError,
        r"g\(t, y\) returned \(4, 2\)",
    ),
    "bm-shape": (
        lambda: _solve(_prob(bm=GridBrownian(0.0, 1.0, (4, 4), 2**6)), pyode.EulerMaruyama()),
        ValueError,
        r"bm has shape \(4, 4\).*\(4, 3\)",
    ),
    "bm-dtype": (
        lambda: _solve(_prob(bm=GridBrownian(0.0, 1.0, (4, 3), 2**6, dtype=torch.float32)), pyode.EulerMaruyama()),
        TypeError,
        r"bm is torch.float32.*y0 is torch.float64",
    ),
    "bm-library-dtype": (
        lambda: _solve(_prob(bm=VirtualBrownianTree(0.0, 1.0, (4, 3), dtype=torch.float32)), pyode.EulerMaruyama()),
        TypeError,
        r"bm is torch.float32",
    ),
    "bm-not-callable": (lambda: _prob(bm=3), TypeError, r"bm must be .*callable"),
    "bm-too-short": (
        lambda: _solve(_prob(bm=BrownianInterval(0.0, 0.5, (4, 3), dtype=torch.float64)), pyode.EulerMaruyama()),
        ValueError,
        r"bm covers \[0, 0.5\], which does not contain tspan",
    ),
    "noise-name": (lambda: _prob(noise="diag"), ValueError, r"noise must be one of"),
    "sde_type-name": (lambda: _prob(sde_type="Ito"), ValueError, r"sde_type must be 'ito' or 'stratonovich'"),
    "tuple-state": (lambda: _prob(y0=(_Y0,)), TypeError, r"y0 must be one tensor"),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_refusals(case):
    run, error, message = REFUSALS[case]
    with pytest.raises(error, match=message):
        run()


# A plain function bm(s, t) is documented to work ("any callable bm(s, t) returning W(t) - W(s)"), and
# a wrong shape from it must not broadcast silently into g·dW.
def _plain(shape, dtype=torch.float64):
    grid = GridBrownian(0.0, 1.0, shape, 2**6, dtype=dtype)
    return lambda s, t: grid(s, t)


def test_plain_callable_brownian_motion():
    grid = GridBrownian(0.0, 1.0, (4, 3), 2**6)
    expected = _solve(_prob(STRAT, bm=grid), pyode.Heun())
    got = _solve(_prob(STRAT, bm=lambda s, t: grid(s, t)), pyode.Heun())
    assert torch.equal(got.y, expected.y)


@pytest.mark.parametrize("shape", [(4, 1), (4, 4)])
def test_plain_callable_brownian_motion_of_the_wrong_shape(shape):
    # (4, 1) would broadcast against the (4, 3) diagonal g and silently become scalar noise.
    with pytest.raises(ValueError, match=r"bm.*shape"):
        _solve(_prob(bm=_plain(shape)), pyode.EulerMaruyama())
