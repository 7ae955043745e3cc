"""Dense output: cubic Hermite, and the free interpolants that come with some tableaus.

Every interpolant is written in one form. Over a step from `t` with size `h`,

    y(t + θh) = y_n + Σ_{p=1..P} θ^p r_p,     0 ≤ θ ≤ 1,

so a step's dense output is its start `y_n` and a small coefficient matrix `r` of shape (P, n).
Evaluating m points is one matrix product (m, P) @ (P, n).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Sequence

import torch

from ._autocast import no_autocast
from ._exact import Coefficient
from ._exact import exact as _exact

Polynomial = list  # coefficients in increasing powers of θ, as Fractions


def _mul(p: Polynomial, q: Polynomial) -> Polynomial:
    out = [Fraction(0)] * (len(p) + len(q) - 1)
    for i, x in enumerate(p):
        for j, y in enumerate(q):
            out[i + j] += x * y
    return out


def _add(*ps: Polynomial) -> Polynomial:
    out = [Fraction(0)] * max(len(p) for p in ps)
    for p in ps:
        for i, x in enumerate(p):
            out[i] += x
    return out


def _scale(k: Fraction, p: Polynomial) -> Polynomial:
    return [k * x for x in p]


def _product(*factors: Sequence[Coefficient]) -> Polynomial:
    """Multiply polynomials given as coefficient lists (increasing powers)."""
    out: Polynomial = [Fraction(1)]
    for factor in factors:
        out = _mul(out, [_exact(x) for x in factor])
    return out


THETA = [0, 1]  # the polynomial θ


@dataclass(frozen=True)
class PolynomialInterpolant:
    """Continuous weights b_j(θ) with y(t + θh) = y_n + h Σ_j b_j(θ) k_j, read from the step's
    own stages (a "free" interpolant: no extra evaluations of f).

    `weights[j]` lists b_j's coefficients for θ^1, θ^2, ... (b_j(0) = 0 always).
    """

    weights: tuple[tuple[Fraction, ...], ...]
    order: int
    _cast_cache: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    @classmethod
    def from_polynomials(cls, polynomials: Sequence[Polynomial], order: int) -> PolynomialInterpolant:
        degree = max(len(p) for p in polynomials) - 1
        weights = []
        for p in polynomials:
            p = [_exact(x) for x in p] + [Fraction(0)] * (degree + 1 - len(p))
            if p[0] != 0:
                raise ValueError("interpolant weights must vanish at θ = 0")
            weights.append(tuple(p[1:]))
        return cls(weights=tuple(weights), order=order)

    @property
    def degree(self) -> int:
        return len(self.weights[0])

    def at(self, theta: Fraction) -> list[Fraction]:
        """b_j(θ) for every stage j, exactly (used by the tests)."""
        return [sum((w * theta ** (p + 1) for p, w in enumerate(ws)), Fraction(0)) for ws in self.weights]

    def cast(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The weights as a (P, s) tensor, made once per dtype and device."""
        key = (dtype, torch.device(device))
        out = self._cast_cache.get(key)
        if out is None:
            # Outside inference mode, as `ButcherTableau.cast` explains.
            with torch.inference_mode(False):
                out = torch.tensor([[float(w) for w in ws] for ws in self.weights], dtype=dtype).T.contiguous()
                out = self._cast_cache[key] = out.to(device)
        return out


def polynomial_coefficients(weights: torch.Tensor, stages: torch.Tensor, h: float) -> torch.Tensor:
    """r (P, n) of a free interpolant from its (P, s) weights and the step's (s, n) stages."""
    return torch.mm(weights, stages) * h


def hermite_coefficients(
    y0: torch.Tensor, y1: torch.Tensor, f0: torch.Tensor, f1: torch.Tensor, h: float
) -> torch.Tensor:
    """r (3, n) of the cubic Hermite interpolant through (y0, f0) and (y1, f1); third order."""
    dy = y1 - y0
    hf0 = f0 * h
    hf1 = f1 * h
    return torch.stack((hf0, 3 * dy - 2 * hf0 - hf1, hf0 + hf1 - 2 * dy))


def theta_powers(theta: torch.Tensor, degree: int) -> torch.Tensor:
    """(m, P) matrix of θ^1..θ^P for a (m,) tensor of θ."""
    return theta.unsqueeze(-1) ** torch.arange(1, degree + 1, device=theta.device, dtype=theta.dtype)


