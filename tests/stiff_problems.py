"""Stiff test problems for the implicit solvers, with scipy references.

Each vector field acts on the last axis of y, so the same function steps one system (y of
shape (n,)) or a batch of independent ones ((B, n), with parameters of shape (B,) or scalars).
Their parameters are keyword arguments with the published values as defaults.

Sources: the IVP test set of Mazzia & Magherini, "Test Set for Initial Value Problem Solvers",
release 2.4 (Univ. of Bari, 2008), problems ROBER (§II.1), VDPOL (§II.4), HIRES (§II.5) and POLLU
(§II.6), and Hairer & Wanner, *Solving Ordinary Differential Equations II* (2nd ed., 1996),
§IV.10. `PUBLISHED` holds the test set's reference values at the end points (RADAU5 with
uround 1e-19 and rtol = atol = 1.1e-18); `tests/solvers/test_implicit.py` checks the
transcription here against them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch


@dataclass(frozen=True)
class StiffProblem:
    """A stiff test problem: `f(t, y, **params)` on torch tensors or numpy arrays, y0, tspan,
    default save points, and the absolute tolerance of its scipy reference (below its smallest
    component of interest)."""

    name: str
    f: Callable
    y0: tuple[float, ...]
    tspan: tuple[float, float]
    saveat: tuple[float, ...]
    reference_atol: float
    params: dict = field(default_factory=dict)

    def y0_tensor(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return torch.tensor(self.y0, dtype=dtype)

    def with_span(self, t1: float, saveat: tuple[float, ...], name: str | None = None) -> StiffProblem:
        return StiffProblem(
            name or self.name, self.f, self.y0, (self.tspan[0], t1), saveat, self.reference_atol, self.params
        )


def _stack(parts, like):
    """The components as one array on the last axis, in torch or numpy (scipy's references)."""
    if isinstance(like, torch.Tensor):
        return torch.stack(parts, dim=-1)
    if like.ndim == 1:  # the fast path for scipy's calls
        return np.array(parts)
    return np.stack(parts, axis=-1)


# ---------------------------------------------------------------------------------------------
# A smooth nonlinear non-autonomous system with a known solution, for convergence orders:
#   y' = N(y) - N(y*(t)) + y*'(t),   y*(t) = (2 + sin t, cos 2t),   y(0) = y*(0),
# whose solution is y*. N couples both components nonlinearly, so J is full and depends on y,
# and ∂f/∂t ≠ 0 (the Rosenbrock methods' time-derivative term is exercised). `lam` scales N:
# the eigenvalues of J are about -lam·(1, 2).


def _coupling(y1, y2, lam):
    return lam * (-y1 - 0.25 * y1 * y2 + 0.1 * y2 * y2), lam * (0.2 * y1 * y1 - 2 * y2 - 0.5 * y1 * y2)


def manufactured(t, y, lam=1.0):
    t = torch.as_tensor(t, dtype=y.dtype, device=y.device)
    y1, y2 = y[..., 0], y[..., 1]
    s1, s2 = 2 + torch.sin(t), torch.cos(2 * t)
    n1, n2 = _coupling(y1, y2, lam)
    m1, m2 = _coupling(s1, s2, lam)
    return torch.stack((n1 - m1 + torch.cos(t), n2 - m2 - 2 * torch.sin(2 * t)), dim=-1)


def manufactured_exact(t: float) -> np.ndarray:
    return np.array([2 + np.sin(t), np.cos(2 * t)])


# ---------------------------------------------------------------------------------------------
# Robertson (ROBER): the autocatalytic reaction of Robertson (1966); test set §II.1, Hairer &
# Wanner IV.10 eq. (10.3). y2 stays below 4e-5 while y1 + y2 + y3 = 1.


def robertson(t, y, k1=0.04, k2=3e7, k3=1e4):
    y1, y2, y3 = y[..., 0], y[..., 1], y[..., 2]
    return _stack(
        (
            -k1 * y1 + k3 * y2 * y3,
            k1 * y1 - k3 * y2 * y3 - k2 * y2 * y2,
            k2 * y2 * y2,
        ),
        like=y,
    )


def _log_points(t1: float) -> tuple[float, ...]:
    """1e-5, 1e-4, ..., t1 (a power of ten)."""
    decades = round(float(np.log10(t1)))
    return tuple(10.0**k for k in range(-5, decades + 1))


ROBERTSON = StiffProblem(
    "robertson",
    robertson,
    (1.0, 0.0, 0.0),
    (0.0, 1e11),
    _log_points(1e11),  # 1e-5, 1e-4, ..., 1e11: every time scale of the problem
    # y2 is 8e-14 at t = 1e11 and y1 2e-8: an atol of 1e-20 keeps both relatively accurate.
    reference_atol=1e-20,
)
# The default (fast) span: through the initial layer and the slow decay of y1 to 0.018.
ROBERTSON_1E5 = ROBERTSON.with_span(1e5, _log_points(1e5), "robertson_1e5")


# ---------------------------------------------------------------------------------------------
# Van der Pol in Hairer's scaling (Hairer & Wanner IV.10, eq. (10.2'); the test set's VDPOL):
#   y1' = y2,   y2' = mu((1 - y1²) y2 - y1),   mu = 1/ε.
# The unscaled oscillator y'' - μ(1 - y²)y' + y = 0 (SciML's form y2' = μ(1 - y1²)y2 - y1, with
# period ≈ 1.6μ and y2 = O(1/μ) between jumps) becomes this one with time t/μ, y2 → μ·y2 and
# mu = μ²: y1 and, away from the jumps, y2 are O(1) for every mu. mu = 1e6 is the test set's
# VDPOL (μ = 1e3 over [0, 2000] there); mu = 1e3 (μ ≈ 32) is the milder case. Over [0, 2] y1
# jumps twice (t ≈ 0.81 and 1.61, with y2 = O(mu) for a time O(1/mu)); the save points lie in
# the slow phases. (SciML's μ = 1e6 would be mu = 1e12 here, which scipy's Radau cannot resolve:
# "step size less than spacing between numbers" in the first jump.)


def van_der_pol(t, y, mu=1e3):
    y1, y2 = y[..., 0], y[..., 1]
    return _stack((y2, mu * ((1 - y1 * y1) * y2 - y1)), like=y)


_VDP_SAVEAT = (0.2, 0.5, 0.7, 1.0, 1.3, 1.5, 1.9, 2.0)
VAN_DER_POL_1E3 = StiffProblem("vdpol_1e3", van_der_pol, (2.0, 0.0), (0.0, 2.0), _VDP_SAVEAT, 1e-14, {"mu": 1e3})
VAN_DER_POL_1E6 = StiffProblem("vdpol_1e6", van_der_pol, (2.0, 0.0), (0.0, 2.0), _VDP_SAVEAT, 1e-14, {"mu": 1e6})


# ---------------------------------------------------------------------------------------------
# HIRES: "High Irradiance RESponse" of plant morphogenesis, Schäfer (1975); test set §II.5,
# Hairer & Wanner IV.10 eq. (10.4). Rate 280 in y6·y8 makes it stiff.


def hires(t, y, k=280.0):
    y1, y2, y3, y4, y5, y6, y7, y8 = (y[..., i] for i in range(8))
    r = k * y6 * y8
    return _stack(
        (
            -1.71 * y1 + 0.43 * y2 + 8.32 * y3 + 0.0007,
            1.71 * y1 - 8.75 * y2,
            -10.03 * y3 + 0.43 * y4 + 0.035 * y5,
            8.32 * y2 + 1.71 * y3 - 1.12 * y4,
            -1.745 * y5 + 0.43 * y6 + 0.43 * y7,
            -r + 0.69 * y4 + 1.71 * y5 - 0.43 * y6 + 0.69 * y7,
            r - 1.81 * y7,
            -r + 1.81 * y7,
        ),
        like=y,
    )


HIRES = StiffProblem(
    "hires",
    hires,
    (1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0057),
    (0.0, 321.8122),
    (1.0, 5.0, 10.0, 50.0, 100.0, 321.8122),
    # the smallest component at the save points is y3 ≈ 6e-5 (at the end): 1e-18 is far below it.
    reference_atol=1e-18,
)


# ---------------------------------------------------------------------------------------------
# POLLU: the chemistry of the RIVM air pollution model, Verwer (1994), SIAM J. Sci. Comput.
# 15(5), 1243–1259; test set §II.6. 25 reactions of 20 species, rate constants k1..k25 as in
# the test set's pollu.f (time in minutes, concentrations in ppm).

_POLLU_K = (
    0.35,  # k1
    26.6,  # k2
    1.23e4,  # k3
    8.6e-4,  # k4
    8.2e-4,  # k5
    1.5e4,  # k6
    1.3e-4,  # k7
    2.4e4,  # k8
    1.65e4,  # k9
    9.0e3,  # k10
    2.2e-2,  # k11
    1.2e4,  # k12
    1.88,  # k13
    1.63e4,  # k14
    4.8e6,  # k15
    3.5e-4,  # k16
    1.75e-2,  # k17
    1.0e8,  # k18
    4.44e11,  # k19
    1.24e3,  # k20
    2.1,  # k21
    5.78,  # k22
    4.74e-2,  # k23
    1.78e3,  # k24
    3.12,  # k25
)


def pollution(t, y, k=_POLLU_K):
    like, y = y, [y[..., i] for i in range(20)]
    k = (None, *k)  # 1-based, as in the paper
    r = (
        None,
        k[1] * y[0],
        k[2] * y[1] * y[3],
        k[3] * y[4] * y[1],
        k[4] * y[6],
        k[5] * y[6],
        k[6] * y[6] * y[5],
        k[7] * y[8],
        k[8] * y[8] * y[5],
        k[9] * y[10] * y[1],
        k[10] * y[10] * y[0],
        k[11] * y[12],
        k[12] * y[9] * y[1],
        k[13] * y[13],
        k[14] * y[0] * y[5],
        k[15] * y[2],
        k[16] * y[3],
        k[17] * y[3],
        k[18] * y[15],
        k[19] * y[15],
        k[20] * y[16] * y[5],
        k[21] * y[18],
        k[22] * y[18],
        k[23] * y[0] * y[3],
        k[24] * y[18] * y[0],
        k[25] * y[19],
    )
    dy = (
        -r[1] - r[10] - r[14] - r[23] - r[24] + r[2] + r[3] + r[9] + r[11] + r[12] + r[22] + r[25],
        -r[2] - r[3] - r[9] - r[12] + r[1] + r[21],
        -r[15] + r[1] + r[17] + r[19] + r[22],
        -r[2] - r[16] - r[17] - r[23] + r[15],
        -r[3] + 2 * r[4] + r[6] + r[7] + r[13] + r[20],
        -r[6] - r[8] - r[14] - r[20] + r[3] + 2 * r[18],
        -r[4] - r[5] - r[6] + r[13],
        r[4] + r[5] + r[6] + r[7],
        -r[7] - r[8],
        -r[12] + r[7] + r[9],
        -r[9] - r[10] + r[8] + r[11],
        r[9],
        -r[11] + r[10],
        -r[13] + r[12],
        r[14],
        -r[18] - r[19] + r[16],
        -r[20],
        r[20],
        -r[21] - r[22] - r[24] + r[23] + r[25],
        -r[25] + r[24],
    )
    return _stack(dy, like=like)


_POLLU_Y0 = [0.0] * 20
for _i, _v in ((2, 0.2), (4, 0.04), (7, 0.1), (8, 0.3), (9, 0.01), (17, 0.007)):
    _POLLU_Y0[_i - 1] = _v

POLLUTION = StiffProblem(
    "pollution",
    pollution,
    tuple(_POLLU_Y0),
    (0.0, 60.0),
    (0.01, 0.1, 1.0, 10.0, 30.0, 60.0),
    # y16 (O1D) is ~4e-17 and y3 ~4e-9; atol 1e-25 resolves every component.
    reference_atol=1e-25,
)

# The test set's reference values at the end of each problem's span (solut in its Fortran).
PUBLISHED = {
    "robertson": (1e11, (0.2083340149701255e-07, 0.8333360770334713e-13, 0.9999999791665050)),
    # the test set's y(2000) = (0.1706167732170469e1, -0.8928097010248125e-3) in the unscaled
    # form with μ = 1e3; our y2 is μ times its y2.
    "vdpol_1e6": (2.0, (0.1706167732170469e01, -0.8928097010248125e-03 * 1e3)),
    "hires": (
        321.8122,
        (
            0.7371312573325668e-3,
            0.1442485726316185e-3,
            0.5888729740967575e-4,
            0.1175651343283149e-2,
            0.2386356198831331e-2,
            0.6238968252742796e-2,
            0.2849998395185769e-2,
            0.2850001604814231e-2,
        ),
    ),
    "pollution": (
        60.0,
        (
            0.5646255480022769e-01,
            0.1342484130422339e00,
            0.4139734331099427e-08,
            0.5523140207484359e-02,
            0.2018977262302196e-06,
            0.1464541863493966e-06,
            0.7784249118997964e-01,
            0.3245075353396018e00,
            0.7494013383880406e-02,
            0.1622293157301561e-07,
            0.1135863833257075e-07,
            0.2230505975721359e-02,
            0.2087162882798630e-03,
            0.1396921016840158e-04,
            0.8964884856898295e-02,
            0.4352846369330103e-17,
            0.6899219696263405e-02,
            0.1007803037365946e-03,
            0.1772146513969984e-05,
            0.5682943292316392e-04,
        ),
    ),
}


# ---------------------------------------------------------------------------------------------
# A split problem for the IMEX method: 1-D reaction–diffusion on n interior points of [0, 1]
# with zero Dirichlet boundaries,
#   u' = D·Δu + r·u(1 - u) + sin(2πt)·x(1 - x),
# whose stiff part D·Δu is linear (eigenvalues from -π²D down to -4D(n + 1)²) and whose
# non-stiff part is a mild nonlinearity with a time-dependent source.


@functools.cache
def _laplacian(n: int) -> np.ndarray:
    dx = 1.0 / (n + 1)
    return (np.diag(-2.0 * np.ones(n)) + np.diag(np.ones(n - 1), 1) + np.diag(np.ones(n - 1), -1)) / dx**2


def _grid(n: int) -> np.ndarray:
    return np.arange(1, n + 1) / (n + 1)


def diffusion(t, y, D=1.0):
    L = _laplacian(y.shape[-1])
    if isinstance(y, torch.Tensor):
        L = torch.as_tensor(L, dtype=y.dtype, device=y.device)
    return D * (y @ L.T)


def diffusion_jacobian(y, D=1.0) -> torch.Tensor:
    return D * torch.as_tensor(_laplacian(y.shape[-1]), dtype=y.dtype, device=y.device)


def reaction(t, y, r=1.0):
    x = _grid(y.shape[-1])
    if isinstance(y, torch.Tensor):
        x = torch.as_tensor(x, dtype=y.dtype, device=y.device)
        source = torch.sin(2 * np.pi * torch.as_tensor(t, dtype=y.dtype, device=y.device))
    else:
        source = np.sin(2 * np.pi * t)
    return r * y * (1 - y) + source * x * (1 - x)


def reaction_diffusion(t, y, D=1.0, r=1.0):
    return diffusion(t, y, D) + reaction(t, y, r)


def reaction_diffusion_problem(n: int, D: float, r: float = 1.0, t1: float = 1.0) -> StiffProblem:
    y0 = tuple(float(v) for v in np.sin(np.pi * _grid(n)))
    return StiffProblem(
        f"reaction_diffusion_{n}_{D:g}",
        reaction_diffusion,
        y0,
        (0.0, t1),
        (0.25, 0.5, 0.75, t1),
        1e-14,
        {"D": D, "r": r},
    )


# ---------------------------------------------------------------------------------------------
# References


def reference(problem: StiffProblem, saveat=None, y0=None, **params) -> np.ndarray:
    """scipy's Radau at rtol 1e-12 at `saveat` (default: the problem's): (len(saveat), *y0.shape).

    `y0` may be a batch (B, n) of independent systems, solved as one system of B·n entries, with
    parameters of shape (B,); keyword arguments override the problem's parameters. Cached for
    the session.
    """
    saveat = problem.saveat if saveat is None else saveat
    y0 = np.asarray(problem.y0 if y0 is None else y0, dtype=np.float64)
    merged = {**problem.params, **params}
    key = tuple(sorted((name, _hashable(v)) for name, v in merged.items()))
    return _radau(
        problem.name,
        problem.f,
        _hashable(y0),
        y0.shape,
        problem.tspan,
        tuple(float(t) for t in saveat),
        problem.reference_atol,
        key,
    )


def _hashable(value):
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, (np.ndarray, list, tuple)):
        return tuple(_hashable(v) for v in value)
    return float(value)


