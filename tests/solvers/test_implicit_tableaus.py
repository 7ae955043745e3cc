"""The implicit tableaus: their order conditions in exact arithmetic, their stability at the imaginary
axis and at ∞, and one step of each method, written out here in numpy, whose local error falls at
the rate its order claims.

The numpy steps are independent of pyode's steppers on purpose: they check the data, so that a
wrong row or a transposed index shows up here, before any stepper is built on it.
"""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest

from pyode.solvers.implicit_tableaus import KENCARP4, KVAERNO3, KVAERNO5, RODAS5P

from ..test_tableaus import condition_residuals, trees
from ..test_tableaus import gamma as density

# How exactly each tableau can satisfy its conditions, set by the digits its coefficients carry.
# Kværnø's methods are written to 40 digits, so each coefficient is within 5e-41 of the true one
# and a residual of order ≤ 5, a sum of at most 7⁵ products of five coefficients of size ≤ 1.5,
# below 1e-34.
_FORTY_DIGITS = Fraction(1, 10**30)
# KenCarp4's implicit tableau is exact: its conditions hold with residual 0. Its explicit tableau
# is printed as rationals that approximate the true coefficients to ~26 digits (its rows sum to c
# only to ~2e-26), so the explicit and coupling conditions hold to ~3e-26.
_KENCARP4_EXPLICIT = Fraction(1, 10**24)
# RODAS5P is printed to 16–17 significant digits; converting it to the classical form through
# Γ = (diag(1/γ) - C)⁻¹, with C as large as 165, lifts the rounding to ~2e-14 in the conditions.
_SEVENTEEN_DIGITS = Fraction(1, 10**12)
# A condition beyond the claimed order fails by far more than any rounding above.
_FAILS = Fraction(1, 10**6)

ESDIRKS = [
    pytest.param(KVAERNO3, 3, 2, _FORTY_DIGITS, id="Kvaerno3"),
    pytest.param(KVAERNO5, 5, 4, _FORTY_DIGITS, id="Kvaerno5"),
    pytest.param(KENCARP4, 4, 3, Fraction(0), id="KenCarp4"),
]


def _embedded(tab) -> list[Fraction]:
    return [b - e for b, e in zip(tab.b, tab.b_error)]


def _n_conditions(order: int) -> int:
    return sum(len(trees(n)) for n in range(1, order + 1))


def _assert_order(a, b, order: int, tol: Fraction) -> None:
    """All conditions up to `order` hold within `tol`, and some condition of order + 1 fails."""
    residuals = condition_residuals(a, b, order + 1)
    n = _n_conditions(order)
    bad = [(tree, float(r)) for tree, r in residuals[:n] if abs(r) > tol]
    assert not bad, f"order {order} conditions fail: {bad[:3]}"
    assert any(abs(r) > _FAILS for _, r in residuals[n:]), f"the order is higher than {order}"


# ---------------------------------------------------------------------------------------------
# ESDIRK tableaus


@pytest.mark.parametrize("tab, order, embedded, tol", ESDIRKS)
def test_esdirk_order_conditions(tab, order, embedded, tol):
    # Row i of `a` holds a_i,0..a_i,i, the diagonal included, which is what stage_weights sums.
    _assert_order(tab.a, tab.b, order, tol)
    _assert_order(tab.a, _embedded(tab), embedded, tol)


@pytest.mark.parametrize("tab, order, embedded, tol", ESDIRKS)
def test_esdirk_structure(tab, order, embedded, tol):
    s = tab.stages
    assert tab.a[0] == (0,) and tab.c[0] == 0
    assert all(abs(sum(row) - c) <= tol for row, c in zip(tab.a, tab.c))
    assert tab.stiffly_accurate and tab.c[-1] == 1
    assert abs(sum(tab.b_error)) <= tol
    # Stage order 2: each stage integrates t exactly, Σ_j a_ij c_j = c_i²/2.
    assert all(abs(sum(tab.a[i][j] * tab.c[j] for j in range(i + 1)) - tab.c[i] ** 2 / 2) <= tol for i in range(s))


