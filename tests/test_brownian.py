"""pyode.brownian: the law of the increments and Lévy areas, consistency of repeated queries, bounded
memory, the torchsde wrapper, and argument checks.

Statistical tests use fixed seeds, so they are deterministic; each has a threshold (KS p-value 1e-3,
or a few standard errors 1/√N) that a wrong variance, a missing factor or a correlation would fail.
"""

from __future__ import annotations

import itertools
import math
import random
import tracemalloc

import pytest
import torch
from scipy import stats

from pyode import brownian
from pyode.brownian import (
    AbstractBrownian,
    BrownianIncrement,
    BrownianInterval,
    VirtualBrownianTree,
    as_brownian,
)

CLASSES = [VirtualBrownianTree, BrownianInterval]
DTYPES = [torch.float32, torch.float64]
# Not aligned with any dyadic tree, one aligned, one short, one at each end of [0, 1].
INTERVALS = [(0.0, 1.0), (0.1234, 0.6789), (0.25, 0.5), (0.40001, 0.40123), (0.0, 0.013), (0.97, 1.0)]


def _normalized(x: torch.Tensor, var: float) -> torch.Tensor:
    return (x.double() / math.sqrt(var)).flatten()


def _assert_standard_normal(x: torch.Tensor, what: str) -> None:
    p = stats.kstest(x.numpy(), "norm").pvalue
    assert p > 1e-3, f"{what}: KS p-value {p:.2g} against N(0, 1)"


def _corr(x: torch.Tensor, y: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([x.double().flatten(), y.double().flatten()]))[0, 1].item()


# ---- the law of the increments -----------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_increments_are_normal(cls, dtype):
    samples = {st: [] for st in INTERVALS}
    for seed in range(6):
        bm = cls(0.0, 1.0, (600,), seed=seed, dtype=dtype)
        for s, t in INTERVALS:
            samples[s, t].append(bm(s, t))
    for (s, t), xs in samples.items():
        _assert_standard_normal(_normalized(torch.cat(xs), t - s), f"{cls.__name__}({s}, {t}) {dtype}")


@pytest.mark.parametrize("cls", CLASSES)
def test_disjoint_increments_are_independent_and_add_up(cls):
    n = 20_000
    bm = cls(0.0, 2.0, (n,), seed=11, dtype=torch.float64)
    times = [0.0, 0.3141, 0.5, 1.2718, 1.9999, 2.0]
    dws = [bm(a, b) for a, b in itertools.pairwise(times)]
    bound = 4 / math.sqrt(n)  # the sample correlation of independent normals has sd ≈ 1/√N
    for i in range(len(dws)):
        for j in range(i + 1, len(dws)):
            assert abs(_corr(dws[i], dws[j])) < bound, (i, j)
    total = sum(dws)
    # The sample variance of N normals has relative sd √(2/N).
    assert abs(total.var().item() / 2.0 - 1) < 5 * math.sqrt(2 / n)
    assert abs((dws[0] + dws[1]).var().item() / 0.5 - 1) < 5 * math.sqrt(2 / n)


@pytest.mark.parametrize("levy_area", [False, True])
def test_brownian_interval_queried_in_random_order_is_brownian(levy_area):
    # Random query orders split intervals off-centre both ways: the left and the right bridge samples.
    rng = random.Random(0)
    times = sorted({0.0, 1.0, *(round(rng.random(), 6) for _ in range(40))})
    dws, hs = [], []
    for seed in range(3):
        bm = BrownianInterval(0.0, 1.0, (500,), seed=seed, dtype=torch.float64, levy_area=levy_area, cache_size=8)
        queries = list(itertools.pairwise(times))
        rng.shuffle(queries)
        for s, t in queries:
            bm.evaluate(rng.choice(times))  # more splits, in no particular order
            if levy_area:
                dW, H = bm.increment(s, t)
                hs.append(_normalized(H, (t - s) / 12))
            else:
                dW = bm(s, t)
            dws.append(_normalized(dW, t - s))
    _assert_standard_normal(torch.cat(dws), "dW")
    if levy_area:
        _assert_standard_normal(torch.cat(hs), "H")
    # and the path through them: W(1) - W(0) is the sum of the pieces, each N(0, dt), independent
    bm = BrownianInterval(0.0, 1.0, (10_000,), seed=9, dtype=torch.float64, levy_area=levy_area)
    queries = list(itertools.pairwise(times))
    rng.shuffle(queries)
    pieces = {q: bm(*q) for q in queries}
    ordered = [pieces[q] for q in itertools.pairwise(times)]
    for a, b in itertools.pairwise(ordered):
        assert abs(_corr(a, b)) < 4 / math.sqrt(10_000)
    torch.testing.assert_close(sum(ordered), bm(0.0, 1.0), rtol=0, atol=1e-12)


