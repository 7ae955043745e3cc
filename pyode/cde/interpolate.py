"""Paths from observations (t, x): the four interpolations torchcde and diffrax offer, with
missing values (NaN) filled the way torchcde fills them, vectorized over the batch and channels.

All of them take `t` of shape (L,) (strictly increasing; `None` for 0, 1, ..., L − 1) and `x` of
shape (..., L, channels), and are differentiable with respect to `x` (and `t`).
"""

from __future__ import annotations

import warnings

import torch

from .paths import CubicPath, LinearPath


def natural_cubic_spline(t: torch.Tensor | None, x: torch.Tensor) -> CubicPath:
    """The natural cubic spline through the observations: C², second derivative zero at both
    ends. Not causal: the path on [t_i, t_{i+1}] depends on every observation.

    Each channel of each series with missing values is the spline through its own observed
    points (a value missing before the first or after the last observation takes that
    observation's value), re-expressed on every interval between the L times; a channel
    with no observation is the zero path (torchcde's `natural_cubic_coeffs`).

    Args:
        t: (L,) observation times, or None for 0, 1, ..., L − 1.
        x: (..., L, channels); NaN marks a missing value.
    """
    t, x = _check_data(t, x, "natural_cubic_spline")
    series, unflatten = _as_series(x)  # (S, L)
    observed = ~torch.isnan(series)
    series = _fill_ends(series, observed)
    observed = ~torch.isnan(series)
    empty = ~observed.any(-1)  # channels never observed: the zero path
    observed = observed | empty.unsqueeze(-1)
    series = torch.where(observed, series, torch.zeros((), dtype=series.dtype, device=series.device))
    series = torch.where(empty.unsqueeze(-1), torch.zeros_like(series), series)
    if bool(observed.all()):
        a, b, c, d = _natural_spline(t.expand_as(series), series, None)
    else:
        a, b, c, d = _spline_through_observed(t, series, observed)
    return CubicPath(t, torch.stack([unflatten(p) for p in (a, b, c, d)], dim=-2), smoothness=2)


def hermite_cubic_backward(t: torch.Tensor | None, x: torch.Tensor) -> CubicPath:
    """Cubic Hermite interpolation with backward differences: on [t_i, t_{i+1}] the cubic through
    x_i and x_{i+1} whose slopes there are the divided differences (x_i − x_{i−1})/(t_i − t_{i−1})
    and (x_{i+1} − x_i)/(t_{i+1} − t_i). C¹, and causal: the path up to t_{i+1} reads no later
    observation, the usual choice for online prediction (Morrill et al. 2021; torchcde's
    `hermite_cubic_coefficients_with_backward_differences`, diffrax's
    `backward_hermite_coefficients`). Missing values are filled as `linear` fills them.

    Args:
        t: (L,) observation times, or None for 0, 1, ..., L − 1.
        x: (..., L, channels); NaN marks a missing value.
    """
    t, x = _check_data(t, x, "hermite_cubic_backward")
    x = _fill_linear(t, x)
    dt = (t[1:] - t[:-1]).unsqueeze(-1)
    slope = (x[..., 1:, :] - x[..., :-1, :]) / dt
    left = torch.cat([slope[..., :1, :], slope[..., :-1, :]], dim=-2)  # the first piece repeats its slope
    a = x[..., :-1, :]
    c = 2 * (slope - left) / dt
    d = (left - slope) / dt**2
    return CubicPath(t, torch.stack([a, left, c, d], dim=-2), smoothness=1)


def linear(t: torch.Tensor | None, x: torch.Tensor) -> LinearPath:
    """Linear interpolation of the observations. dX/dt jumps at every observation, so a CDE
    solve lands on each and restarts there. A missing value is interpolated linearly from the
    observations either side of it in its channel; before the first or after the last it
    takes that observation's value; a channel with no observation is zero (torchcde's
    `linear_interpolation_coeffs`).

    Args:
        t: (L,) observation times, or None for 0, 1, ..., L − 1.
        x: (..., L, channels); NaN marks a missing value.
    """
    t, x = _check_data(t, x, "linear")
    return LinearPath(t, _fill_linear(t, x))


