"""torchcde's API on pyode's engine: `cdeint`, the coefficient functions and the interpolation
classes, with torchcde's signatures, shapes and coefficient layout.

Switching is a one-line change: `import pyode.compat.torchcde as torchcde`. The coefficients
are torchcde's ((..., length − 1, 4·channels) for the cubics: a, b, 2c, 3d; the filled data for
linear interpolation), so saved datasets load unchanged, and paths agree with torchcde's to
rounding. Differences worth knowing:
- `cdeint` solves with pyode's `odeint`/`odeint_adjoint` (the same method names and options).
  On pyode's own paths the steps land on the knots where the path is not C²: `linear` and
  `hermite` paths get `jump_t`/`step_t` at their knots unless the options name their own.
  torchcde leaves that to the user, and adaptive solvers then straddle the kinks.
- With `adjoint=True`, the tensors of the path that require grad are differentiated too (torchcde
  warns and gives them no gradient unless they are listed in `adjoint_params`).
- `backend="torchsde"` is refused: it only ran the ODE through SDE solvers.
- The deprecated `natural_cubic_spline_coeffs` / `NaturalCubicSpline` and the log-signature
  functions (which need `signatory`) are not provided.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ..cde import interpolate
from ..cde.paths import AbstractPath, CubicPath, LinearPath
from ..problem import cde_params
from ..terms import ControlledField, ControlTerm
from .torchdiffeq import odeint, odeint_adjoint


def natural_cubic_coeffs(x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
    """torchcde's `natural_cubic_coeffs`: (..., length − 1, 4·channels)."""
    return _cubic_layout(interpolate.natural_cubic_spline(t, x))


def hermite_cubic_coefficients_with_backward_differences(
    x: torch.Tensor, t: torch.Tensor | None = None
) -> torch.Tensor:
    """torchcde's `hermite_cubic_coefficients_with_backward_differences`: (..., length − 1, 4·channels)."""
    return _cubic_layout(interpolate.hermite_cubic_backward(t, x))


def linear_interpolation_coeffs(
    x: torch.Tensor, t: torch.Tensor | None = None, rectilinear: int | None = None
) -> torch.Tensor:
    """torchcde's `linear_interpolation_coeffs`: the data with missing values filled, (..., length,
    channels); with `rectilinear=i` (the index of the time channel) the (..., 2·length − 1,
    channels) data of the rectilinear path, whose knots are 0, 1, ..., 2·length − 2."""
    if rectilinear is None:
        return interpolate.linear(t, x).values
    if isinstance(rectilinear, bool) or not isinstance(rectilinear, int):
        raise ValueError(f"rectilinear must be the index of the time channel (an int); got {rectilinear!r}")
    if t is not None and (not isinstance(t, torch.Tensor) or t.shape != (2 * x.shape[-2] - 1,)):
        raise ValueError(
            f"linear_interpolation_coeffs: with rectilinear, t parameterizes the {2 * x.shape[-2] - 1} rows of the "
            f"rectilinear data (as in torchcde), so it must have shape ({2 * x.shape[-2] - 1},)"
        )
    return interpolate.rectilinear(None, x, time_channel=rectilinear).values


class CubicSpline(CubicPath):
    """torchcde's `CubicSpline(coeffs, t=None)`: the path of `natural_cubic_coeffs` or
    `hermite_cubic_coefficients_with_backward_differences` coefficients."""

    def __init__(self, coeffs: torch.Tensor, t: torch.Tensor | None = None, **kwargs: Any):
        if not isinstance(coeffs, torch.Tensor) or coeffs.dim() < 2 or coeffs.shape[-1] % 4:
            raise ValueError("CubicSpline: coeffs must have shape (..., length - 1, 4 * channels)")
        pieces = coeffs.shape[-2]
        if t is None:
            t = torch.linspace(0, pieces, pieces + 1, dtype=coeffs.dtype, device=coeffs.device)
        if kwargs:
            raise TypeError(f"CubicSpline: unexpected keyword arguments {sorted(kwargs)}")
        t = t.to(coeffs.dtype)
        a, b, two_c, three_d = coeffs.chunk(4, dim=-1)
        super().__init__(t, torch.stack([a, b, two_c / 2, three_d / 3], dim=-2), _smoothness(t, two_c, three_d))


class LinearInterpolation(LinearPath):
    """torchcde's `LinearInterpolation(coeffs, t=None)`."""

    def __init__(self, coeffs: torch.Tensor, t: torch.Tensor | None = None, **kwargs: Any):
        if kwargs:
            raise TypeError(f"LinearInterpolation: unexpected keyword arguments {sorted(kwargs)}")
        if t is None:
            t = torch.linspace(0, coeffs.shape[-2] - 1, coeffs.shape[-2], dtype=coeffs.dtype, device=coeffs.device)
        super().__init__(t.to(coeffs.dtype), coeffs)


