"""Exact coefficients: the one conversion that tableaus and interpolants share."""

from __future__ import annotations

from fractions import Fraction
from typing import Union

Coefficient = Union[Fraction, int, str]


def exact(x: Coefficient) -> Fraction:
    """A coefficient as an exact Fraction; a string is read as the decimal it prints."""
    if isinstance(x, float):
        raise TypeError(
            f"coefficient {x!r} is a float; write it as a Fraction or a decimal string so that no digits are lost"
        )
    return Fraction(x)
