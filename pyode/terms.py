"""What a stepper evaluates: terms of a differential equation, named as in diffrax.

A term is a vector field and a control: dy = vf(t, y) · dX(t). For an ODE the control is time
itself (`ODETerm`); a CDE's is a path through data (`ControlTerm` with a `pyode.cde` path); an
SDE's diffusion is a `ControlTerm` whose control is Brownian motion, and drift plus diffusion is
a `MultiTerm`. Each term says how to combine its vector field with a control increment (`prod`);
a term whose control is differentiable also gives the ODE it amounts to (`ode_field`), which is
how every ODE solver and sensitivity algorithm of pyode solves a CDE.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Union

import torch

State = Union[torch.Tensor, tuple]  # as in problem.py, which imports this module


class AbstractTerm(abc.ABC):
    """dy = vf(t, y) · dX: `vf` evaluates the vector field, `contr` the control's increment over
    a step, `prod` combines the two into a change of state."""

    @abc.abstractmethod
    def vf(self, t: torch.Tensor, y: State) -> Any:
        """The vector field at (t, y)."""

    @abc.abstractmethod
    def contr(self, t0: torch.Tensor, t1: torch.Tensor) -> Any:
        """The control's increment from t0 to t1."""

    @abc.abstractmethod
    def prod(self, vf: Any, control: Any) -> State:
        """The change of state from a vector field's value and a control increment."""

    def vf_prod(self, t: torch.Tensor, y: State, control: Any) -> State:
        return self.prod(self.vf(t, y), control)


class ODETerm(AbstractTerm):
    """dy = f(t, y) dt: the control is time."""

    def __init__(self, f: Callable):
        if not callable(f):
            raise TypeError(f"ODETerm: f must be callable as f(t, y); got {type(f).__name__}")
        self.f = f

    def vf(self, t: torch.Tensor, y: State) -> State:
        return self.f(t, y)

    def contr(self, t0: torch.Tensor, t1: torch.Tensor) -> torch.Tensor:
        return t1 - t0

    def prod(self, vf: State, control: torch.Tensor) -> State:
        if isinstance(vf, tuple):
            return tuple(v * control for v in vf)
        return vf * control


class ControlTerm(AbstractTerm):
    """dy = f(t, y) · dX(t), with f(t, y) a matrix of shape (*y.shape, channels) and X a path
    with `evaluate(t)` (for increments) and, when differentiable, `derivative(t)`.

    If f has a method `prod(t, y, dXdt)`, it computes f(t, y) · dX/dt itself (torchcde's
    convention, for vector fields that never form the matrix). A tuple state y takes a tuple of
    matrices from f, each multiplied by the same control.
    """

    def __init__(self, f: Callable, control: Any):
        if not callable(f):
            raise TypeError(f"ControlTerm: f must be callable as f(t, y); got {type(f).__name__}")
        for method in ("evaluate", "derivative"):
            if not callable(getattr(control, method, None)):
                raise TypeError(
                    f"ControlTerm: the control must be a path with an {method}(t) method (see pyode.cde); got "
                    f"{type(control).__name__}"
                )
        self.f, self.control = f, control

    def vf(self, t: torch.Tensor, y: State) -> Any:
        return self.f(t, y)

    def contr(self, t0: torch.Tensor, t1: torch.Tensor) -> torch.Tensor:
        return self.control.evaluate(t1) - self.control.evaluate(t0)

    def prod(self, vf: Any, control: torch.Tensor) -> State:
        if isinstance(vf, tuple):
            return tuple(_matvec(v, control, f"f(t, y)[{i}]") for i, v in enumerate(vf))
        return _matvec(vf, control, "f(t, y)")

    def ode_field(self) -> ControlledField:
        """dy/dt = f(t, y) · dX/dt: the ODE the CDE amounts to along a differentiable path."""
        return ControlledField(self)