# ---- the space-time Lévy area ------------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_levy_area_is_normal_and_independent_of_the_increment(cls, dtype):
    n = 4000
    for s, t in INTERVALS:
        bm = cls(0.0, 1.0, (n,), seed=3, dtype=dtype, levy_area=True)
        inc = bm.increment(s, t)
        assert isinstance(inc, BrownianIncrement)
        _assert_standard_normal(_normalized(inc.H, (t - s) / 12), f"H({s}, {t})")
        _assert_standard_normal(_normalized(inc.dW, t - s), f"dW({s}, {t})")
        assert abs(_corr(inc.H, inc.dW)) < 4 / math.sqrt(n)
        torch.testing.assert_close(inc.dW, bm(s, t), rtol=0, atol=0)


@pytest.mark.parametrize("cls", CLASSES)
def test_levy_area_is_additive(cls):
    # h_su(ΔW_su/2 + H_su) = ∫_s^u (W_r - W_s) dr splits at r into the two pieces plus h_ru·ΔW_sr.
    bm = cls(0.0, 1.0, (1000,), seed=5, dtype=torch.float64, levy_area=True)
    for s, r, u in [(0.1, 0.37, 0.9), (0.0, 0.5, 1.0), (0.4, 0.40002, 0.4001), (0.2, 0.9, 0.95)]:
        su, sr, ru = bm.increment(s, u), bm.increment(s, r), bm.increment(r, u)
        lhs = (u - s) * (su.dW / 2 + su.H)
        rhs = (r - s) * (sr.dW / 2 + sr.H) + (u - r) * (ru.dW / 2 + ru.H) + (u - r) * sr.dW
        torch.testing.assert_close(lhs, rhs, rtol=0, atol=1e-13)
        torch.testing.assert_close(su.dW, sr.dW + ru.dW, rtol=0, atol=1e-13)


@pytest.mark.parametrize("cls", CLASSES)
def test_reversed_increment_negates_dW_and_keeps_H(cls):
    bm = cls(0.0, 1.0, (50,), seed=1, levy_area=True)
    forward, backward = bm.increment(0.2, 0.7), bm.increment(0.7, 0.2)
    assert torch.equal(backward.dW, -forward.dW)
    assert torch.equal(backward.H, forward.H)
    zero = bm.increment(0.3, 0.3)
    assert torch.equal(zero.dW, torch.zeros(50)) and torch.equal(zero.H, torch.zeros(50))


@pytest.mark.parametrize("cls", CLASSES)
def test_levy_area_keeps_its_digits_in_float32(cls, monkeypatch):
    # The same normals (drawn in float64) drive a float32 and a float64 path; a short step late in
    # the interval must agree to float32 precision. Absolute ∫W from t0 would lose (T/h)^{3/2}·ε ≈ 6%.
    def normals(bm, seed):
        g = torch.Generator().manual_seed(seed)
        return torch.randn((bm._k, *bm.shape), generator=g, dtype=torch.float64).to(bm.dtype)

    monkeypatch.setattr(brownian, "_normals", normals)
    s, h = 0.9987, 1e-4
    incs = {}
    for dtype in DTYPES:
        bm = cls(0.0, 1.0, (2000,), seed=8, dtype=dtype, levy_area=True)
        bm(0.0, 0.5), bm(0.5, s)  # a history before the step
        incs[dtype] = bm.increment(s, s + h)
    assert incs[torch.float32].dW.dtype == torch.float32
    dW_err = (incs[torch.float32].dW.double() - incs[torch.float64].dW).abs().max().item() / math.sqrt(h)
    H_err = (incs[torch.float32].H.double() - incs[torch.float64].H).abs().max().item() / math.sqrt(h / 12)
    assert dW_err < 1e-5 and H_err < 1e-4, (dW_err, H_err)


