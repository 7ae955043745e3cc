"""pyode.cde's control paths (natural cubic spline, backward Hermite, linear, rectilinear) and
pyode.compat.torchcde's coefficient functions and classes on top of them: exactness, derivatives,
continuity at the knots, batching, missing values (against torchcde), causality, gradients,
dtypes and input checks.

Tolerances: the data are O(1) in float64 and every path is a few dozen flops per value (plus a
tridiagonal solve whose condition number is ≤ 3 for the natural spline), so quantities that are
equal in exact arithmetic agree to ~1e-14 of their scale; "equal" below means within 1e-12 of the
scale of the expected tensor (`_close`), which leaves a wide margin for rounding and still fails
on any real mistake (those show up at O(1), or at O(h^k) for the convergence test).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import pyode.cde as cde
import pyode.compat.torchcde as ctc

try:
    import torchcde
except ImportError:  # pragma: no cover - torchcde is in the test extra
    torchcde = None

needs_torchcde = pytest.mark.skipif(torchcde is None, reason="torchcde (test extra) is the reference here")

F64 = torch.float64
NAN = float("nan")
BUILD = {
    "natural": cde.natural_cubic_spline,
    "hermite": cde.hermite_cubic_backward,
    "linear": cde.linear,
    "rectilinear": cde.rectilinear,
}
ALL = list(BUILD)
CUBIC = ["natural", "hermite"]
INTERPOLATING = ["natural", "hermite", "linear"]  # X(t_i) = x_i (rectilinear adds a time channel)

# ---------------------------------------------------------------------------------------------
# helpers


def _times(L: int, dtype=F64) -> torch.Tensor:
    """Irregular increasing times: gaps in [0.2, 1.2), starting near 0.5."""
    return 0.3 + torch.cumsum(0.2 + torch.rand(L, dtype=dtype), 0)


def _build(name: str, t, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rectilinear's leading-NaN warning, tested on its own
        return BUILD[name](t, x)


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-12) -> None:
    """Equal to rtol of the scale of `expected` (max |expected|, at least 1)."""
    scale = max(expected.abs().max().item(), 1.0) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)


def _away_from_knots(knots: torch.Tensor, n: int, margin: float) -> torch.Tensor:
    """n sorted random times in (knots[0], knots[-1]), each at least `margin` from every knot."""
    ts = knots[0] + (knots[-1] - knots[0]) * torch.rand(4 * n, dtype=knots.dtype)
    keep = (ts.unsqueeze(-1) - knots).abs().min(-1).values > margin
    ts = ts[keep][:n]
    assert ts.shape[0] == n
    return ts.sort().values


def _query_times(knots: torch.Tensor) -> torch.Tensor:
    """The knots themselves (both ends included), random interior times, and a little beyond the ends."""
    inside = knots[0] + (knots[-1] - knots[0]) * torch.rand(60, dtype=knots.dtype)
    outside = torch.stack([knots[0] - 0.3, knots[-1] + 0.3])
    return torch.cat([knots, inside, outside])


def _piece_derivatives(path: cde.CubicPath, i: int, s) -> list[torch.Tensor]:
    """X, X', X'', X''' of piece i at offset s into it, from the coefficients."""
    a, b, c, d = path.coeffs[..., i, :, :].unbind(-2)
    return [a + s * (b + s * (c + s * d)), b + s * (2 * c + 3 * s * d), 2 * c + 6 * d * s, 6 * d]


def _nan_data(dtype=F64):
    """t (10,) irregular and x (2, 10, 8), one missing-value pattern per channel."""
    L = 10
    t = _times(L, dtype)
    x = torch.randn(2, L, 8, dtype=dtype)
    x[:, :3, 0] = NAN  # leading run
    x[:, -2:, 1] = NAN  # trailing run
    x[:, 2:4, 2] = NAN  # interior runs
    x[:, 6, 2] = NAN
    x[:, :, 3] = NAN  # never observed
    x[:, :, 4] = NAN  # a single observation: interior / at the start
    x[0, 4, 4] = 1.5
    x[1, 0, 4] = -2.0
    x[1, :, 5] = NAN  # element 1: a single observation at the end; element 0: no NaN
    x[1, -1, 5] = 3.0
    x[:, [0, 1, 4, 5, 9], 6] = NAN  # leading, interior and trailing together
    # channel 7: no NaN
    return t, x


def _clean_data(dtype=F64, shape=(2, 9, 3)):
    return _times(shape[-2], dtype), torch.randn(*shape, dtype=dtype)


def _forward_fill(x: torch.Tensor) -> torch.Tensor:
    """Reference forward fill along dim -2, by loop (the first row must be observed)."""
    out = x.clone()
    for i in range(1, x.shape[-2]):
        out[..., i, :] = torch.where(torch.isnan(out[..., i, :]), out[..., i - 1, :], out[..., i, :])
    return out


# ---------------------------------------------------------------------------------------------
# 1. exactness and interpolation


@pytest.mark.parametrize("interior_nans", [False, True], ids=["observed", "interior-nans"])
@pytest.mark.parametrize("name", INTERPOLATING)
def test_linear_data_reproduced_exactly(name, interior_nans):
    # On data from a line all three are the line: the natural spline because the line is a C² spline
    # with zero end curvature, Hermite because its slopes are the (here constant) divided differences,
    # linear trivially; interior NaNs are filled linearly (or splined through a line), so still exact.
    t = _times(8)
    slope, intercept = torch.randn(2, 1, 3, dtype=F64), torch.randn(2, 1, 3, dtype=F64)
    x = intercept + slope * t.view(-1, 1)
    if interior_nans:
        x[:, 2:4, 0] = NAN
        x[1, 5, 2] = NAN
    path = BUILD[name](t, x)
    ts = torch.cat([t, torch.linspace(t[0].item(), t[-1].item(), 101, dtype=F64)])
    _close(path.evaluate(ts), intercept + slope * ts.view(-1, 1))
    _close(path.derivative(ts), slope.expand(2, ts.shape[0], 3))
    # no curvature at all: c and d vanish on every piece (they are slope differences over h ≥ 0.2 and
    # h², so their rounding is ~1e-15/h² ≲ 1e-13 of the slope: 1e-11)
    if isinstance(path, cde.CubicPath):
        _close(path.c, torch.zeros_like(path.c), rtol=1e-11)
        _close(path.d, torch.zeros_like(path.d), rtol=1e-11)


@pytest.mark.parametrize("name", INTERPOLATING)
def test_passes_through_the_data(name):
    t, x = _clean_data()
    _close(BUILD[name](t, x).evaluate(t), x)


def test_natural_spline_has_zero_curvature_at_the_ends():
    t, x = _clean_data()
    path = cde.natural_cubic_spline(t, x)
    h_last = t[-1] - t[-2]
    _close(_piece_derivatives(path, 0, 0.0)[2], torch.zeros(2, 3, dtype=F64))
    _close(_piece_derivatives(path, -1, h_last)[2], torch.zeros(2, 3, dtype=F64), rtol=1e-11)


def test_natural_spline_converges_at_fourth_order_inside():
    # sin(3t) on [0, 2]: its second derivative is not zero at t = 2, so the natural end condition
    # costs O(h²) near the ends, but that error decays by ~(2 − √3) per interval into the domain,
    # leaving the O(h⁴) interior error on [0.5, 1.5]. Measured orders: 4.01, 4.00 inside and
    # 2.01, 2.00 over the whole interval; the bands below leave ±0.3 for the pre-asymptotic terms.
    def errors(n):
        t = torch.linspace(0, 2, n, dtype=F64)
        path = cde.natural_cubic_spline(t, torch.sin(3 * t).unsqueeze(-1))
        inner = torch.linspace(0.5, 1.5, 1001, dtype=F64)
        whole = torch.linspace(0, 2, 2001, dtype=F64)
        e_in = (path.evaluate(inner)[:, 0] - torch.sin(3 * inner)).abs().max().item()
        e_all = (path.evaluate(whole)[:, 0] - torch.sin(3 * whole)).abs().max().item()
        return e_in, e_all

    (i1, a1), (i2, a2), (i3, a3) = errors(21), errors(41), errors(81)
    for coarse, fine in [(i1, i2), (i2, i3)]:
        assert 3.7 < math.log2(coarse / fine) < 4.3
    for coarse, fine in [(a1, a2), (a2, a3)]:
        assert 1.7 < math.log2(coarse / fine) < 2.3
    assert i3 < 1e-7


def test_hermite_slopes_are_backward_divided_differences():
    t, x = _clean_data()
    path = cde.hermite_cubic_backward(t, x)
    delta = (x[..., 1:, :] - x[..., :-1, :]) / (t[1:] - t[:-1]).unsqueeze(-1)
    # at t_{i+1} the piece on the left, [t_i, t_{i+1}], is used: its end slope is δ_i
    _close(path.derivative(t[1:]), delta)
    # the piece on the right starts with the same slope (C¹); the first piece is the line through x_0, x_1
    _close(path.b[..., 1:, :], delta[..., :-1, :])
    _close(path.derivative(t[0]), delta[..., 0, :])
    _close(path.coeffs[..., 0, 2:, :], torch.zeros(2, 2, 3, dtype=F64))


# ---------------------------------------------------------------------------------------------
# 2. derivatives against central differences


@pytest.mark.parametrize("nans", [False, True], ids=["observed", "nans"])
@pytest.mark.parametrize("name", ALL)
def test_derivative_matches_central_differences(name, nans):
    # eps = 1e-6, at least 1e-3 from any knot so both samples lie on one piece: truncation
    # eps²/6·|X'''| ≲ 1e-10 and rounding ~1e-16·|X|/eps ~ 1e-10, against a tolerance of 1e-7.
    t, x = _nan_data() if nans else _clean_data()
    path = _build(name, t, x)
    ts = _away_from_knots(path.knots, 200, margin=1e-3)
    eps = 1e-6
    fd = (path.evaluate(ts + eps) - path.evaluate(ts - eps)) / (2 * eps)
    _close(path.derivative(ts), fd, rtol=1e-7)


# ---------------------------------------------------------------------------------------------
# 3. continuity at the knots


@pytest.mark.parametrize("name, smoothness", [("natural", 2), ("hermite", 1)])
def test_cubic_continuity_class(name, smoothness):
    t, x = _clean_data(shape=(2, 9, 3))
    path = BUILD[name](t, x)
    for i in range(1, t.shape[0] - 1):
        left = _piece_derivatives(path, i - 1, t[i] - t[i - 1])
        right = _piece_derivatives(path, i, 0.0)
        for k in range(4):
            scale = max(left[k].abs().max().item(), right[k].abs().max().item(), 1.0)
            jump = (left[k] - right[k]).abs()
            if k <= smoothness:  # C^smoothness: rounding only (values and slopes are O(10) here)
                assert jump.max().item() <= 1e-11 * scale, (i, k)
            elif k == smoothness + 1:  # the next derivative jumps, on random data in every channel
                assert jump.min().item() > 1e-6 * scale, (i, k)


@pytest.mark.parametrize("name", ["linear", "rectilinear"])
def test_linear_paths_are_continuous_with_jumping_slopes(name):
    t, x = _clean_data(shape=(2, 6, 3))
    path = BUILD[name](t, x)
    inner = path.knots[1:-1]
    delta = 1e-9
    # continuous: just right of a knot differs from the knot value by delta·|slope| ≲ 1e-8
    _close(path.evaluate(inner + delta), path.evaluate(inner), rtol=1e-7)
    _close(path.evaluate(path.knots), path.values)
    # the slope jumps at every interior knot (in some channel: rectilinear's values or its time channel)
    jump = (path.derivative(inner + delta) - path.derivative(inner)).abs().amax(-1)
    assert jump.min().item() > 1e-3


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda t, x: cde.natural_cubic_spline(t, x), 2),
        (lambda t, x: cde.hermite_cubic_backward(t, x), 1),
        (lambda t, x: cde.linear(t, x), 0),
        (lambda t, x: cde.rectilinear(t, x), 0),
        (lambda t, x: ctc.CubicSpline(ctc.natural_cubic_coeffs(x, t), t), 2),
        (lambda t, x: ctc.CubicSpline(ctc.hermite_cubic_coefficients_with_backward_differences(x, t), t), 1),
        (lambda t, x: ctc.LinearInterpolation(ctc.linear_interpolation_coeffs(x, t), t), 0),
    ],
    ids=["natural", "hermite", "linear", "rectilinear", "compat-natural", "compat-hermite", "compat-linear"],
)
def test_smoothness_attribute(make, expected):
    t, x = _clean_data()
    assert make(t, x).smoothness == expected


# ---------------------------------------------------------------------------------------------
# 4. batching


@pytest.mark.parametrize("name", ALL)
def test_batch_elements_are_independent(name):
    L = 7
    t = _times(L)
    x = torch.randn(2, 3, L, 2, dtype=F64)
    x[0, 1, 2:4, 0] = NAN
    x[1, 2, 0, 1] = NAN
    x[1, 0, -1, :] = NAN
    path = _build(name, t, x)
    assert tuple(path.batch_shape) == (2, 3)
    ts = _query_times(path.knots)
    value, slope = path.evaluate(ts), path.derivative(ts)
    for i in range(2):
        for j in range(3):
            alone = _build(name, t, x[i, j])
            _close(value[i, j], alone.evaluate(ts))
            _close(slope[i, j], alone.derivative(ts))


# ---------------------------------------------------------------------------------------------
# 5. missing values and pyode.compat.torchcde, against torchcde


def _torchcde_path(name, t, x):
    if name == "natural":
        return torchcde.CubicSpline(torchcde.natural_cubic_coeffs(x, t), t)
    if name == "hermite":
        return torchcde.CubicSpline(torchcde.hermite_cubic_coefficients_with_backward_differences(x, t), t)
    return torchcde.LinearInterpolation(torchcde.linear_interpolation_coeffs(x, t), t)


@needs_torchcde
@pytest.mark.parametrize("given_t", [True, False], ids=["t", "t=None"])
@pytest.mark.parametrize("nans", [False, True], ids=["observed", "nans"])
@pytest.mark.parametrize("name", INTERPOLATING)
def test_paths_match_torchcde(name, nans, given_t):
    t, x = _nan_data() if nans else _clean_data()
    t = t if given_t else None
    ours, theirs = BUILD[name](t, x), _torchcde_path(name, t, x)
    ts = _query_times(ours.knots)
    assert torch.isfinite(ours.evaluate(ts)).all()
    _close(ours.evaluate(ts), theirs.evaluate(ts))
    _close(ours.derivative(ts), theirs.derivative(ts))


@needs_torchcde
@pytest.mark.parametrize("given_t", [True, False], ids=["t", "t=None"])
@pytest.mark.parametrize("nans", [False, True], ids=["observed", "nans"])
@pytest.mark.parametrize(
    "fn",
    ["natural_cubic_coeffs", "hermite_cubic_coefficients_with_backward_differences", "linear_interpolation_coeffs"],
)
def test_compat_coefficients_match_torchcde(fn, nans, given_t):
    t, x = _nan_data() if nans else _clean_data()
    t = t if given_t else None
    ours, theirs = getattr(ctc, fn)(x, t), getattr(torchcde, fn)(x, t)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    _close(ours, theirs)


@needs_torchcde
@pytest.mark.parametrize("time_channel", [0, 2])
def test_compat_rectilinear_coefficients_match_torchcde(time_channel):
    t, x = _nan_data()
    data = torch.cat([x[..., :time_channel], t.view(-1, 1).expand(2, -1, 1), x[..., time_channel:]], dim=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # both warn about the leading NaNs
        ours = ctc.linear_interpolation_coeffs(data, rectilinear=time_channel)
        theirs = torchcde.linear_interpolation_coeffs(data, rectilinear=time_channel)
    assert ours.shape == theirs.shape == (2, 19, 9)
    _close(ours, theirs)


@needs_torchcde
@pytest.mark.parametrize("given_t", [True, False], ids=["t", "t=None"])
@pytest.mark.parametrize("kind", ["natural", "hermite", "linear"])
def test_compat_classes_evaluate_like_torchcde(kind, given_t):
    t, x = _nan_data()
    t = t if given_t else None
    if kind == "linear":
        coeffs = torchcde.linear_interpolation_coeffs(x, t)
        ours, theirs = ctc.LinearInterpolation(coeffs, t), torchcde.LinearInterpolation(coeffs, t)
    else:
        make = (
            torchcde.natural_cubic_coeffs
            if kind == "natural"
            else torchcde.hermite_cubic_coefficients_with_backward_differences
        )
        coeffs = make(x, t)
        ours, theirs = ctc.CubicSpline(coeffs, t), torchcde.CubicSpline(coeffs, t)
    _close(ours.grid_points, theirs.grid_points)
    _close(ours.interval, theirs.interval)
    ts = _query_times(ours.knots)
    _close(ours.evaluate(ts), theirs.evaluate(ts))
    _close(ours.derivative(ts), theirs.derivative(ts))
    _close(ours.evaluate(ts[3]), theirs.evaluate(ts[3]))  # a scalar time too


def test_nan_channels_are_filled_as_documented():
    # independent of torchcde: a never-observed channel is the zero path, a single observation is
    # a constant path, and NaN before the first / after the last observation takes that value
    t, x = _nan_data()
    for name in INTERPOLATING:
        path = BUILD[name](t, x)
        ts = _query_times(path.knots)
        _close(path.evaluate(ts)[..., 3], torch.zeros(2, ts.shape[0], dtype=F64))
        _close(path.derivative(ts)[..., 3], torch.zeros(2, ts.shape[0], dtype=F64))
        _close(path.evaluate(ts)[0, :, 4], torch.full_like(ts, 1.5))
        _close(path.evaluate(ts)[1, :, 4], torch.full_like(ts, -2.0))
        _close(path.evaluate(t[:3])[..., 0], x[:, 3:4, 0].expand(2, 3))
        _close(path.evaluate(t[-2:])[..., 1], x[:, -3:-2, 1].expand(2, 2))
        observed = ~torch.isnan(x)
        _close(path.evaluate(t)[observed], x[observed])


# ---------------------------------------------------------------------------------------------
# 6. rectilinear


@needs_torchcde
@pytest.mark.parametrize("nans", [False, True], ids=["observed", "nans"])
def test_rectilinear_values_match_torchcde(nans):
    t, x = _nan_data() if nans else _clean_data()
    data = torch.cat([t.view(-1, 1).expand(*x.shape[:-1], 1), x], dim=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = cde.rectilinear(t, x)
        theirs = torchcde.linear_interpolation_coeffs(data, rectilinear=0)
    # only copies and forward fills: equal to rounding (in fact bit for bit)
    _close(path.values, theirs)


def test_rectilinear_knots_and_values():
    L = 6
    t = _times(L)
    x = torch.randn(2, L, 3, dtype=F64)
    x[0, 2:4, 1] = NAN  # interior and trailing gaps; the first row is observed
    x[1, -2:, 0] = NAN
    path = cde.rectilinear(t, x)
    mid = (t[:-1] + t[1:]) / 2
    expected_knots = torch.cat([torch.stack([t[:-1], mid], -1).reshape(-1), t[-1:]])
    _close(path.knots, expected_knots)
    filled = _forward_fill(x)
    time_channel = t.view(-1, 1).expand(2, L, 1)
    # at t_i: (t_i, the forward-filled x_i); at the midpoint m_i time has reached t_{i+1}, values still x_i
    _close(path.evaluate(t), torch.cat([time_channel, filled], -1))
    _close(path.evaluate(mid), torch.cat([time_channel[:, 1:], filled[:, :-1]], -1))
    # first half: time moves at rate 2 with the values held; second half: values move at rate 2
    dt = (t[1:] - t[:-1]).unsqueeze(-1)
    first, second = (t[:-1] + mid) / 2, (mid + t[1:]) / 2
    _close(
        path.derivative(first),
        torch.cat([torch.full((2, L - 1, 1), 2.0, dtype=F64), torch.zeros(2, L - 1, 3, dtype=F64)], -1),
    )
    _close(
        path.derivative(second),
        torch.cat([torch.zeros(2, L - 1, 1, dtype=F64), 2 * (filled[:, 1:] - filled[:, :-1]) / dt], -1),
    )


def test_rectilinear_time_channel():
    t, x = _clean_data(shape=(2, 6, 3))
    x[0, 3, 2] = NAN
    data = torch.cat([x[..., :1], t.view(-1, 1).expand(2, -1, 1), x[..., 1:]], dim=-1)  # time is channel 1
    reference = cde.rectilinear(t, x)  # time prepended as channel 0
    for time_channel in (1, -3):
        path = cde.rectilinear(t, data, time_channel=time_channel)
        assert path.channels == 4
        _close(path.knots, reference.knots)
        _close(path.values, reference.values[..., [1, 0, 2, 3]])
    for bad in (4, -5, True, 1.0, "0"):
        with pytest.raises(ValueError, match="time_channel"):
            cde.rectilinear(t, data, time_channel=bad)


def test_rectilinear_checks_time_and_leading_nans():
    t, x = _clean_data(shape=(2, 6, 3))
    bad = x.clone()
    bad[1, 4, 0] = NAN
    with pytest.raises(ValueError, match="time channel"):
        cde.rectilinear(t, bad, time_channel=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # observed first row: no warning
        cde.rectilinear(t, x)
        cde.rectilinear(t, bad)
    lead = x.clone()
    lead[0, 0, 2] = NAN
    with pytest.warns(RuntimeWarning, match="not causal"):
        path = cde.rectilinear(t, lead)
    _close(path.evaluate(t[0])[0, 3], x[0, 1, 2])  # backfilled from the first observation


def test_rectilinear_times_one_ulp_apart():
    # strictly increasing in float32 (1e6 has an ulp of 0.0625), so accepted; the path must then be
    # usable: strictly increasing knots and finite values, or else a ValueError up front
    t = torch.tensor([1e6, 1e6 + 0.0625, 1e6 + 1.0])
    x = torch.randn(3, 2)
    try:
        path = cde.rectilinear(t, x)
    except ValueError:
        return
    assert (path.knots[1:] > path.knots[:-1]).all()
    assert torch.isfinite(path.evaluate(path.knots)).all()
    assert torch.isfinite(path.derivative(path.knots)).all()


# ---------------------------------------------------------------------------------------------
# 7. causality


@pytest.mark.parametrize(
    "name, nans",
    [("hermite", False), ("linear", False), ("rectilinear", False), ("rectilinear", True)],
    ids=["hermite", "linear", "rectilinear", "rectilinear-nans"],
)
def test_path_up_to_t_i_ignores_later_observations(name, nans):
    # Hermite and linear fill missing values from both sides, so only rectilinear is causal with NaNs.
    L = 8
    t, x = _clean_data(shape=(2, L, 3))
    if nans:
        x[0, 3:5, 1] = NAN
    path = BUILD[name](t, x)
    for i in range(1, L - 1):
        later = x.clone()
        later[..., i + 1 :, :] = 10 * torch.randn(2, L - i - 1, 3, dtype=F64)
        if nans:
            later[1, i + 1 :, 0] = NAN
        other = BUILD[name](t, later)
        ts = torch.cat([torch.linspace(t[0].item(), t[i].item(), 53, dtype=F64), t[: i + 1]])
        # a dependence would show at O(1); independent pieces give the same numbers
        _close(other.evaluate(ts), path.evaluate(ts))
        _close(other.derivative(ts), path.derivative(ts))
        # and the check has teeth: just after t_i (past rectilinear's midpoint) the path does change
        after = torch.linspace(t[i].item(), t[i + 1].item(), 5, dtype=F64)[-2:]
        assert (other.evaluate(after) - path.evaluate(after)).abs().max() > 1e-3


def test_natural_spline_is_not_causal():
    t, x = _clean_data(shape=(2, 8, 3))
    later = x.clone()
    later[..., 5, :] += 1.0
    ts = torch.linspace(t[0].item(), t[3].item(), 20, dtype=F64)
    change = cde.natural_cubic_spline(t, later).evaluate(ts) - cde.natural_cubic_spline(t, x).evaluate(ts)
    assert change.abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------
# 8. gradients


@pytest.mark.parametrize("nans", [False, True], ids=["observed", "nans"])
@pytest.mark.parametrize("name", ALL)
def test_gradcheck(name, nans):
    L = 5
    t = _times(L)
    x = torch.randn(2, L, 2, dtype=F64)
    if nans:
        x[0, 0, 0] = NAN  # leading
        x[0, 2, 1] = NAN  # interior
        x[1, -1, 0] = NAN  # trailing
        x[1, 1:3, 1] = NAN  # interior run
    observed = ~torch.isnan(x)
    ts = torch.cat([t, _away_from_knots(t, 6, margin=1e-2)])

    def f(values):
        path = _build(name, t, torch.full_like(x, NAN).masked_scatter(observed, values))
        return path.evaluate(ts), path.derivative(ts)

    assert torch.autograd.gradcheck(f, (x[observed].clone().requires_grad_(),))


@pytest.mark.parametrize("name", ALL)
def test_nan_gradients_are_finite_and_zero(name):
    t, x = _nan_data()
    x = x.requires_grad_()
    path = _build(name, t, x)
    ts = _query_times(path.knots)
    (path.evaluate(ts).sum() + path.derivative(ts).square().sum()).backward()
    missing = torch.isnan(x.detach())
    assert torch.isfinite(x.grad).all()
    assert (x.grad[missing] == 0).all()
    assert (x.grad[~missing] != 0).any()


# ---------------------------------------------------------------------------------------------
# 9. dtypes


@pytest.mark.parametrize("t_kind", ["float64", "int", "None"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ALL)
def test_dtype_follows_x(name, dtype, t_kind):
    L = 6
    x = torch.randn(2, L, 3, dtype=dtype)
    x[0, 2, 1] = NAN
    t = {"float64": _times(L) * 3, "int": torch.arange(L) * 2, "None": None}[t_kind]
    path = BUILD[name](t, x)
    assert path.knots.dtype == path.dtype == dtype
    assert all(tensor.dtype == dtype for tensor in path.tensors())
    ts = _query_times(path.knots.to(F64))  # float64 times are read in the path's dtype
    assert path.evaluate(ts).dtype == path.derivative(ts).dtype == dtype
    wide = path.to(F64)
    assert type(wide) is type(path) and wide.dtype == wide.knots.dtype == F64 and wide.smoothness == path.smoothness
    assert wide.evaluate(ts).dtype == F64
    # float32 data gives the float32 rounding of the float64 path: ~1e-7 relative, times the
    # spline's amplification (values and slopes are O(10) here); 1e-5 leaves room
    # (away from the knots: float32 rounding may move a time across a knot, where slopes jump)
    reference = BUILD[name](None if t is None else t.to(F64), x.to(F64))
    ts = _away_from_knots(reference.knots, 50, margin=1e-3)
    _close(wide.evaluate(ts), reference.evaluate(ts), rtol=1e-12 if dtype == F64 else 1e-5)
    _close(wide.derivative(ts), reference.derivative(ts), rtol=1e-12 if dtype == F64 else 1e-5)


def test_dtype_mismatch_in_t_is_checked_in_x_dtype():
    # increasing in float64 but equal once rounded to x's float32
    t = torch.tensor([0.0, 1.0, 1.0 + 1e-9, 2.0], dtype=F64)
    with pytest.raises(ValueError, match="strictly increasing"):
        cde.linear(t, torch.randn(4, 1))


# ---------------------------------------------------------------------------------------------
# 10-11. per-element times and vectorized evaluation


@pytest.mark.parametrize("name", ALL)
def test_derivative_each(name):
    t, x = _clean_data(shape=(4, 2, 7, 3))
    path = BUILD[name](t, x)
    times = torch.stack([path.knots[0], path.knots[3], path.knots[-1], (path.knots[1] + path.knots[2]) / 2])
    each = path.derivative_each(times)
    assert each.shape == (4, 2, path.channels)
    for b in range(4):
        _close(each[b], path.derivative(times[b])[b])
    for bad in (times[:3], torch.cat([times, times[:1]]), times[0], times.unsqueeze(-1)):
        with pytest.raises(ValueError):
            path.derivative_each(bad)


@pytest.mark.parametrize(
    "name",
    [*CUBIC, "linear", "rectilinear"],
)
def test_derivative_each_needs_a_batch_dimension(name):
    t, x = _clean_data(shape=(5, 3))
    path = BUILD[name](t, x)
    pieces = path.knots.shape[0] - 1  # a time per piece must not be read as a time per batch element
    with pytest.raises(ValueError):
        path.derivative_each(path.knots[:pieces] + 0.1)


@pytest.mark.parametrize("name", ALL)
def test_vector_times_stack_scalar_ones(name):
    t, x = _nan_data()
    path = _build(name, t, x)
    ts = _query_times(path.knots)
    value, slope = path.evaluate(ts), path.derivative(ts)
    assert value.shape == slope.shape == (2, ts.shape[0], path.channels)
    # scalar evaluation does the same arithmetic on one time: equal to rounding
    _close(value, torch.stack([path.evaluate(s) for s in ts], dim=-2))
    _close(slope, torch.stack([path.derivative(s) for s in ts], dim=-2))
    _close(path.evaluate(ts[5].item()), value[:, 5])  # a Python float too
    with pytest.raises(ValueError, match=r"\bt\b"):
        path.evaluate(ts[:4].view(2, 2))


# ---------------------------------------------------------------------------------------------
# 12. observation counts


def test_observation_counts():
    x = torch.tensor([[1.0, NAN], [NAN, NAN], [2.0, 3.0], [NAN, 4.0]])
    expected = torch.tensor([[1.0, 0.0], [1.0, 0.0], [2.0, 1.0], [2.0, 2.0]])
    assert torch.equal(cde.observation_counts(x), expected)
    batched = torch.stack([x, x.flip(-1)])
    assert torch.equal(cde.observation_counts(batched), torch.stack([expected, expected.flip(-1)]))
    assert cde.observation_counts(x.to(F64)).dtype == F64
    with pytest.raises(ValueError, match=r"\bx\b"):
        cde.observation_counts(torch.ones(3, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\bx\b"):
        cde.observation_counts(torch.ones(3))


def test_with_observation_counts():
    t, x = _nan_data()
    out = cde.with_observation_counts(t, x)
    assert out.shape == (2, 10, 1 + 2 * 8)
    _close(out[..., 0], t.expand(2, -1))
    assert torch.equal(torch.isnan(out[..., 1:9]), torch.isnan(x))
    _close(out[..., 1:9].nan_to_num(), x.nan_to_num())
    assert torch.equal(out[..., 9:], cde.observation_counts(x))
    bare = cde.with_observation_counts(None, x, time=False)
    assert bare.shape == (2, 10, 16)
    assert torch.equal(bare[..., 8:], out[..., 9:])
    _close(cde.with_observation_counts(None, x)[..., 0], torch.arange(10, dtype=F64).expand(2, -1))


# ---------------------------------------------------------------------------------------------
# 13. bad input


def _bad_inputs():
    t, x = _times(5), torch.randn(2, 5, 3, dtype=F64)
    inf = x.clone()
    inf[1, 2, 0] = float("inf")
    nan_t = t.clone()
    nan_t[2] = NAN
    return [
        ("non-increasing t", t.flip(0), x, ValueError, r"\bt\b.*increasing"),
        ("repeated time", torch.cat([t[:2], t[1:4]]), x, ValueError, r"\bt\b.*increasing"),
        ("length mismatch", t[:4], x, ValueError, r"\bt\b.*shape"),
        ("2-D t", t.view(1, -1), x, ValueError, r"\bt\b.*shape"),
        ("length 1", t[:1], x[..., :1, :], ValueError, r"\bx\b.*length"),
        ("1-D x", t, x[0, :, 0], ValueError, r"\bx\b.*shape"),
        ("integer x", t, x.to(torch.int64), TypeError, r"\bx\b"),
        ("x not a tensor", t, x.tolist(), TypeError, r"\bx\b"),
        ("Inf in x", t, inf, ValueError, r"\bx\b.*Inf"),
        ("NaN in t", nan_t, x, ValueError, r"\bt\b.*NaN"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_inputs())), ids=[case[0] for case in _bad_inputs()])
@pytest.mark.parametrize("name", ALL)
def test_bad_input(name, case):
    _, t, x, error, message = _bad_inputs()[case]
    with pytest.raises(error, match=message):
        BUILD[name](t, x)


def test_path_constructors_refuse_unordered_knots():
    values = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="strictly increasing"):
        cde.LinearPath(torch.tensor([0.0, 2.0, 1.0], dtype=torch.float64), values)
    with pytest.raises(ValueError, match="strictly increasing"):
        cde.CubicPath(torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), torch.zeros(2, 4, 2, dtype=torch.float64))


def test_compat_rectilinear_checks_t_length():
    x = torch.randn(5, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"shape \(9,\)"):
        ctc.linear_interpolation_coeffs(x, torch.arange(5.0, dtype=torch.float64), rectilinear=0)