class MultiTerm(AbstractTerm):
    """A sum of terms, each with its own control (drift plus diffusion): `vf` and `contr` give
    one entry per term, and `prod` sums the terms' products."""

    def __init__(self, *terms: AbstractTerm):
        if not terms or not all(isinstance(term, AbstractTerm) for term in terms):
            raise TypeError("MultiTerm: pass one or more terms (ODETerm, ControlTerm)")
        self.terms = terms

    def vf(self, t: torch.Tensor, y: State) -> tuple:
        return tuple(term.vf(t, y) for term in self.terms)

    def contr(self, t0: torch.Tensor, t1: torch.Tensor) -> tuple:
        return tuple(term.contr(t0, t1) for term in self.terms)

    def prod(self, vf: tuple, control: tuple) -> State:
        parts = [term.prod(v, c) for term, v, c in zip(self.terms, vf, control)]
        total = parts[0]
        for part in parts[1:]:
            total = tuple(a + b for a, b in zip(total, part)) if isinstance(total, tuple) else total + part
        return total


class ControlledField:
    """f(t, y) · dX/dt as an ODE vector field, called as (t, y) by the loop. With per-sample step
    sizes t has shape (B,), and element b of the path is read at t[b]."""

    def __init__(self, term: ControlTerm):
        self.term = term
        self.prod_by_f = callable(getattr(term.f, "prod", None))

    def compile_key(self, code_of: Callable) -> tuple:
        """What identifies this field's computation for the compiled-step cache: the vector
        field's, the path's type and its tensors' shapes."""
        control = self.term.control
        shapes = tuple(tuple(x.shape) for x in control.tensors()) if callable(getattr(control, "tensors", None)) else ()
        return code_of(self.term.f), type(control), shapes

    def __call__(self, t: torch.Tensor, y: State) -> State:
        control = self.term.control
        each = isinstance(t, torch.Tensor) and t.dim() == 1
        dX = control.derivative_each(t) if each else control.derivative(t)
        if self.prod_by_f:
            return self.term.f.prod(t, y, dX)
        matrix = self.term.f(t, y)
        parts, states = (matrix, y) if isinstance(y, tuple) else ((matrix,), (y,))
        for i, (m, z) in enumerate(zip(parts, states)):
            if isinstance(m, torch.Tensor) and m.shape[:-1] != z.shape:
                name = f"f(t, z)[{i}]" if isinstance(y, tuple) else "f(t, z)"
                raise ValueError(
                    f"{name} returned shape {tuple(m.shape)} for a state of shape {tuple(z.shape)}: a CDE's vector "
                    f"field returns a matrix of shape (*state, channels) = {(*z.shape, dX.shape[-1])}"
                )
        return self.term.prod(matrix, dX)


def _matvec(matrix: Any, dX: torch.Tensor, name: str) -> torch.Tensor:
    """matrix (*state, channels) times dX (*batch, channels), the path's batch dimensions
    aligned with the state's leading ones: (*state,)."""
    if not isinstance(matrix, torch.Tensor):
        raise TypeError(f"{name} must return a tensor of shape (*state, channels); got {type(matrix).__name__}")
    channels, k = dX.shape[-1], dX.dim() - 1
    if matrix.dim() < 2 or matrix.shape[-1] != channels or matrix.dim() - 1 < k:
        raise ValueError(
            f"{name} has shape {tuple(matrix.shape)}, but the control dX/dt has shape {tuple(dX.shape)}: the vector "
            f"field of a CDE returns a matrix of shape (*state, {channels}), whose leading dimensions match the "
            f"path's batch shape {tuple(dX.shape[:-1])}"
        )
    try:
        torch.broadcast_shapes(matrix.shape[:k], dX.shape[:k])
    except RuntimeError:
        raise ValueError(
            f"{name} has shape {tuple(matrix.shape)}, whose leading dimensions do not match the path's batch shape "
            f"{tuple(dX.shape[:-1])} (the state's batch dimensions come first and must match the data's)"
        ) from None
    if matrix.dtype != dX.dtype:
        if matrix.dtype not in (torch.float16, torch.bfloat16):
            raise TypeError(
                f"{name} returned dtype {matrix.dtype}, but the path is {dX.dtype}; the vector field must return "
                "the state's dtype (half precision under torch.autocast is cast back)"
            )
        dX = dX.to(matrix.dtype)
    if matrix.dim() - 1 == k + 1:  # state (*batch, hidden): a batched matrix–vector product
        return (matrix @ dX.unsqueeze(-1)).squeeze(-1)
    return (matrix * dX.view(*dX.shape[:-1], *[1] * (matrix.dim() - 1 - k), channels)).sum(-1)