@pytest.mark.parametrize("tab", [KVAERNO3, KVAERNO5], ids=["Kvaerno3", "Kvaerno5"])
def test_kvaerno_embedded_solution_is_the_last_but_one_stage(tab):
    assert tuple(_embedded(tab)) == (*tab.a[-2], 0)


def _stability(tab, z: complex) -> complex:
    a = np.array([[float(x) for x in row] + [0.0] * (tab.stages - len(row)) for row in tab.a])
    b = np.array([float(x) for x in tab.b])
    ones = np.ones(tab.stages)
    return 1 + z * b @ np.linalg.solve(np.eye(tab.stages) - z * a, ones)


@pytest.mark.parametrize("tab, order, embedded, tol", ESDIRKS)
def test_esdirk_is_l_stable(tab, order, embedded, tol):
    # R(∞) exactly: as z → ∞ the stages Y_i = 1 + z Σ_j a_ij Y_j stay bounded only if
    # Σ_{j≤i} a_ij Y_j = 0, so Y_1 = 1 and Y_i = -Σ_{j<i} a_ij Y_j / γ; a stiffly accurate
    # method returns the last stage. With γ cut to 10 digits, Kvaerno3 gives 6e-11 here.
    limit = [Fraction(1)]
    for i in range(1, tab.stages):
        limit.append(-sum(tab.a[i][j] * limit[j] for j in range(i)) / tab.gamma)
    assert abs(limit[-1]) <= tol
    # A-stability: the poles 1/γ lie in the right half-plane, so by the maximum principle
    # |R| ≤ 1 on the imaginary axis is enough.
    assert tab.gamma > 0
    ys = np.concatenate([[0.0], np.logspace(-3, 6, 901)])
    assert max(abs(_stability(tab, 1j * y)) for y in ys) <= 1 + 1e-12
    assert abs(_stability(tab, -1e8)) < 1e-6


# ---------------------------------------------------------------------------------------------
# KenCarp4 as an additive (IMEX) pair


def test_kencarp4_explicit_tableau():
    tab = KENCARP4
    ex = tab.explicit_a
    assert ex[0] == ()
    assert all(abs(sum(row) - c) <= _KENCARP4_EXPLICIT for row, c in zip(ex, tab.c))
    _assert_order(ex, tab.b, 4, _KENCARP4_EXPLICIT)
    _assert_order(ex, _embedded(tab), 3, _KENCARP4_EXPLICIT)


def _colourings(tree: tuple):
    """`tree` with each non-root vertex coloured 0 (explicit) or 1 (implicit), in every way."""
    choices = [[(colour, sub) for colour in (0, 1) for sub in _colourings(child)] for child in tree]
    yield from itertools.product(*choices)


def _coloured_weights(tableaus, tree: tuple) -> list:
    # A vertex of colour k is an evaluation of f^[k], reached from its parent through a^[k].
    s = len(tableaus[0])
    g = [Fraction(1)] * s
    for colour, child in tree:
        a, gc = tableaus[colour], _coloured_weights(tableaus, child)
        g = [g[i] * sum(a[i][j] * gc[j] for j in range(len(a[i]))) for i in range(s)]
    return g


