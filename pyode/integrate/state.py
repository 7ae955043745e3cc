"""How a state (a tensor of any shape, or a tuple of tensors) travels through the loop as one
flat vector, how f is called on it and checked, and how a time that requires grad moves a state
along the flow."""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

from ..norms import Norm, max_norm, rms_norm
from ..problem import State


class StateLayout:
    """How a state (a tensor of any shape, or a tuple of them) maps to one flat vector."""

    def __init__(self, y0: State):
        self.is_tuple = isinstance(y0, tuple)
        # A namedtuple state comes back (and reaches f) as the same namedtuple.
        self.tuple_type = type(y0) if self.is_tuple and hasattr(y0, "_fields") else None
        parts = y0 if self.is_tuple else (y0,)
        self.shapes = tuple(p.shape for p in parts)
        self.sizes = tuple(p.numel() for p in parts)
        self.numel = sum(self.sizes)
        self.dtype, self.device = parts[0].dtype, parts[0].device

    def _pack(self, parts: Sequence[torch.Tensor]) -> tuple:
        return self.tuple_type(*parts) if self.tuple_type is not None else tuple(parts)

    def flatten(self, y: State) -> torch.Tensor:
        if self.is_tuple:
            return torch.cat([p.reshape(-1) for p in y])
        return y.reshape(-1)

    def unflatten(self, flat: torch.Tensor) -> State:
        if self.is_tuple:
            return self._pack([p.view(s) for p, s in zip(flat.split(self.sizes), self.shapes)])
        return flat.view(self.shapes[0])

    def flatten_batch(self, ys: State) -> torch.Tensor:
        """(T, *shape), or a tuple of those, -> (T, n); T may be 0."""
        if self.is_tuple:
            return torch.cat([p.reshape(p.shape[0], size) for p, size in zip(ys, self.sizes)], dim=1)
        return ys.reshape(ys.shape[0], self.numel)

    def unflatten_batch(self, flat: torch.Tensor) -> State:
        """(T, n) -> (T, *shape), or a tuple of those."""
        T = flat.shape[0]
        if self.is_tuple:
            return self._pack([p.reshape(T, *s) for p, s in zip(flat.split(self.sizes, dim=1), self.shapes)])
        return flat.reshape(T, *self.shapes[0])

    def flat_norm(self, norm: Norm) -> Callable[[torch.Tensor], torch.Tensor]:
        # RMS and max give the same value on the flat vector as on the structured state.
        if norm is rms_norm or norm is max_norm:
            return norm
        return lambda flat: norm(self.unflatten(flat))

    def call(self, f: Callable, t: float | torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """f(t, y) on flat states: t as a 0-d tensor of y's dtype, the output checked and flattened.
        (t arrives as a tensor already inside a compiled step.)"""
        if isinstance(t, torch.Tensor):
            return self.derivative(f(t.to(dtype=y.dtype, device=y.device), self.unflatten(y)), math.nan)
        return self.derivative(f(torch.scalar_tensor(t, dtype=y.dtype, device=y.device), self.unflatten(y)), t)

    def call_at(self, f: Callable, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """`call` at a time given as a tensor, which may carry a gradient."""
        return self.derivative(f(t.to(dtype=y.dtype, device=y.device), self.unflatten(y)), float(t.detach()))

    def derivative(self, out: Any, t: float) -> torch.Tensor:
        """f's output as one flat vector of the state's dtype, checked against the state.

        Checked on every call (a few attribute comparisons), because a wrong shape would otherwise
        broadcast silently into the stage buffer. Half-precision output (f under `torch.autocast`)
        is cast to the state's dtype.
        """
        if self.is_tuple:
            if not isinstance(out, (tuple, list)) or len(out) != len(self.shapes):
                raise TypeError(
                    f"f must return a tuple of {len(self.shapes)} tensors like y; at t = {t:.6g} it returned "
                    f"{type(out).__name__}" + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else "")
                )
            parts = out
        else:
            parts = (out,)
        cast = False
        for i, (o, shape) in enumerate(zip(parts, self.shapes)):
            if isinstance(o, torch.Tensor) and o.shape == shape and o.dtype == self.dtype and o.device == self.device:
                continue
            name = f"f(t, y)[{i}]" if self.is_tuple else "f(t, y)"
            if not isinstance(o, torch.Tensor):
                raise TypeError(
                    f"{name} must return a tensor shaped like y; at t = {t:.6g} it returned {type(o).__name__}"
                )
            if o.shape != shape:
                raise ValueError(
                    f"{name} returned shape {tuple(o.shape)} at t = {t:.6g}, but the state has shape {tuple(shape)}; "
                    "f must return dy/dt shaped like y on every call"
                )
            if o.device != self.device:
                raise TypeError(f"{name} returned a tensor on {o.device}, but the state is on {self.device}")
            if o.dtype in (torch.float16, torch.bfloat16):
                cast = True
                continue
            raise TypeError(
                f"{name} returned dtype {o.dtype}, but the state has dtype {self.dtype}; f must return dy/dt of "
                "y's dtype (half-precision output from f under torch.autocast is cast back)"
            )
        if cast:
            parts = [o.to(self.dtype) for o in parts]
        if self.is_tuple:
            return torch.cat([p.reshape(-1) for p in parts])
        return parts[0].reshape(-1)


def flow_shift(f: Callable, t: float | torch.Tensor, y: torch.Tensor, delta: torch.Tensor, k=None) -> torch.Tensor:
    """y carried along the flow of f for a time δ that is zero in value but carries a time's
    gradient (δ = s - s.detach() for a save time s, say): one midpoint step,

        y + δ·f(t + δ/2, y + δ/2·k),   k = f(t, y) (given, or evaluated here).

    Its value is y. Its first and second derivatives in δ are the exact flow's, f and
    ∂f/∂t + ∂f/∂y·f, so first and second derivatives with respect to times come out right.
    `f(t, y)` takes t as a tensor (`StateLayout.call_at`); t may itself be a tensor.
    """
    half = delta / 2
    if k is None:
        k = f(t + 0 * delta, y)
    step = delta.to(y.dtype)
    return y + step * f(t + half, y + (step / 2) * k)