# ---- bridge coefficients, against generic Gaussian conditioning ---------------------------------


@pytest.mark.parametrize("u", [0.5, 0.1, 0.37, 0.9, 1e-6, 1 - 1e-6])
@pytest.mark.parametrize("h", [1.0, 3e-4])
def test_bridge_coefficients_are_the_gaussian_conditional(u, h):
    # Pieces (w_l, H_l, w_r, H_r) are independent with variances (τ, τ/12, σ, σ/12); the parent
    # (w, ∫) and the children (w, ∫) are linear in them. Condition each child on the parent.
    tau, sigma = u * h, (1 - u) * h
    cov = torch.diag(torch.tensor([tau, tau / 12, sigma, sigma / 12], dtype=torch.float64))
    left = torch.tensor([[1, 0, 0, 0], [tau / 2, tau, 0, 0]], dtype=torch.float64)
    right = torch.tensor([[0, 0, 1, 0], [0, 0, sigma / 2, sigma]], dtype=torch.float64)
    parent = left + right
    parent[1] += sigma * left[0]  # ∫_a^b = ∫_left + ∫_right + σ·w_l
    for child, coefficients in [(left, brownian._left_bridge(h, u, True)), (right, brownian._right_bridge(h, u, True))]:
        c = coefficients
        A = torch.tensor([[c.a00, c.a01], [c.a10, c.a11]], dtype=torch.float64)
        B = torch.tensor([[c.b00, c.b01], [c.b10, c.b11]], dtype=torch.float64)
        cross = child @ cov @ parent.T
        gain = cross @ torch.linalg.inv(parent @ cov @ parent.T)
        conditional = child @ cov @ child.T - gain @ cross.T
        scale = torch.tensor([h**0.5, h**1.5], dtype=torch.float64)
        torch.testing.assert_close(A * scale[None, :] / scale[:, None], gain * scale[None, :] / scale[:, None])
        torch.testing.assert_close(B @ B.T / torch.outer(scale, scale), conditional / torch.outer(scale, scale))
    plain = brownian._left_bridge(h, u, False)
    assert plain.a00 == pytest.approx(u) and plain.b00**2 == pytest.approx(h * u * (1 - u))


# ---- consistency -------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("levy_area", [False, True])
def test_repeated_queries_agree_bit_for_bit_in_any_order(cls, levy_area):
    # A cache of 2 forces recomputation of almost every value.
    rng = random.Random(1)
    queries = [(rng.random(), rng.random()) for _ in range(30)] + [(0.0, 1.0), (0.5, 0.25), (0.999, 1.0)]
    bm = cls(0.0, 1.0, (7, 3), seed=2, levy_area=levy_area, cache_size=2)
    first = [bm(s, t) for s, t in queries]
    for i in rng.sample(range(len(queries)), len(queries)):
        assert torch.equal(bm(*queries[i]), first[i])
    other = cls(0.0, 1.0, (7, 3), seed=2, levy_area=levy_area)  # same seed, same queries, default cache
    assert all(torch.equal(other(s, t), w) for (s, t), w in zip(queries, first))
    different = cls(0.0, 1.0, (7, 3), seed=3, levy_area=levy_area)
    assert not torch.equal(different(*queries[0]), first[0])


@pytest.mark.parametrize("cls", CLASSES)
def test_increments_add_up_reverse_and_start_at_zero(cls):
    bm = cls(-1.0, 2.5, (100,), seed=4, dtype=torch.float64)
    assert torch.equal(bm.evaluate(-1.0), torch.zeros(100, dtype=torch.float64))
    a, b, c = -0.77, 0.1, 2.3
    torch.testing.assert_close(bm(a, b) + bm(b, c), bm(a, c), rtol=0, atol=1e-14)
    torch.testing.assert_close(bm.evaluate(c) - bm.evaluate(a), bm(a, c), rtol=0, atol=1e-14)
    assert torch.equal(bm(c, a), -bm(a, c))
    assert torch.equal(bm(b, b), torch.zeros(100, dtype=torch.float64))
    # times as 0-d tensors (any dtype) give the same values as floats
    assert torch.equal(bm(torch.tensor(a, dtype=torch.float64), torch.tensor(c)), bm(a, float(torch.tensor(c))))
    # the step of a solver: a sequence of adjacent increments sums to the whole
    ts = torch.linspace(-1.0, 2.5, 101, dtype=torch.float64).tolist()
    steps = torch.stack([bm(s, t) for s, t in itertools.pairwise(ts)])
    torch.testing.assert_close(steps.sum(0), bm(-1.0, 2.5), rtol=0, atol=1e-13)