def test_kencarp4_coupling_conditions():
    # An additive method y1 = y0 + h Σ b_i (f^E(Y_i) + f^I(Y_i)) has order p when, for every tree of
    # up to p vertices and every colouring of its non-root vertices, Σ b_i Φ_i = 1/γ(t)
    # (Kennedy & Carpenter 2003, §2.2). The two-coloured trees include the one-coloured ones.
    tableaus = (KENCARP4.explicit_a, KENCARP4.a)
    for weights, order in ((KENCARP4.b, 4), (_embedded(KENCARP4), 3)):
        for size in range(1, order + 1):
            for tree in trees(size):
                for coloured in _colourings(tree):
                    phi = sum(w * g for w, g in zip(weights, _coloured_weights(tableaus, coloured)))
                    assert abs(phi - Fraction(1, density(tree))) <= _KENCARP4_EXPLICIT, (order, coloured)
    # Some of them written out. With one c and one b for both tableaus, the coupling conditions
    # of order ≤ 3 coincide with the plain ones, Σ b_i a^E_ij c_j = Σ b_i a^I_ij c_j = 1/6; the
    # first genuinely coupled ones are of order 4, e.g. Σ b_i a^E_ij a^I_jk c_k = 1/24.
    b, c, aE, aI = KENCARP4.b, KENCARP4.c, KENCARP4.explicit_a, KENCARP4.a

    def times(a, v):
        return [sum(a[i][j] * v[j] for j in range(len(a[i]))) for i in range(len(v))]

    def dot(u, v):
        return sum(x * y for x, y in zip(u, v))

    assert abs(dot(b, times(aE, c)) - Fraction(1, 6)) <= _KENCARP4_EXPLICIT
    assert dot(b, times(aI, c)) == Fraction(1, 6)
    assert abs(dot(b, times(aE, times(aI, c))) - Fraction(1, 24)) <= _KENCARP4_EXPLICIT
    assert abs(dot(b, times(aI, times(aE, c))) - Fraction(1, 24)) <= _KENCARP4_EXPLICIT
    c2 = [x * x for x in c]
    assert abs(dot([bi * ci for bi, ci in zip(b, c)], times(aE, c)) - Fraction(1, 8)) <= _KENCARP4_EXPLICIT
    assert abs(dot(b, times(aE, c2)) - Fraction(1, 12)) <= _KENCARP4_EXPLICIT


# ---------------------------------------------------------------------------------------------
# RODAS5P in the classical form of Hairer & Wanner, Solving ODEs II, §IV.7


def _classical(tab):
    """Γ (lower triangular, diagonal γ), α (strictly lower), b and b̂ from the transformed form."""
    s = tab.stages
    inverse = [
        [(1 / tab.gamma if i == j else -tab.C[i][j] if j < i else Fraction(0)) for j in range(s)] for i in range(s)
    ]
    big_gamma = [[Fraction(0)] * s for _ in range(s)]
    for j in range(s):  # forward substitution, column by column
        big_gamma[j][j] = 1 / inverse[j][j]
        for i in range(j + 1, s):
            big_gamma[i][j] = -sum(inverse[i][k] * big_gamma[k][j] for k in range(j, i)) / inverse[i][i]

    def times_gamma(row):
        return [sum(row[k] * big_gamma[k][j] for k in range(len(row))) for j in range(s)]

    alpha = [times_gamma(row) for row in tab.a]
    b = times_gamma(tab.m)
    b_hat = times_gamma([m - e for m, e in zip(tab.m, tab.e)])
    return big_gamma, alpha, b, b_hat


_ROS = _classical(RODAS5P)


def test_rodas5p_classical_form():
    big_gamma, alpha, _, _ = _ROS
    tab = RODAS5P
    assert all(big_gamma[i][i] == tab.gamma for i in range(tab.stages))
    # The nodes are α's row sums and the ∂f/∂t weights Γ's: c_i = α_i, d_i = γ_i.
    assert all(abs(sum(row) - c) <= _SEVENTEEN_DIGITS for row, c in zip(alpha, tab.c))
    assert all(abs(sum(row) - d) <= _SEVENTEEN_DIGITS for row, d in zip(big_gamma, tab.d))
    # Stiffly accurate: y1 is the last stage's argument plus its correction, err its last correction.
    assert tab.m == (*tab.a[-1], 1) and tab.e == (0,) * (tab.stages - 1) + (1,)


