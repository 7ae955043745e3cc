"""Mixed precision: f may run under `torch.autocast`, the solver's own arithmetic never does.

A solve called inside an autocast region (PyTorch Lightning's `precision="bf16-mixed"` wraps the
training step in one) would otherwise run its stage combinations, interpolation and error norms
in half precision, and the step control would chase the rounding. `solve` wraps f to run under
the caller's autocast and everything else under `no_autocast`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Callable

import torch


def autocast_in_force(device: torch.device) -> tuple[str, torch.dtype] | None:
    """(device type, dtype) of the autocast in force for `device`, if any."""
    kind = device.type
    if not torch.amp.is_autocast_available(kind) or not torch.is_autocast_enabled(kind):
        return None
    return kind, torch.get_autocast_dtype(kind)


def no_autocast(device: torch.device) -> AbstractContextManager:
    """A context in which autocast is off for `device` (nothing to do where it has none)."""
    kind = device.type
    return torch.autocast(kind, enabled=False) if torch.amp.is_autocast_available(kind) else nullcontext()


def under_autocast(f: Callable, device_type: str, dtype: torch.dtype) -> Callable:
    """f, evaluated under the autocast that was in force when the solve began."""

    def f_autocast(t, y):
        with torch.autocast(device_type, dtype=dtype):
            return f(t, y)

    return f_autocast
