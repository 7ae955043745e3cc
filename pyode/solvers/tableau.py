"""Butcher tableaus held as exact data, checked once when they are built."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Sequence

import torch

from .._exact import Coefficient
from .._exact import exact as _exact

# Coefficients printed as decimals (Tsit5, DOP853) satisfy the row-sum conditions only to the
# digits printed (20-30), so inexact tableaus are checked to this tolerance instead of exactly.
_DECIMAL_TOLERANCE = Fraction(1, 10**14)


def _close(x: Fraction, y: Fraction) -> bool:
    return abs(x - y) <= _DECIMAL_TOLERANCE


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge–Kutta method as data: nodes `c`, the strictly lower-triangular `a`,
    weights `b`, and zero or more error-weight vectors `b_error` (each b minus an embedded b̂).

    Build it with `from_rows`, which checks the consistency conditions and derives FSAL.
    """

    c: tuple[Fraction, ...]
    a: tuple[tuple[Fraction, ...], ...]
    b: tuple[Fraction, ...]
    b_error: tuple[tuple[Fraction, ...], ...]
    fsal: bool
    _cast_cache: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    @classmethod
    def from_rows(
        cls,
        c: Sequence[Coefficient],
        a: Sequence[Sequence[Coefficient]],
        b: Sequence[Coefficient],
        b_embedded: Sequence[Coefficient] | None = None,
        b_error: Sequence[Sequence[Coefficient]] | None = None,
    ) -> ButcherTableau:
        """Args:
        c: the nodes, one per stage (c[0] = 0).
        a: row i holds a[i][0..i-1]; shorter rows are padded with zeros.
        b: the weights of the propagated solution.
        b_embedded: weights of an embedded lower-order solution; the error estimate is
            h·Σ (b_j - b̂_j) k_j.
        b_error: alternatively, the error weights themselves (one vector per estimate; DOP853
            has two), for methods published that way.
        """
        s = len(c)
        if len(a) != s or len(b) != s:
            raise ValueError(f"tableau needs len(c) == len(a) == len(b); got {len(c)}, {len(a)}, {len(b)}")
        c_ = tuple(_exact(x) for x in c)
        rows = []
        for i, row in enumerate(a):
            if len(row) > i:
                raise ValueError(f"tableau row {i} has {len(row)} entries; an explicit method allows {i}")
            rows.append(tuple(_exact(x) for x in row) + (Fraction(0),) * (i - len(row)))
        b_ = tuple(_exact(x) for x in b)
        if b_embedded is not None and b_error is not None:
            raise ValueError("give b_embedded or b_error, not both")
        if b_embedded is not None:
            if len(b_embedded) != s:
                raise ValueError(f"b_embedded needs {s} entries; got {len(b_embedded)}")
            errors = (tuple(bj - _exact(x) for bj, x in zip(b_, b_embedded)),)
        elif b_error is not None:
            errors = tuple(tuple(_exact(x) for x in e) for e in b_error)
            if any(len(e) != s for e in errors):
                raise ValueError(f"each b_error vector needs {s} entries")
        else:
            errors = ()

        if c_[0] != 0:
            raise ValueError(f"c[0] must be 0 for an explicit method; got {c_[0]}")
        for i, row in enumerate(rows):
            if not _close(sum(row, Fraction(0)), c_[i]):
                raise ValueError(f"row {i} of a sums to {float(sum(row))}, but c[{i}] = {float(c_[i])}")
        if not _close(sum(b_, Fraction(0)), Fraction(1)):
            raise ValueError(f"the weights b sum to {float(sum(b_))}, not 1")
        for e in errors:
            if not _close(sum(e, Fraction(0)), Fraction(0)):
                raise ValueError(f"error weights sum to {float(sum(e))}, not 0")

        # First same as last: the last stage is evaluated at the new solution, so it is the next
        # step's first stage and costs nothing.
        fsal = s > 1 and c_[-1] == 1 and rows[-1][: s - 1] == b_[: s - 1] and b_[-1] == 0
        return cls(c=c_, a=tuple(rows), b=b_, b_error=errors, fsal=fsal)

    @property
    def stages(self) -> int:
        return len(self.c)

    def cast(self, dtype: torch.dtype, device: torch.device) -> CastTableau:
        """The coefficients as tensors of `dtype` on `device`, made once and then cached."""
        key = (dtype, torch.device(device))
        cast = self._cast_cache.get(key)
        if cast is None:
            # Built outside inference mode: a cached inference tensor could never be saved for
            # backward, so one solve under torch.inference_mode() would break every later
            # training solve. Normal tensors serve inference mode just as well.
            with torch.inference_mode(False):
                cast = self._cast(dtype, device)
            self._cast_cache[key] = cast
        return cast

    def _cast(self, dtype: torch.dtype, device: torch.device) -> CastTableau:
        s = self.stages
        # Row i padded to all s stages: a stage combination is then one matrix-vector product
        # over the whole (zero-initialised) stage buffer, with no slicing per stage.
        rows = [[float(x) for x in row] + [0.0] * (s - len(row)) for row in self.a]
        a_full = torch.tensor(rows, dtype=dtype).to(device)
        errors = [[float(x) for x in e] for e in self.b_error]
        return CastTableau(
            c=tuple(float(x) for x in self.c),
            a_rows=tuple(a_full[i] for i in range(s)),
            b=torch.tensor([float(x) for x in self.b], dtype=dtype).to(device),
            b_error=torch.tensor(errors, dtype=dtype).T.contiguous().to(device) if errors else None,
        )


@dataclass(frozen=True)
class CastTableau:
    """A tableau's coefficients as tensors on one device: what the stepper reads each step."""

    c: tuple[float, ...]
    a_rows: tuple[torch.Tensor, ...]  # each (s,), zero beyond the row's stage
    b: torch.Tensor  # (s,)
    b_error: torch.Tensor | None  # (s, number of error estimates)