def test_rodas5p_hairer_wanner_conditions():
    # Table IV.7.1 with β_ij = α_ij + γ_ij (j < i), β'_i = Σ_{j<i} β_ij, α_i = Σ_j α_ij.
    big_gamma, alpha, b, b_hat = _ROS
    g, s = RODAS5P.gamma, RODAS5P.stages
    beta = [[alpha[i][j] + big_gamma[i][j] if j < i else Fraction(0) for j in range(s)] for i in range(s)]
    beta1 = [sum(row) for row in beta]
    alpha1 = [sum(row) for row in alpha]
    S = range(s)
    for w in (b, b_hat):
        residuals = [
            sum(w) - 1,
            sum(w[i] * beta1[i] for i in S) - (Fraction(1, 2) - g),
            sum(w[i] * alpha1[i] ** 2 for i in S) - Fraction(1, 3),
            sum(w[i] * beta[i][j] * beta1[j] for i in S for j in S) - (Fraction(1, 6) - g + g**2),
            sum(w[i] * alpha1[i] ** 3 for i in S) - Fraction(1, 4),
            sum(w[i] * alpha1[i] * alpha[i][j] * beta1[j] for i in S for j in S) - (Fraction(1, 8) - g / 3),
            sum(w[i] * beta[i][j] * alpha1[j] ** 2 for i in S for j in S) - (Fraction(1, 12) - g / 3),
            sum(w[i] * beta[i][j] * beta[j][k] * beta1[k] for i in S for j in S for k in S)
            - (Fraction(1, 24) - g / 2 + Fraction(3, 2) * g**2 - g**3),
        ]
        assert all(abs(r) <= _SEVENTEEN_DIGITS for r in residuals), [float(r) for r in residuals]


def _rosenbrock_weights(tree: tuple) -> list:
    """Ψ_i(t) with Σ_i b_i Ψ_i(t) = 1/γ(t) the order condition of `tree`, for any order.

    With the exact Jacobian the stages are k_i = h f(y0 + Σ_j α_ij k_j) + h J Σ_{j≤i} γ_ij k_j;
    the J term feeds only the vertices with exactly one child, which therefore sum through
    α + Γ (its diagonal γ included), and every other vertex through α. Moving the γ terms to the
    right-hand side gives the polynomials in γ of Table IV.7.1.
    """
    big_gamma, alpha, _, _ = _ROS
    s = len(alpha)
    if len(tree) == 1:
        g = _rosenbrock_weights(tree[0])
        return [sum((alpha[i][j] + big_gamma[i][j]) * g[j] for j in range(s)) for i in range(s)]
    out = [Fraction(1)] * s
    for child in tree:
        g = _rosenbrock_weights(child)
        out = [out[i] * sum(alpha[i][j] * g[j] for j in range(s)) for i in range(s)]
    return out


def _rosenbrock_residuals(weights, order: int, theta=Fraction(1)) -> list[tuple[int, Fraction]]:
    return [
        (size, sum(w * p for w, p in zip(weights, _rosenbrock_weights(tree))) - theta**size / density(tree))
        for size in range(1, order + 1)
        for tree in trees(size)
    ]


@pytest.mark.parametrize("which, order", [("b", 5), ("b_hat", 4)])
def test_rodas5p_tree_conditions(which, order):
    _, _, b, b_hat = _ROS
    residuals = _rosenbrock_residuals(b if which == "b" else b_hat, order + 1)
    assert all(abs(r) <= _SEVENTEEN_DIGITS for size, r in residuals if size <= order)
    assert any(abs(r) > _FAILS for size, r in residuals if size == order + 1)


def _dense_weights(theta: Fraction) -> list[Fraction]:
    """Classical weights b(θ) of y(t + θh) = y0 + Σ_i b_i(θ) k_i, from the H rows."""
    tab, big_gamma = RODAS5P, _ROS[0]
    w = [
        theta * tab.m[i] + theta * (1 - theta) * sum(theta**r * row[i] for r, row in enumerate(tab.H))
        for i in range(tab.stages)
    ]
    return [sum(w[k] * big_gamma[k][j] for k in range(tab.stages)) for j in range(tab.stages)]