def rectilinear(t: torch.Tensor | None, x: torch.Tensor, time_channel: int | None = None) -> LinearPath:
    """Rectilinear interpolation: between two observations, first time advances with the values
    held, then the values move to the next observation with time held (Morrill et al. 2021).
    Causal even with missing values, which are filled forward (a value missing at the start
    takes the first observation's value, which is not causal, and warns, as torchcde does).

    The path carries time as a channel: `time_channel=None` prepends `t` as channel 0, or name
    the channel of `x` that holds time. It is parameterized so that X(t_i) is the observation
    at t_i (time moves on [t_i, m_i], the values on [m_i, t_{i+1}], m_i the midpoint), so a CDE
    solution read at the observation times is the one torchcde's index-parameterized path gives.

    Args:
        t: (L,) observation times, or None for 0, 1, ..., L − 1.
        x: (..., L, channels); NaN marks a missing value.
        time_channel: the channel of x holding time, or None to prepend t.
    """
    t, x = _check_data(t, x, "rectilinear")
    if time_channel is None:
        x = torch.cat([t.view(-1, 1).expand(*x.shape[:-1], 1), x], dim=-1)
        time_channel = 0
    elif (
        isinstance(time_channel, bool)
        or not isinstance(time_channel, int)
        or not -x.shape[-1] <= time_channel < x.shape[-1]
    ):
        raise ValueError(
            f"rectilinear: time_channel must be None or a channel index of x (which has {x.shape[-1]}); got "
            f"{time_channel!r}"
        )
    time_channel %= x.shape[-1]
    if bool(torch.isnan(x[..., time_channel]).any()):
        raise ValueError(f"rectilinear: the time channel ({time_channel}) of x has missing values (NaN)")
    if bool(torch.isnan(x[..., 0, :]).any()):
        warnings.warn(
            "rectilinear: x begins with missing values in some channels; they take the first observed value of "
            "their channel, which is not causal. Fill the first row yourself (a channel mean, say) if causality "
            "matters",
            RuntimeWarning,
            stacklevel=2,
        )
    x = _fill_linear(t, _fill_forward(x))  # forward fill; the linear fill then only fills the start
    held = x.repeat_interleave(2, dim=-2)[..., :-1, :].clone()  # x_0, x_0, x_1, x_1, ..., x_{L-1}
    held[..., 1::2, time_channel] = x[..., 1:, time_channel]  # at m_i time has already moved on
    mid = (t[:-1] + t[1:]) / 2
    knots = torch.stack([t[:-1], mid], dim=-1).reshape(-1)
    knots = torch.cat([knots, t[-1:]])
    if not bool((knots[1:] > knots[:-1]).all()):
        raise ValueError(
            f"rectilinear: two times of t are too close for a midpoint between them in {t.dtype} (the path moves "
            "time and values on either half of each interval); use float64 data or shift t toward 0"
        )
    return LinearPath(knots, held)