def evaluate(y0: torch.Tensor, r: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """y(θ) for a (m,) tensor of θ: a (m, n) tensor."""
    return torch.addmm(y0, theta_powers(theta, r.shape[0]), r)


def evaluate_at(y0: torch.Tensor, r: torch.Tensor, thetas: list[float]) -> torch.Tensor:
    """y(θ) for host floats θ: the powers are formed on the host, one transfer, one product."""
    degree = r.shape[0]
    powers = [[theta ** (p + 1) for p in range(degree)] for theta in thetas]
    return torch.addmm(y0, torch.tensor(powers, dtype=y0.dtype, device=y0.device), r)


# --- the free interpolants --------------------------------------------------------------------


def _dopri5_interpolant() -> PolynomialInterpolant:
    """Dormand–Prince 5(4) dense output of order 4 (Hairer, Nørsett & Wanner, Solving ODEs I,
    §II.6, and the code DOPRI5): with B = Σ b_j k_j and D = Σ d_j k_j,

        (y(θ) - y_n)/h = θB + θ(1-θ)(k_1 - B) + θ²(1-θ)(2B - k_1 - k_7) + θ²(1-θ)² D.
    """
    b = [Fraction(35, 384), 0, Fraction(500, 1113), Fraction(125, 192), Fraction(-2187, 6784), Fraction(11, 84), 0]
    d = [
        Fraction(-12715105075, 11282082432),
        0,
        Fraction(87487479700, 32700410799),
        Fraction(-10690763975, 1880347072),
        Fraction(701980252875, 199316789632),
        Fraction(-1453857185, 822651844),
        Fraction(69997945, 29380423),
    ]
    one_minus = [1, -1]
    polys = []
    for j in range(7):
        bj = Fraction(b[j])
        first = Fraction(1 if j == 0 else 0)
        last = Fraction(1 if j == 6 else 0)
        polys.append(
            _add(
                _scale(bj, THETA),
                _scale(first - bj, _product(THETA, one_minus)),
                _scale(2 * bj - first - last, _product(THETA, THETA, one_minus)),
                _scale(Fraction(d[j]), _product(THETA, THETA, one_minus, one_minus)),
            )
        )
    return PolynomialInterpolant.from_polynomials(polys, order=4)


def _tsit5_interpolant() -> PolynomialInterpolant:
    """Tsitouras (2011) continuous extension, order 4, in the factored form of the paper."""
    sq = [0, 0, 1]  # θ²

    def quadratic(p: str, q: str) -> list:  # θ² - pθ + q
        return [q, "-" + p, 1]

    def root(r: str) -> list:  # θ - r
        return ["-" + r, 1]

    polys = [
        _product(
            ["-1.0530884977290216"],
            THETA,
            root("1.3299890189751412"),
            quadratic("1.4364028541716351", "0.7139816917074209"),
        ),
        _product(["0.1017"], sq, quadratic("2.1966568338249754", "1.2949852507374631")),
        _product(["2.490627285651252793"], sq, quadratic("2.38535645472061657", "1.57803468208092486")),
        _product(["-16.54810288924490272"], root("1.21712927295533244"), root("0.61620406037800089"), sq),
        _product(["47.37952196281928122"], root("1.203071208372362603"), root("0.658047292653547382"), sq),
        _product(["-34.87065786149660974"], root("1.2"), root("0.666666666666666667"), sq),
        _product(["2.5"], root("1"), root("0.6"), sq),
    ]
    return PolynomialInterpolant.from_polynomials(polys, order=4)


def _dop853_interpolant(b: Sequence[Coefficient], d: Sequence[Sequence[Coefficient]]) -> PolynomialInterpolant:
    """DOP853's 7th-order dense output (Hairer, Nørsett & Wanner, Solving ODEs I, §II.10) over
    16 stages: the 12 of the step, k13 = f(t + h, y1), and 3 extra stages. With B = Σ b_j k_j
    and D_i = Σ d_ij k_j the code evaluates

        (y(θ) - y_n)/h = θ(B + (1-θ)(k1 - B + θ(2B - k1 - k13 + (1-θ)(D_1 + θ(D_2 + (1-θ)(D_3 + θ D_4)))))).
    """
    n = 16
    one_minus = [1, -1]
    polys = []
    for j in range(n):
        bj = _exact(b[j]) if j < len(b) else Fraction(0)
        first = Fraction(1 if j == 0 else 0)
        k13 = Fraction(1 if j == 12 else 0)
        # Coefficients of the nesting, innermost last: F0..F6 as in the code.
        F = [bj, first - bj, 2 * bj - first - k13] + [_exact(row[j]) for row in d]
        poly: Polynomial = [F[6]]
        for i in range(5, -1, -1):
            inner = THETA if i % 2 == 1 else one_minus
            poly = _add([F[i]], _product(inner, poly))
        poly = _product(THETA, poly)
        polys.append(poly)
    return PolynomialInterpolant.from_polynomials(polys, order=7)


DOPRI5_INTERPOLANT = _dopri5_interpolant()
TSIT5_INTERPOLANT = _tsit5_interpolant()


class DenseOutput:
    """The solution between steps: each accepted step's start, size, y_n and coefficients r.

    Built by the integration loop when `dense=True`; `Solution.__call__` evaluates it.
    """

    def __init__(self, t0: float, t1: float, y0: torch.Tensor, unflatten_batch, unflatten, time_dtype: torch.dtype):
        self.t0 = t0
        self.y0 = y0  # the answer at t0 when the solve took no steps (t0 == t1)
        self.t1 = t1
        self.direction = 1.0 if t1 >= t0 else -1.0
        self.starts: list[float] = []  # direction * step start, increasing
        self.steps: list[tuple[float, float, torch.Tensor, torch.Tensor]] = []  # (t, h, y_n, r)
        self._unflatten_batch = unflatten_batch
        self._unflatten = unflatten
        self.time_dtype = time_dtype

    def append(self, t: float, h: float, y0: torch.Tensor, r: torch.Tensor) -> None:
        self.starts.append(self.direction * t)
        self.steps.append((t, h, y0, r))

    def at(self, t: float) -> torch.Tensor:
        """The flat state at one host time: the fast path the adjoints use inside f."""
        import bisect

        k = min(max(bisect.bisect_right(self.starts, self.direction * t) - 1, 0), len(self.steps) - 1)
        t_n, h, y_n, r = self.steps[k]
        theta = (t - t_n) / h
        out = y_n
        power = 1.0
        for p in range(r.shape[0]):
            power *= theta
            out = torch.add(out, r[p], alpha=power)
        return out

    @property
    def t_end(self) -> float:
        t, h, _, _ = self.steps[-1]
        return t + h

    def __call__(self, t) -> torch.Tensor | tuple:
        with no_autocast(self.y0.device):  # interpolation is the solver's arithmetic
            return self._evaluate(t)

    def truncate(self, t: float) -> None:
        """Forget the steps that start at or after t, and the last ones whose coefficients are not
        finite (a solve that blew up there): what is left interpolates finite values only."""
        while self.steps and (
            self.starts[-1] >= self.direction * t
            or not bool(torch.isfinite(self.steps[-1][3]).all() & torch.isfinite(self.steps[-1][2]).all())
        ):
            self.starts.pop()
            self.steps.pop()

    def _evaluate(self, t) -> torch.Tensor | tuple:
        import bisect

        scalar = not isinstance(t, torch.Tensor) or t.dim() == 0
        ts = t.reshape(-1) if isinstance(t, torch.Tensor) else torch.tensor([float(t)], dtype=self.time_dtype)
        differentiable = ts.requires_grad
        values = ts.detach().cpu().tolist()
        lo, hi = sorted((self.t0, self.t_end if self.steps else self.t0))
        slack = 1e-12 * max(1.0, abs(lo), abs(hi))
        for v in values:
            if not lo - slack <= v <= hi + slack:
                raise ValueError(f"t = {v} lies outside the solved span [{lo}, {hi}]")
        if not self.steps:  # t0 == t1 (or no step was accepted): every t is t0
            ys = self.y0.unsqueeze(0).expand(len(values), -1).clone()
            return self._unflatten(ys[0]) if scalar else self._unflatten_batch(ys)
        out = []
        for i, v in enumerate(values):
            k = min(max(bisect.bisect_right(self.starts, self.direction * v) - 1, 0), len(self.steps) - 1)
            t_n, h, y_n, r = self.steps[k]
            if differentiable:
                theta = ((ts[i : i + 1] - t_n) / h).to(y_n.dtype)
                out.append(evaluate(y_n, r, theta))
            else:
                out.append(evaluate_at(y_n, r, [(v - t_n) / h]))
        ys = torch.cat(out)
        return self._unflatten(ys[0]) if scalar else self._unflatten_batch(ys)