def test_brownian_interval_is_exact_at_the_queried_times():
    # Tiny steps stay exact (no tolerance): increments over 1e-9 are N(0, 1e-9).
    bm = BrownianInterval(0.0, 1.0, (4000,), seed=6, dtype=torch.float64)
    _assert_standard_normal(_normalized(bm(0.3, 0.3 + 1e-9), 1e-9), "dW over 1e-9")


def test_virtual_tree_is_reproducible_and_converges_in_tol():
    n, tol = 5000, 2.0**-12
    # off the grid; dyadic above the coarse leaves (length 2⁻¹²); a coarse leaf's midpoint; 1/4 and 3/8 into one
    times = [0.3, 0.123456, 0.777, 0.5 + 2.0**-11, 0.625, 0.5 + 2.0**-13, 0.5 + 2.0**-14, 0.5 + 3 * 2.0**-15]
    coarse = VirtualBrownianTree(0.0, 1.0, (n,), tol=tol, seed=7, dtype=torch.float64)
    again = VirtualBrownianTree(0.0, 1.0, (n,), tol=tol, seed=7, dtype=torch.float64)
    fine = VirtualBrownianTree(0.0, 1.0, (n,), tol=tol / 4, seed=7, dtype=torch.float64)
    values = [coarse.evaluate(t) for t in times]
    # same seed and tol, queried in another order: the same values (the tree has no history)
    assert all(torch.equal(again.evaluate(t), w) for t, w in reversed(list(zip(times, values))))
    for t, w in zip(times, values):
        diff = (fine.evaluate(t) - w).abs()
        if (t * 2**13).is_integer():
            # Dyadic above the coarse leaves: identical in both trees. A coarse leaf's midpoint too: the
            # leaf samples it with the normals and the coefficients that the finer tree splits the leaf with.
            assert torch.equal(diff, torch.zeros_like(diff)), t
        else:  # inside a coarse leaf: the two differ by a bridge sample over < tol, sd ≤ √(tol/2)
            assert diff.max().item() < 6 * math.sqrt(tol), t
            assert diff.mean().item() > 1e-3 * math.sqrt(tol), t  # the refinement does change them
    # increments between different leaves stay exactly N(0, t - s) however coarse tol is
    very_coarse = VirtualBrownianTree(0.0, 1.0, (n,), tol=0.2, seed=1, dtype=torch.float64)
    _assert_standard_normal(_normalized(very_coarse(0.13, 0.71), 0.58), "coarse tree dW")


# ---- dtypes, devices, seeds --------------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_outputs_have_the_requested_dtype_and_device(cls, dtype):
    bm = cls(0.0, 1.0, (3, 2), seed=0, dtype=dtype, levy_area=True, device="cpu")
    assert (bm.dtype, bm.device, bm.shape, bm.levy_area) == (dtype, torch.device("cpu"), (3, 2), True)
    for out in [bm(0.1, 0.2), bm.evaluate(0.5), *bm.increment(0.3, 0.1), *bm.increment(0.4, 0.4)]:
        assert out.dtype == dtype and out.device == torch.device("cpu") and out.shape == (3, 2)
    assert cls(0.0, 1.0, 5).shape == (5,) and cls(0.0, 1.0, ()).evaluate(1.0).shape == ()
    assert cls(0.0, 1.0, (0, 4)).evaluate(1.0).shape == (0, 4)
    default = cls(0.0, 1.0, (2,))  # the default dtype and device are torch's
    assert (default.dtype, default.device) == (torch.get_default_dtype(), torch.get_default_device())


@pytest.mark.parametrize("cls", CLASSES)
def test_outputs_do_not_alias_the_cache(cls):
    bm = cls(0.0, 1.0, (4,), seed=0, levy_area=True)
    w = bm(0.0, 1.0)
    expected = w.clone()
    w.add_(100.0)
    bm.increment(0.0, 1.0).H.add_(100.0)
    assert torch.equal(bm(0.0, 1.0), expected)