def observation_counts(x: torch.Tensor) -> torch.Tensor:
    """(..., L, channels) -> (..., L, channels): how many values of each channel have been
    observed (are not NaN) up to and including each time. Appended to the data as extra
    channels (`with_observation_counts`), it lets a model see where values were missing, which
    is often informative (Kidger et al. 2020, "Neural CDEs for irregular time series", §3.5).
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise ValueError("observation_counts: x must be a floating-point tensor of shape (..., length, channels)")
    return (~torch.isnan(x)).to(x.dtype).cumsum(dim=-2)


def with_observation_counts(t: torch.Tensor | None, x: torch.Tensor, *, time: bool = True) -> torch.Tensor:
    """The data a neural CDE on irregular, partly missing data usually reads: time as channel 0
    (with `time=True`), then x, then `observation_counts(x)`: (..., L, 1 + 2·channels)."""
    t, x = _check_data(t, x, "with_observation_counts")
    parts = [t.view(-1, 1).expand(*x.shape[:-1], 1)] if time else []
    return torch.cat([*parts, x, observation_counts(x)], dim=-1)


# ---------------------------------------------------------------------------------------------


def _check_data(t: torch.Tensor | None, x: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: x must be a tensor of shape (..., length, channels); got {type(x).__name__}")
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name}: x must be float32 or float64; got {x.dtype}")
    if x.dim() < 2 or x.shape[-2] < 2 or x.shape[-1] < 1:
        raise ValueError(
            f"{name}: x must have shape (..., length, channels) with length >= 2 and channels >= 1; got "
            f"{tuple(x.shape)}"
        )
    if bool(torch.isinf(x).any()):
        raise ValueError(f"{name}: x contains Inf (missing values are NaN)")
    length = x.shape[-2]
    if t is None:
        t = torch.arange(length, dtype=x.dtype, device=x.device)
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.dim() != 1 or t.shape[0] != length:
        raise ValueError(
            f"{name}: t must have shape ({length},), one time per row of x (x is {tuple(x.shape)}); got {tuple(t.shape)}"
        )
    if not t.is_floating_point():
        t = t.to(x.dtype)
    t = t.to(dtype=x.dtype, device=x.device)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: t contains NaN or Inf")
    if not bool((t[1:] > t[:-1]).all()):
        raise ValueError(f"{name}: t must be strictly increasing (in x's dtype, {x.dtype})")
    return t, x


def _as_series(x: torch.Tensor):
    """(..., L, C) -> (S, L) one row per (batch element, channel), and the way back for
    per-interval coefficients (S, L − 1) -> (..., L − 1, C)."""
    batch, C = x.shape[:-2], x.shape[-1]
    series = x.movedim(-1, -2).reshape(-1, x.shape[-2])

    def unflatten(coeff: torch.Tensor) -> torch.Tensor:
        return coeff.reshape(*batch, C, coeff.shape[-1]).movedim(-1, -2)

    return series, unflatten


def _fill_ends(series: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Values missing before a row's first observation take it, after its last take that."""
    L = series.shape[-1]
    position = torch.arange(L, device=series.device).expand_as(series)
    never = torch.full_like(position, L)
    first = torch.where(observed, position, never).min(-1).values.clamp(max=L - 1)
    last = torch.where(observed, position, -1).max(-1).values.clamp(min=0)
    first_value = series.gather(-1, first.unsqueeze(-1))
    last_value = series.gather(-1, last.unsqueeze(-1))
    series = torch.where(position < first.unsqueeze(-1), first_value, series)
    return torch.where(position > last.unsqueeze(-1), last_value, series)


def _fill_forward(x: torch.Tensor) -> torch.Tensor:
    """Each missing value takes the last observed value before it in its channel (along dim -2)."""
    observed = ~torch.isnan(x)
    position = torch.arange(x.shape[-2], device=x.device).view(-1, 1).expand_as(x)
    last_seen = torch.where(observed, position, 0).cummax(dim=-2).values
    return torch.where(observed, x, x.gather(-2, last_seen))  # no observation yet: stays NaN


