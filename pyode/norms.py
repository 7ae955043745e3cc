"""Norms for step-size control, and the seminorms the adjoint methods use.

A norm here is any callable from a tensor (or a tuple of tensors) to a 0-d tensor. The step
controller applies it to the error scaled by `atol + rtol·max(|y_n|, |y_{n+1}|)` and accepts the
step when the result is at most 1. Norms must be homogeneous (‖c·x‖ = |c|·‖x‖); the controller
relies on that to leave the step size out of the per-element arithmetic.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence, Union

import torch

State = Union[torch.Tensor, tuple]
Norm = Callable[[State], torch.Tensor]


def _parts(x: State) -> tuple[torch.Tensor, ...]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def rms_norm(x: State) -> torch.Tensor:
    """Root mean square over every element (of every tensor, for a tuple)."""
    if isinstance(x, torch.Tensor):
        n = x.numel()
        return torch.linalg.vector_norm(x) * (1.0 / math.sqrt(n)) if n else x.new_zeros(())
    parts = _parts(x)
    n = sum(p.numel() for p in parts)
    if n == 0:
        return parts[0].new_zeros(())
    squares = torch.stack([torch.linalg.vector_norm(p) ** 2 for p in parts]).sum()
    return torch.sqrt(squares / n)


def max_norm(x: State) -> torch.Tensor:
    """Largest absolute element (of every tensor, for a tuple)."""
    parts = [p for p in _parts(x) if p.numel()]
    if not parts:
        return _parts(x)[0].new_zeros(())
    return torch.stack([p.abs().max() for p in parts]).max()


def mixed_norm(x: State) -> torch.Tensor:
    """For a tuple, the largest of the components' RMS norms; for a tensor, its RMS norm.

    This is torchdiffeq's default for tuple states, and the adjoints' full norm: each channel
    group (state, adjoint state, parameter adjoint) counts as one, however many elements it has,
    so a million parameter entries cannot dilute the state's error. (torchdiffeq's adjoint
    grouped all parameters as one channel up to version 0.1; from 0.2 on it scores each
    parameter tensor on its own, a stricter norm: pass that as the adjoint's `internalnorm` to
    reproduce it.)
    """
    if isinstance(x, torch.Tensor):
        return rms_norm(x)
    return torch.stack([rms_norm(p) for p in _parts(x)]).max()


def make_seminorm(keep: int | Sequence[int], norm: Norm = mixed_norm) -> Norm:
    """A seminorm on tuple states: `norm` of the components listed in `keep` only.

    The others still evolve, but their error no longer rejects steps. Kidger, Chen & Lyons (2021)
    use this for the adjoint's parameter and time channels [z, a_z, a_θ, a_t], which are plain
    integrals of the first two: `make_seminorm(keep=2)` measures z and a_z only.

    Args:
        keep: the number of leading components to measure, or their indices.
        norm: the norm applied to the kept components (`mixed_norm` by default).
    """
    indices = tuple(range(keep)) if isinstance(keep, int) else tuple(keep)
    if not indices:
        raise ValueError("make_seminorm needs at least one component to keep")
    if any(not isinstance(i, int) or i < 0 for i in indices):
        raise ValueError(f"make_seminorm: keep must be a count or non-negative indices; got {keep!r}")

    def seminorm(x: State) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            raise TypeError("a seminorm measures some components of a tuple state; got a single tensor")
        if max(indices) >= len(x):
            raise ValueError(f"seminorm keeps components {indices}, but the state has {len(x)}")
        kept = tuple(x[i] for i in indices)
        return norm(kept if len(kept) > 1 else kept[0])

    seminorm.__name__ = f"seminorm(keep={indices}, norm={getattr(norm, '__name__', norm)})"
    return seminorm
