"""Algebraic checks of every tableau: Butcher's order conditions, exactly where the tableau is
exact, and the same conditions for embedded methods and dense-output interpolants."""

from __future__ import annotations

import functools
from fractions import Fraction

import pytest

import pyode
from pyode.solvers.tableau import ButcherTableau

# (solver, order, embedded orders, interpolant order)
CASES = [
    (pyode.Euler(), 1, [], None),
    (pyode.Midpoint(), 2, [], None),
    (pyode.Heun(), 2, [1], None),
    (pyode.RK4(), 4, [], None),
    (pyode.BS3(), 3, [2], None),
    (pyode.DP5(), 5, [4], 4),
    (pyode.Tsit5(), 5, [4], 4),
    (pyode.DP8(), 8, [5, 3], 7),
]


@functools.cache
def trees(order: int) -> tuple:
    """Rooted trees with `order` vertices, each a sorted tuple of its children's subtrees."""
    if order == 1:
        return ((),)
    out = set()

    def forests(n: int, largest: tuple | None):
        # Multisets of trees with n vertices in total, as non-increasing sequences.
        if n == 0:
            yield ()
            return
        for k in range(n, 0, -1):
            for tree in trees(k):
                if largest is not None and (k, tree) > largest:
                    continue
                for rest in forests(n - k, (k, tree)):
                    yield ((k, tree), *rest)

    for forest in forests(order - 1, None):
        out.add(tuple(sorted(tree for _, tree in forest)))
    return tuple(sorted(out))


def gamma(tree: tuple) -> int:
    size = _size(tree)
    out = size
    for child in tree:
        out *= gamma(child)
    return out


def _size(tree: tuple) -> int:
    return 1 + sum(_size(c) for c in tree)


def stage_weights(a, tree: tuple) -> list:
    """g_i(t) = Π_children (A g(child))_i: the elementary weight of `tree` at each stage."""
    s = len(a)
    g = [Fraction(1)] * s
    for child in tree:
        gc = stage_weights(a, child)
        g = [g[i] * sum(a[i][j] * gc[j] for j in range(len(a[i]))) for i in range(s)]
    return g


def condition_residuals(a, b, order: int, theta=Fraction(1)) -> list[tuple[tuple, object]]:
    """Φ(t) - θ^|t| / γ(t) for every tree of size ≤ order (b may be the weights at θ)."""
    out = []
    for size in range(1, order + 1):
        for tree in trees(size):
            g = stage_weights(a, tree)
            phi = sum(bi * gi for bi, gi in zip(b, g))
            out.append((tree, phi - theta**size / gamma(tree)))
    return out


def test_tree_counts():
    # OEIS A000081: 1, 1, 2, 4, 9, 20, 48, 115 rooted trees with 1..8 vertices.
    assert [len(trees(n)) for n in range(1, 9)] == [1, 1, 2, 4, 9, 20, 48, 115]


def _exact_enough(x) -> bool:
    # DP5, BS3, ... are exact Fractions; Tsit5 and DP8 are printed to 20-30 digits.
    return abs(x) < Fraction(1, 10**13)


@pytest.mark.parametrize("solver, order, embedded, _", CASES, ids=lambda c: repr(c))
def test_order_conditions(solver, order, embedded, _):
    tab = solver.tableau
    assert solver.order == order
    residuals = condition_residuals(tab.a, tab.b, order)
    bad = [(tree, float(r)) for tree, r in residuals if not _exact_enough(r)]
    assert not bad, f"{solver!r} fails order conditions: {bad[:3]}"
    # And it is not of higher order than claimed (the claim is sharp).
    if order < 8:
        higher = condition_residuals(tab.a, tab.b, order + 1)[len(residuals) :]
        assert any(not _exact_enough(r) for _, r in higher)


@pytest.mark.parametrize("solver, order, embedded, _", [c for c in CASES if c[2]], ids=lambda c: repr(c))
def test_embedded_orders(solver, order, embedded, _):
    tab = solver.tableau
    for errors, emb_order in zip(tab.b_error, embedded):
        b_hat = [b - e for b, e in zip(tab.b, errors)]
        residuals = condition_residuals(tab.a, b_hat, emb_order)
        assert all(_exact_enough(r) for _, r in residuals), f"{solver!r}: embedded order {emb_order} fails"
        higher = condition_residuals(tab.a, b_hat, emb_order + 1)[len(residuals) :]
        assert any(not _exact_enough(r) for _, r in higher)
    if not isinstance(solver, pyode.DP8):  # DOP853 steers with exponent 1/8, not 1/(5+1)
        assert solver.error_order == max(embedded)


def _extended_a(solver):
    """The tableau's a, extended by k_{s+1} = f(t+h, y1) and the dense-output stages."""
    tab = solver.tableau
    a = [list(row) for row in tab.a]
    if solver.dense_stages:
        a.append(list(tab.b))
        for _, row in solver.dense_stages:
            a.append([Fraction(x) for x in row])
    return a


@pytest.mark.parametrize("solver, order, _, dense_order", [c for c in CASES if c[3]], ids=lambda c: repr(c))
def test_interpolant_conditions(solver, order, _, dense_order):
    interp = solver.interpolant
    assert interp.order == dense_order
    a = _extended_a(solver)
    # At θ = 1 the interpolant is the step itself.
    at_one = interp.at(Fraction(1))
    assert all(
        abs(x - (solver.tableau.b[j] if j < solver.tableau.stages else 0)) < Fraction(1, 10**13)
        for j, x in enumerate(at_one)
    )
    # Continuous order conditions: Σ_j b_j(θ) Φ_j(t) = θ^|t| / γ(t) for |t| ≤ dense order.
    tol = Fraction(1, 10**12)
    for theta in (Fraction(1, 7), Fraction(1, 2), Fraction(5, 6)):
        residuals = condition_residuals(a, interp.at(theta), dense_order, theta)
        bad = [(tree, float(r)) for tree, r in residuals if abs(r) > tol]
        assert not bad, f"{solver!r} interpolant at θ={theta}: {bad[:3]}"


def test_fsal_is_derived():
    assert pyode.DP5.tableau.fsal and pyode.Tsit5.tableau.fsal and pyode.BS3.tableau.fsal
    assert not any(s.tableau.fsal for s in (pyode.Euler, pyode.Midpoint, pyode.Heun, pyode.RK4, pyode.DP8))


def test_tableau_validation():
    with pytest.raises(ValueError, match="row 1 of a sums"):
        ButcherTableau.from_rows(c=[0, Fraction(1, 2)], a=[[], [1]], b=[0, 1])
    with pytest.raises(ValueError, match="weights b sum"):
        ButcherTableau.from_rows(c=[0, 1], a=[[], [1]], b=[1, 1])
    with pytest.raises(ValueError, match="row 1 has 2 entries"):
        ButcherTableau.from_rows(c=[0, 1], a=[[], [1, 0]], b=[0, 1])
    with pytest.raises(TypeError, match="is a float"):
        ButcherTableau.from_rows(c=[0, 0.5], a=[[], [0.5]], b=[0, 1])
    with pytest.raises(ValueError, match="error weights sum"):
        ButcherTableau.from_rows(c=[0, 1], a=[[], [1]], b=[Fraction(1, 2)] * 2, b_error=[[1, 0]])