@pytest.mark.parametrize("cls", CLASSES)
def test_seed_none_follows_torch_manual_seed(cls):
    torch.manual_seed(123)
    a = cls(0.0, 1.0, (10,))(0.2, 0.6)
    torch.manual_seed(123)
    b = cls(0.0, 1.0, (10,))(0.2, 0.6)
    torch.manual_seed(124)
    c = cls(0.0, 1.0, (10,))(0.2, 0.6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # every bit of the seed matters (torch's CPU generator reads only 32 bits of its own seed)
    paths = [cls(0.0, 1.0, (4,), seed=seed)(0.0, 0.7) for seed in (0, 1, 2**32, 2**63, -1, 2**64 - 2)]
    assert len({tuple(p.tolist()) for p in paths}) == len(paths)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cls", CLASSES)
def test_on_cuda(cls):
    bm = cls(0.0, 1.0, (256, 32), seed=0, device="cuda", dtype=torch.float32, levy_area=True)
    dW, H = bm.increment(0.1, 0.2)
    assert dW.is_cuda and H.is_cuda
    torch.testing.assert_close(bm(0.1, 0.15) + bm(0.15, 0.2), dW, rtol=0, atol=1e-6)
    again = cls(0.0, 1.0, (256, 32), seed=0, device="cuda", dtype=torch.float32, levy_area=True)
    assert torch.equal(again.increment(0.1, 0.2).dW, dW)


# ---- bounded memory ----------------------------------------------------------------------------


def test_brownian_interval_memory_is_bounded_by_the_cache():
    bm = BrownianInterval(0.0, 1.0, (2,), seed=0, cache_size=16)
    n = 10_000
    most = 0
    for i in range(n):
        bm(i / n, (i + 1) / n)
        most = max(most, bm._cached())
    assert most <= 16
    for i in reversed(range(0, n, 7)):  # and backward, recomputing what was evicted
        bm(i / n, (i + 1) / n)
        most = max(most, bm._cached())
    assert most <= 16

    def depth(node):
        return 1 + (max(depth(node.left), depth(node.right)) if node.left is not None else 0)

    # the tree of intervals grows with the queries, but stays shallow (log_{8/7}(10⁴) ≈ 69 at worst)
    assert depth(bm._tree) < 40


def test_virtual_tree_memory_does_not_grow():
    bm = VirtualBrownianTree(0.0, 1.0, (2,), tol=2.0**-14, seed=0, cache_size=64)
    n, most = 10_000, 0
    for i in range(n - 2000):
        bm(i / n, (i + 1) / n)
        most = max(most, bm._cached())
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for i in range(n - 2000, n):
            bm(i / n, (i + 1) / n)
            most = max(most, bm._cached())
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert most <= 64
    assert after - before < 20_000, after - before  # no structure grows with the queries


# ---- as_brownian and torchsde ------------------------------------------------------------------


def test_as_brownian_wraps_torchsde_exactly():
    torchsde = pytest.importorskip("torchsde")
    ts_bm = torchsde.BrownianInterval(t0=0.0, t1=2.0, size=(3, 2), dtype=torch.float64, entropy=7)
    bm = as_brownian(ts_bm)
    assert isinstance(bm, AbstractBrownian)
    assert (bm.t0, bm.t1, bm.shape, bm.dtype, bm.device) == (0.0, 2.0, (3, 2), torch.float64, torch.device("cpu"))
    assert bm.levy_area is False
    for s, t in [(0.1, 0.5), (0.5, 0.1), (1.2, 2.0), (2.0, 0.0), (0.3, 0.3)]:
        ours = bm(s, t)
        theirs = ts_bm(s, t) if s <= t else -ts_bm(t, s)
        assert torch.equal(ours, theirs), (s, t)
    assert torch.equal(bm.evaluate(1.5), ts_bm(0.0, 1.5))
    with pytest.raises(ValueError, match="levy_area"):
        bm.increment(0.0, 1.0)
    with pytest.raises(ValueError, match=r"t=2\.5.*\[0\.0, 2\.0\]"):
        bm(0.0, 2.5)


def test_as_brownian_passes_ours_through_and_checks_bm():
    bm = BrownianInterval(0.0, 1.0, (2,))
    assert as_brownian(bm) is bm
    with pytest.raises(TypeError, match="bm"):
        as_brownian(3.0)
    plain = as_brownian(lambda s, t: torch.full((2,), t - s), t0=0.0, t1=1.0, shape=(2,))
    assert torch.equal(plain(0.75, 0.25), torch.full((2,), -0.5))
    assert plain.shape == (2,) and plain.dtype is None
    with pytest.raises(ValueError, match="t0"):
        as_brownian(lambda s, t: t - s).evaluate(1.0)


# ---- bad inputs --------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(t0=1.0, t1=1.0), ValueError, "t1 must be greater than t0"),
        (dict(t0=0.0, t1=float("nan")), ValueError, "t1"),
        (dict(t0="0", t1=1.0), TypeError, "t0"),
        (dict(shape=(-1, 2)), ValueError, "shape"),
        (dict(shape=(2.5,)), TypeError, "shape"),
        (dict(shape="ab"), TypeError, "shape"),
        (dict(shape=None), TypeError, "shape"),
        (dict(cache_size=0), ValueError, "cache_size"),
        (dict(cache_size=2.0), TypeError, "cache_size"),
        (dict(dtype=torch.int64), TypeError, "dtype"),
        (dict(seed=1.5), TypeError, "seed"),
        (dict(levy_area="yes"), TypeError, "levy_area"),
        (dict(device="no-such-device"), ValueError, "device"),
    ],
)
def test_bad_arguments_are_refused_by_name(cls, kwargs, error, match):
    args = dict(t0=0.0, t1=1.0, shape=(2,))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        cls(args.pop("t0"), args.pop("t1"), args.pop("shape"), **args)