def _fill_linear(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Missing values interpolated linearly in time from the observations either side in their
    channel, the ends held at the first and last observation, empty channels zero."""
    observed = ~torch.isnan(x)
    if bool(observed.all()):
        return x
    L = x.shape[-2]
    position = torch.arange(L, device=x.device).view(-1, 1).expand_as(x)
    before = torch.where(observed, position, -1).cummax(dim=-2).values  # last observed index ≤ i
    after = torch.where(observed, position, L).flip(-2).cummin(dim=-2).values.flip(-2)  # first ≥ i
    empty = (before < 0) & (after >= L)
    before = torch.where(before < 0, after, before).clamp(0, L - 1)
    after = torch.where(after >= L, before, after).clamp(0, L - 1)
    safe = torch.where(observed, x, torch.zeros((), dtype=x.dtype, device=x.device))
    x_before, x_after = safe.gather(-2, before), safe.gather(-2, after)
    times = t.view(-1, 1).expand_as(x)
    t_before, t_after, t_here = t[before], t[after], times
    span = torch.where(after > before, t_after - t_before, torch.ones((), dtype=x.dtype, device=x.device))
    weight = torch.where(after > before, (t_here - t_before) / span, torch.zeros((), dtype=x.dtype, device=x.device))
    filled = x_before + weight * (x_after - x_before)
    filled = torch.where(empty, torch.zeros((), dtype=x.dtype, device=x.device), filled)
    return torch.where(observed, x, filled)


def _tridiagonal_solve(lower: torch.Tensor, diag: torch.Tensor, upper: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Thomas' algorithm along the last dimension, batched over the others: lower[i] couples row
    i + 1 to i, upper[i] row i to i + 1 (both of length n − 1). The systems here are diagonally
    dominant, so no pivoting is needed."""
    n = diag.shape[-1]
    d = [diag[..., 0]]
    r = [rhs[..., 0]]
    for i in range(1, n):
        w = lower[..., i - 1] / d[i - 1]
        d.append(diag[..., i] - w * upper[..., i - 1])
        r.append(rhs[..., i] - w * r[i - 1])
    out = [r[n - 1] / d[n - 1]]
    for i in range(n - 2, -1, -1):
        out.append((r[i] - upper[..., i] * out[-1]) / d[i])
    return torch.stack(out[::-1], dim=-1)


def _natural_spline(t: torch.Tensor, y: torch.Tensor, count: torch.Tensor | None):
    """The natural cubic spline through (t, y) row by row: t, y of shape (S, L). With `count`
    (S,), row s uses only its first count[s] ≥ 2 points (the rest padding; its pieces there are
    meaningless). Returns a, b, c, d of shape (S, L − 1) in powers of (t − t_i).

    The knot slopes m solve the C² conditions m_{i−1}/h_{i−1} + 2m_i(1/h_{i−1} + 1/h_i) + m_{i+1}/h_i
    = 3(δ_{i−1}/h_{i−1} + δ_i/h_i), with 2m_0 + m_1 = 3δ_0 and m_{L−2} + 2m_{L−1} = 3δ_{L−2} at the ends.
    """
    L = y.shape[-1]
    one = torch.ones((), dtype=y.dtype, device=y.device)
    h = t[..., 1:] - t[..., :-1]
    real = (
        torch.ones_like(h, dtype=torch.bool)
        if count is None
        else torch.arange(L - 1, device=y.device) < (count - 1).unsqueeze(-1)
    )
    h = torch.where(real, h, one)
    slope = (y[..., 1:] - y[..., :-1]) / h
    inv_h = torch.where(real, 1 / h, torch.zeros_like(h))
    diag = torch.zeros_like(y)
    diag[..., :-1] += 2 * inv_h
    diag[..., 1:] += 2 * inv_h
    rhs = torch.zeros_like(y)
    rhs[..., :-1] += 3 * slope * inv_h
    rhs[..., 1:] += 3 * slope * inv_h
    if count is not None:  # padding rows: m = 0, decoupled
        diag = torch.where(diag == 0, one, diag)
    m = _tridiagonal_solve(inv_h, diag, inv_h, rhs)
    m_left, m_right = m[..., :-1], m[..., 1:]
    c = (3 * slope - 2 * m_left - m_right) / h
    d = (m_left + m_right - 2 * slope) / h**2
    return y[..., :-1], m_left, c, d


def _spline_through_observed(t: torch.Tensor, series: torch.Tensor, observed: torch.Tensor):
    """Natural splines of rows with missing values: each through its own observed points
    (compacted to the front, padding after), then each interval [t_i, t_{i+1}] takes the piece of
    the observed interval holding t_i, re-expanded about t_i."""
    S, L = series.shape
    order = torch.sort((~observed).to(torch.int8), dim=-1, stable=True).indices  # observed first, in order
    count = observed.sum(-1)
    tt = t.expand(S, L).gather(-1, order)
    yy = series.gather(-1, order)
    # Padding continues the last observed time in unit steps so the padded system stays regular.
    position = torch.arange(L, device=t.device).expand(S, L)
    last_t = tt.gather(-1, (count - 1).unsqueeze(-1))
    pad = position >= count.unsqueeze(-1)
    tt = torch.where(pad, last_t + (position - count.unsqueeze(-1) + 1).to(t.dtype), tt)
    yy = torch.where(pad, torch.zeros_like(yy), yy)
    a, b, c, d = _natural_spline(tt, yy, count)
    # Interval i of the data lies in observed interval j = (observations up to t_i) − 1.
    j = (observed.cumsum(-1)[..., :-1] - 1).clamp(min=0)
    j = torch.minimum(j, (count - 2).clamp(min=0).unsqueeze(-1))
    a, b, c, d = (p.gather(-1, j) for p in (a, b, c, d))
    s = t[:-1] - tt.gather(-1, j)  # the offset of t_i into its observed piece
    return (
        a + s * (b + s * (c + s * d)),
        b + s * (2 * c + 3 * s * d),
        c + 3 * s * d,
        d,
    )
