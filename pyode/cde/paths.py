"""Continuous paths through observed data: the controls X of a controlled differential equation.

A path is piecewise polynomial between its knots (the observation times). `evaluate(t)` gives
X(t) and `derivative(t)` gives dX/dt, the term a CDE solver multiplies the vector field by. At
a knot the piece to its left is used (the right one at the first knot), so a step that ends on a
knot sees the derivative of the piece it integrated over; `smoothness` says how many
derivatives are continuous there, which decides whether steps must land on the knots.
"""

from __future__ import annotations

import abc
from typing import Any

import torch

TimeArg = float | int | torch.Tensor


class AbstractPath(abc.ABC):
    """A path X: [knots[0], knots[-1]] -> R^channels, batched over leading dimensions.

    Attributes:
        knots: (n,) increasing times where the pieces join (the observation times).
        smoothness: the path is C^smoothness at its knots: 0 for piecewise linear (dX/dt jumps),
            1 for cubic Hermite (d²X/dt² jumps), 2 for the natural cubic spline.
    """

    knots: torch.Tensor
    smoothness: int

    @abc.abstractmethod
    def evaluate(self, t: TimeArg) -> torch.Tensor:
        """X(t): (..., channels) for a scalar t, (..., T, channels) for t of shape (T,)."""

    @abc.abstractmethod
    def derivative(self, t: TimeArg) -> torch.Tensor:
        """dX/dt: (..., channels) for a scalar t, (..., T, channels) for t of shape (T,)."""

    @abc.abstractmethod
    def derivative_each(self, t: torch.Tensor) -> torch.Tensor:
        """dX/dt with a time per batch element: t of shape (B,) for a path of batch shape (B, ...)
        gives (B, ..., channels), element b read at t[b] (per-sample step sizes)."""

    @abc.abstractmethod
    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The tensors `derivative` reads: a CDE's adjoint differentiates with respect to those
        of them that require grad, and autograd carries that on to the data they came from."""

    @abc.abstractmethod
    def to(self, *args: Any, **kwargs: Any) -> AbstractPath:
        """A copy on another device or dtype, as `Tensor.to`."""

    @property
    def interval(self) -> torch.Tensor:
        """(2,): the first and last knot (torchcde's name)."""
        return torch.stack([self.knots[0], self.knots[-1]])

    @property
    def grid_points(self) -> torch.Tensor:
        """The knots (torchcde's name)."""
        return self.knots

    @property
    @abc.abstractmethod
    def channels(self) -> int:
        """The number of channels."""

    @property
    @abc.abstractmethod
    def batch_shape(self) -> torch.Size:
        """The batch dimensions of the data the path was built from."""

    @property
    def dtype(self) -> torch.dtype:
        return self.knots.dtype

    @property
    def device(self) -> torch.device:
        return self.knots.device

    def _times(self, t: TimeArg) -> torch.Tensor:
        if isinstance(t, torch.Tensor):
            if t.dim() > 1:
                raise ValueError(f"t must be a scalar or a 1-D tensor of times; got shape {tuple(t.shape)}")
            return t.to(dtype=self.dtype, device=self.device)
        return torch.as_tensor(t, dtype=self.dtype, device=self.device)

    def _piece(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(index of the piece holding t, t minus that piece's left knot). A time on a knot
        belongs to the piece on its left; times outside the knots extend the end pieces."""
        knots = self.knots
        index = (torch.bucketize(t.detach().contiguous(), knots.detach()) - 1).clamp(0, knots.shape[0] - 2)
        return index, t - _take(knots, 0, index)


class CubicPath(AbstractPath):
    """Piecewise cubic: on [knots[i], knots[i+1]], X = a_i + b_i s + c_i s² + d_i s³ with
    s = t − knots[i]. Built by `natural_cubic_spline` and `hermite_cubic_backward`.

    Args:
        knots: (n,) increasing times, n ≥ 2.
        coeffs: (..., n − 1, 4, channels): a, b, c, d of each piece, in one tensor (the adjoints
            differentiate with respect to it, and autograd carries that on to the data).
        smoothness: 1 or 2 (see `AbstractPath`).
    """

    def __init__(self, knots: torch.Tensor, coeffs: torch.Tensor, smoothness: int = 1):
        _check_knots(knots)
        if coeffs.dim() < 3 or coeffs.shape[-3] != knots.shape[0] - 1 or coeffs.shape[-2] != 4:
            raise ValueError(
                f"CubicPath: coeffs must have shape (..., {knots.shape[0] - 1}, 4, channels), one row of a, b, c, d "
                f"per piece between the {knots.shape[0]} knots; got {tuple(coeffs.shape)}"
            )
        self.knots, self.coeffs = knots, coeffs
        self.smoothness = smoothness

    @property
    def a(self) -> torch.Tensor:
        return self.coeffs[..., 0, :]

    @property
    def b(self) -> torch.Tensor:
        return self.coeffs[..., 1, :]

    @property
    def c(self) -> torch.Tensor:
        return self.coeffs[..., 2, :]

    @property
    def d(self) -> torch.Tensor:
        return self.coeffs[..., 3, :]

    @property
    def channels(self) -> int:
        return self.coeffs.shape[-1]

    @property
    def batch_shape(self) -> torch.Size:
        return self.coeffs.shape[:-3]

    def evaluate(self, t: TimeArg) -> torch.Tensor:
        index, s = self._piece(self._times(t))
        piece = _take(self.coeffs, -3, index)
        s = s.unsqueeze(-1)
        a, b, c, d = piece.unbind(-2)
        return a + s * (b + s * (c + s * d))

    def derivative(self, t: TimeArg) -> torch.Tensor:
        index, s = self._piece(self._times(t))
        _, b, c, d = _take(self.coeffs, -3, index).unbind(-2)
        s = s.unsqueeze(-1)
        return b + s * (2 * c + 3 * s * d)

    def derivative_each(self, t: torch.Tensor) -> torch.Tensor:
        if self.coeffs.dim() < 4:
            raise ValueError(
                "derivative_each needs a path with a batch dimension (data of shape (B, length, channels))"
            )
        index, s = self._piece(self._times(t))
        _, b, c, d = _gather_each(self.coeffs, index, dim=-3).unbind(-2)
        s = s.view(-1, *[1] * (b.dim() - 1))
        return b + s * (2 * c + 3 * s * d)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.coeffs,)

    def to(self, *args: Any, **kwargs: Any) -> CubicPath:
        return CubicPath(self.knots.to(*args, **kwargs), self.coeffs.to(*args, **kwargs), self.smoothness)

    def __repr__(self) -> str:
        return (
            f"CubicPath(knots={self.knots.shape[0]}, batch_shape={tuple(self.batch_shape)}, channels={self.channels}, "
            f"smoothness=C{self.smoothness})"
        )


class LinearPath(AbstractPath):
    """Piecewise linear through `values` at `knots`: dX/dt is constant on each piece and jumps
    at the knots, so a CDE solve lands on every knot and restarts there (`smoothness` 0).
    Built by `linear` and `rectilinear`.

    Args:
        knots: (n,) increasing times, n ≥ 2.
        values: (..., n, channels), X at the knots.
    """

    smoothness = 0

    def __init__(self, knots: torch.Tensor, values: torch.Tensor):
        _check_knots(knots)
        if values.dim() < 2 or values.shape[-2] != knots.shape[0]:
            raise ValueError(
                f"LinearPath: values must have shape (..., {knots.shape[0]}, channels), one row per knot; got "
                f"{tuple(values.shape)}"
            )
        self.knots, self.values = knots, values

    @property
    def channels(self) -> int:
        return self.values.shape[-1]

    @property
    def batch_shape(self) -> torch.Size:
        return self.values.shape[:-2]

    def _slope(self, index: torch.Tensor, gather=None) -> torch.Tensor:
        take = (lambda i: _take(self.values, -2, i)) if gather is None else (lambda i: _gather_each(self.values, i))
        width = _take(self.knots, 0, index + 1) - _take(self.knots, 0, index)
        if gather is not None:
            width = width.view(-1, *[1] * (self.values.dim() - 2))
        else:
            width = width.unsqueeze(-1)
        return (take(index + 1) - take(index)) / width

    def evaluate(self, t: TimeArg) -> torch.Tensor:
        index, s = self._piece(self._times(t))
        return _take(self.values, -2, index) + s.unsqueeze(-1) * self._slope(index)

    def derivative(self, t: TimeArg) -> torch.Tensor:
        index, _ = self._piece(self._times(t))
        return self._slope(index)

    def derivative_each(self, t: torch.Tensor) -> torch.Tensor:
        index, _ = self._piece(self._times(t))
        return self._slope(index, gather=True)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.values,)

    def to(self, *args: Any, **kwargs: Any) -> LinearPath:
        return LinearPath(self.knots.to(*args, **kwargs), self.values.to(*args, **kwargs))

    def __repr__(self) -> str:
        return (
            f"LinearPath(knots={self.knots.shape[0]}, batch_shape={tuple(self.batch_shape)}, channels={self.channels})"
        )


def _take(x: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """x indexed along `dim` by a 0-d or 1-D index tensor, as x[..., index, ...] would be, but
    with `index_select` (a tensor used as an index is read to the host, which a compiled step
    cannot trace)."""
    picked = x.index_select(dim, index.reshape(-1))
    return picked.squeeze(dim) if index.dim() == 0 else picked


def _gather_each(coeff: torch.Tensor, index: torch.Tensor, dim: int = -2) -> torch.Tensor:
    """Element b's row index[b] along `dim` (the pieces): coeff (B, ..., pieces, *rest),
    index (B,) -> (B, ..., *rest)."""
    B = coeff.shape[0]
    if coeff.dim() < 3 or index.shape != (B,):
        raise ValueError(
            f"a time per batch element needs a path with a batch dimension and t of shape ({coeff.shape[0]},), one "
            f"time per element; got t of shape {tuple(index.shape)} for a path with coefficients {tuple(coeff.shape)}"
        )
    dim = dim % coeff.dim()
    shape = [1] * coeff.dim()
    shape[0] = B
    expanded = index.view(shape).expand(*coeff.shape[:dim], 1, *coeff.shape[dim + 1 :])
    return coeff.gather(dim, expanded).squeeze(dim)


def _check_knots(knots: torch.Tensor) -> None:
    if not isinstance(knots, torch.Tensor) or knots.dim() != 1 or knots.shape[0] < 2:
        shape = tuple(knots.shape) if isinstance(knots, torch.Tensor) else type(knots).__name__
        raise ValueError(f"knots must be a 1-D tensor of at least 2 times; got {shape}")
    if not bool((knots[1:] > knots[:-1]).all()) or not bool(torch.isfinite(knots).all()):
        raise ValueError(f"knots must be finite and strictly increasing (in {knots.dtype})")