@pytest.mark.parametrize("tol", [0.0, -1e-3, float("nan"), float("inf"), 1e-30])
def test_bad_tol_is_refused(tol):
    with pytest.raises(ValueError, match="tol"):
        VirtualBrownianTree(0.0, 1.0, (2,), tol=tol)


@pytest.mark.parametrize("cls", CLASSES)
def test_bad_query_times_are_refused_by_name(cls):
    bm = cls(0.0, 1.0, (2,), seed=0)
    with pytest.raises(ValueError, match=r"t=1\.5 lies outside .*\[0\.0, 1\.0\]"):
        bm(0.5, 1.5)
    with pytest.raises(ValueError, match=r"s=-0\.1 lies outside"):
        bm(-0.1, 0.5)
    with pytest.raises(ValueError, match="t="):
        bm.evaluate(float("nan"))
    with pytest.raises(ValueError, match="0-d tensor"):
        bm(0.0, torch.tensor([0.5, 0.6]))
    with pytest.raises(TypeError, match="s must be a float"):
        bm("0", 0.5)
    with pytest.raises(ValueError, match="levy_area"):
        bm.increment(0.0, 0.5)
    # a few ulps of slack at the ends, in the time's own precision
    assert torch.equal(bm(0.0, math.nextafter(1.0, 2.0)), bm(0.0, 1.0))
    assert torch.equal(bm(0.0, torch.tensor(1.0000001, dtype=torch.float32)), bm(0.0, 1.0))


@pytest.mark.parametrize("cls", [VirtualBrownianTree, BrownianInterval])
def test_threads_sharing_one_path_read_the_serial_values(cls):
    # The cache and the generator (reseeded per draw) are shared: without the lock, 4 threads
    # re-querying one path read values off by up to 0.35, and BrownianInterval raised KeyError.
    import threading

    kw = {"tol": 1e-4} if cls is VirtualBrownianTree else {}
    bm = cls(0.0, 1.0, (16, 4), seed=5, cache_size=4, **kw)
    times = torch.linspace(0.0, 1.0, 41, dtype=torch.float64).tolist()
    serial = [bm(s, t) for s, t in itertools.pairwise(times)]
    errors, results = [], {}

    def work(i):
        try:
            order = torch.randperm(len(serial), generator=torch.Generator().manual_seed(i)).tolist()
            results[i] = {k: bm(times[k], times[k + 1]) for k in order}
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    for got in results.values():
        assert all(torch.equal(got[k], serial[k]) for k in range(len(serial)))