def cdeint(
    X: Any,
    func: Callable,
    z0: torch.Tensor | tuple,
    t: torch.Tensor,
    adjoint: bool = True,
    backend: str = "torchdiffeq",
    **kwargs: Any,
) -> torch.Tensor | tuple:
    """Solve dz = func(t, z) dX(t) from z(t[0]) = z0 and return z at every time in `t`
    (torchcde's `cdeint`).

    Args:
        X: the control: a pyode path (`pyode.cde`), a torchcde-style path from this module, or any
            object with `derivative(t)` (torchcde's own paths work too).
        func: called as `func(t, z)`; returns (..., hidden, channels), or has `prod(t, z, dXdt)`.
        z0: (..., hidden), the batch dimensions those of X.
        t: (T,) output times; the solve runs from t[0] to t[-1].
        adjoint: gradients by the continuous adjoint (`odeint_adjoint`), else by autograd through
            the solver (`odeint`).
        **kwargs: `odeint`'s and `odeint_adjoint`'s (method, rtol, atol, options, adjoint_*);
            rtol and atol default to torchcde's 1e-4 and 1e-6, the adjoint's to the forward's.

    Returns:
        (..., T, hidden): the time dimension second to last, as torchcde returns it (a tuple of
        such for a tuple z0).
    """
    if backend != "torchdiffeq":
        raise ValueError(
            f'cdeint: backend={backend!r} is not available; pyode solves CDEs with its own solvers (backend="torchdiffeq", '
            "the default, takes torchdiffeq's method names). For SDEs use pyode's SDE solvers"
        )
    if not callable(getattr(X, "derivative", None)):
        raise ValueError("cdeint: X must have a 'derivative' method (a path such as pyode.cde.natural_cubic_spline)")
    if not isinstance(t, torch.Tensor) or t.dim() != 1:
        raise ValueError("cdeint: t must be a 1-D tensor of output times")
    kwargs.setdefault("rtol", 1e-4)
    kwargs.setdefault("atol", 1e-6)
    field = _CDEField(func, X)
    method = kwargs.get("method")
    if isinstance(X, AbstractPath) and method not in ("euler", "midpoint", "heun2", "rk4", "scipy_solver"):
        options = dict(kwargs.get("options") or {})
        if not any(key in options for key in ("step_t", "jump_t", "grid_points")) and X.smoothness < 2:
            options["jump_t" if X.smoothness == 0 else "step_t"] = X.knots
            if X.smoothness == 0:  # a span that starts or ends on an interior knot reads its inner side
                interior = set(X.knots[1:-1].detach().cpu().tolist())
                options["_jump_t_on_ends"] = [float(e) for e in (t[0], t[-1]) if float(e) in interior]
            kwargs["options"] = options
    if adjoint:
        kwargs.setdefault("adjoint_rtol", kwargs["rtol"])
        kwargs.setdefault("adjoint_atol", kwargs["atol"])
        out = odeint_adjoint(field, z0, t, **kwargs)
    else:
        out = odeint(field, z0, t, **kwargs)
    if isinstance(out, tuple):
        return tuple(o.movedim(0, -2) for o in out)
    return out.movedim(0, -2)


class _CDEField(nn.Module):
    """func(t, z) · dX/dt as torchdiffeq's func; its parameters are func's and the path's tensors
    that require grad (so `odeint_adjoint` differentiates the data too)."""

    def __init__(self, func: Callable, X: Any):
        super().__init__()
        self.func = func
        self.X = X
        self.field = ControlledField(ControlTerm(func, X))

    def forward(self, t: torch.Tensor, z: Any) -> Any:
        return self.field(t, z)

    def parameters(self, recurse: bool = True):
        yield from cde_params(self.func, self.X)


def _smoothness(t: torch.Tensor, two_c: torch.Tensor, three_d: torch.Tensor) -> int:
    """2 if the second derivative is continuous at the interior knots (natural cubic
    coefficients), else 1 (Hermite): whether a CDE solve needs to land on the knots."""
    if two_c.shape[-2] < 2:
        return 2
    with torch.no_grad():
        h = (t[1:-1] - t[:-2]).unsqueeze(-1)
        left = two_c[..., :-1, :] + 2 * three_d[..., :-1, :] * h  # X'' at the right end of each piece
        right = two_c[..., 1:, :]
        scale = left.abs().amax() + right.abs().amax() + 1e-30
        return 2 if bool(((left - right).abs() <= 1e3 * torch.finfo(t.dtype).eps * scale).all()) else 1


def _cubic_layout(path: CubicPath) -> torch.Tensor:
    a, b, c, d = path.coeffs.unbind(-2)
    return torch.cat([a, b, 2 * c, 3 * d], dim=-1)


__all__ = [
    "CubicSpline",
    "LinearInterpolation",
    "cdeint",
    "hermite_cubic_coefficients_with_backward_differences",
    "linear_interpolation_coeffs",
    "natural_cubic_coeffs",
]