def test_rodas5p_dense_output_conditions():
    # The last column of H weighs u_8 = err, whose classical weights e Γ = b - b̂ satisfy every
    # condition up to order 4 with residual 0; no condition here (nor the rates below) can see
    # that column, which rests on the transcription alone.
    for theta in (Fraction(3, 10), Fraction(7, 10)):
        residuals = _rosenbrock_residuals(_dense_weights(theta), 5, theta)
        assert all(abs(r) <= _SEVENTEEN_DIGITS for size, r in residuals if size <= 4), theta
        assert any(abs(r) > _FAILS for size, r in residuals if size == 5), theta
    assert _dense_weights(Fraction(1)) == _ROS[2]


# ---------------------------------------------------------------------------------------------
# Local errors of one step, in numpy, on a nonlinear, non-autonomous problem with a known solution:
# f(t, y) = g(y) - g(Y(t)) + Y'(t) has y = Y(t) through y(t0) = Y(t0).


def _exact(t):
    return np.array([1 + 0.5 * np.sin(t), np.cos(t)])


def _exact_dot(t):
    return np.array([0.5 * np.cos(t), -np.sin(t)])


def _exact_ddot(t):
    return np.array([-0.5 * np.sin(t), -np.cos(t)])


def _g(y):
    return np.array([y[1] - 0.5 * y[0] ** 2, -0.5 * y[0] * y[1]])


def _g_jac(y):
    return np.array([[-y[0], 1.0], [-0.5 * y[1], -0.5 * y[0]]])


def _f(t, y):
    return _g(y) - _g(_exact(t)) + _exact_dot(t)


def _f_jac(t, y):
    return _g_jac(y)


def _f_t(t, y):
    return -_g_jac(_exact(t)) @ _exact_dot(t) + _exact_ddot(t)


# For KenCarp4 as an IMEX pair: both parts nonlinear in y, so the coupling terms all appear.
def _g_explicit(y):
    return np.array([0.5 * y[0] * y[1], np.sin(y[0])])


def _f_implicit(t, y):
    return _g(y)


def _f_explicit(t, y):
    return _g_explicit(y) - _g(_exact(t)) - _g_explicit(_exact(t)) + _exact_dot(t)


# Steps h = 0.2·2^-k: the 6th-order local errors fall to ~2e-13 at h = 0.025, still 100 times
# the ~1e-15 of float64 rounding in these steps, and from h = 0.2 on they are close enough to their
# asymptotic rate that a fit over four steps lands within 0.15 of it. The error of a step is the
# largest over several starting points, so that no slope hangs on one point where the leading
# error coefficient happens to be small.
_STEPS = 0.2 * 2.0 ** -np.arange(4)
_STARTS = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)


def _slope(errors) -> float:
    return float(np.polyfit(np.log(_STEPS), np.log(errors), 1)[0])


def _rosenbrock_step(tab, t0, y0, h, thetas):
    """One step of the transformed form (the module docstring of implicit_tableaus)."""
    s = tab.stages
    a, C = [[float(x) for x in row] for row in tab.a], [[float(x) for x in row] for row in tab.C]
    W = np.eye(len(y0)) / (h * float(tab.gamma)) - _f_jac(t0, y0)
    f_t = _f_t(t0, y0)
    u = []
    for i in range(s):
        y_i = y0 + sum(a[i][j] * u[j] for j in range(i))
        rhs = _f(t0 + float(tab.c[i]) * h, y_i) + sum(C[i][j] / h * u[j] for j in range(i)) + float(tab.d[i]) * h * f_t
        u.append(np.linalg.solve(W, rhs))
    y1 = y0 + sum(float(m) * u_i for m, u_i in zip(tab.m, u))
    err = sum(float(e) * u_i for e, u_i in zip(tab.e, u))
    K = [sum(float(x) * u_i for x, u_i in zip(row, u)) for row in tab.H]
    dense = [(1 - th) * y0 + th * (y1 + (1 - th) * sum(th**r * k for r, k in enumerate(K))) for th in thetas]
    return y1, y1 - err, dense