def _array(value):
    return np.array(value) if isinstance(value, tuple) else value


@functools.cache
def _radau(name, f, y0, shape, tspan, saveat, atol, params) -> np.ndarray:
    from scipy.integrate import solve_ivp

    kwargs = {name: _array(v) for name, v in params}

    def rhs(t, y):
        return f(t, y.reshape(shape), **kwargs).reshape(-1)

    # numpy f (torch's per-call overhead would dominate: scipy's Radau at rtol 1e-12 evaluates f
    # some 50 000 times) and scipy's finite-difference Jacobian (it only steers Newton). A batch
    # of independent systems declares its block-diagonal sparsity: n evaluations per Jacobian
    # rather than B·n, and a sparse LU.
    sparsity = None
    if len(shape) == 2:
        from scipy.sparse import block_diag

        sparsity = block_diag([np.ones((shape[1], shape[1]))] * shape[0], format="csc")
    y0 = np.array(y0).reshape(-1)
    sol = solve_ivp(
        rhs, tspan, y0, method="Radau", t_eval=np.array(saveat), rtol=1e-12, atol=atol, jac_sparsity=sparsity
    )
    assert sol.success, f"the scipy reference for {name} failed: {sol.message}"
    return sol.y.T.reshape(len(saveat), *shape)


def relative_error(y: np.ndarray, ref: np.ndarray, floor: float = 0.0) -> float:
    """max |y - ref| / max(|ref|, floor) over every entry."""
    return float(np.max(np.abs(y - ref) / np.maximum(np.abs(ref), floor)))