def test_rodas5p_local_error_rates():
    thetas = (0.3, 0.7, 1.0)
    errors = []
    for h in _STEPS:
        worst = np.zeros(4)
        for t0 in _STARTS:
            y0 = _exact(t0)
            y1, y1_hat, dense = _rosenbrock_step(RODAS5P, t0, y0, h, thetas)
            np.testing.assert_array_equal(dense[2], y1)  # at θ = 1 the dense output is the step
            here = [np.linalg.norm(y - _exact(t0 + th * h)) for y, th in zip((y1, y1_hat, *dense[:2]), (1, 1, *thetas))]
            worst = np.maximum(worst, here)
        errors.append(worst)
    errors = np.array(errors)
    # Order 5, embedded order 4, dense output of order 4: local errors O(h⁶), O(h⁵), O(h⁵).
    for column, rate in zip(errors.T, (6, 5, 5, 5)):
        assert abs(_slope(column) - rate) < 0.3, (rate, _slope(column), column)


def _esdirk_step(tab, t0, y0, h, f_implicit, jac, f_explicit=None):
    """One step; stage i solves Y_i = y0 + h Σ_{j<i} (a_ij k_j + â_ij k̂_j) + hγ f_I(t_i, Y_i) by Newton."""
    s, gamma = tab.stages, float(tab.gamma)
    c = [float(x) for x in tab.c]
    a = [[float(x) for x in row] for row in tab.a]
    ex = [[float(x) for x in row] for row in tab.explicit_a] if f_explicit else None
    k_implicit, k_explicit = [], []
    for i in range(s):
        t_i = t0 + c[i] * h
        base = y0 + h * sum(a[i][j] * k_implicit[j] for j in range(i))
        if ex:
            base = base + h * sum(ex[i][j] * k_explicit[j] for j in range(i))
        y_i = base
        if i > 0:
            for _ in range(50):
                residual = y_i - base - h * gamma * f_implicit(t_i, y_i)
                delta = np.linalg.solve(np.eye(len(y0)) - h * gamma * jac(t_i, y_i), residual)
                y_i = y_i - delta
                if np.abs(delta).max() <= 1e-15:
                    break
            else:
                raise AssertionError("Newton did not converge")
        k_implicit.append(f_implicit(t_i, y_i))
        k_explicit.append(f_explicit(t_i, y_i) if ex else 0.0)
    k = [ki + ke for ki, ke in zip(k_implicit, k_explicit)]
    y1 = y0 + h * sum(float(b) * k_i for b, k_i in zip(tab.b, k))
    err = h * sum(float(e) * k_i for e, k_i in zip(tab.b_error, k))
    return y1, y1 - err


def _esdirk_rates(tab, **problem):
    errors = []
    for h in _STEPS:
        worst = np.zeros(2)
        for t0 in _STARTS:
            y1, y1_hat = _esdirk_step(tab, t0, _exact(t0), h, **problem)
            worst = np.maximum(worst, [np.linalg.norm(y - _exact(t0 + h)) for y in (y1, y1_hat)])
        errors.append(worst)
    return [_slope(column) for column in np.array(errors).T]


@pytest.mark.parametrize("tab, order, embedded, tol", ESDIRKS)
def test_esdirk_local_error_rates(tab, order, embedded, tol):
    rates = _esdirk_rates(tab, f_implicit=_f, jac=_f_jac)
    assert abs(rates[0] - (order + 1)) < 0.3 and abs(rates[1] - (embedded + 1)) < 0.3, rates


def test_kencarp4_imex_local_error_rates():
    rates = _esdirk_rates(KENCARP4, f_implicit=_f_implicit, jac=_f_jac, f_explicit=_f_explicit)
    assert abs(rates[0] - 5) < 0.3 and abs(rates[1] - 4) < 0.3, rates
