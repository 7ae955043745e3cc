"""Algebraically reversible solvers: each step can be undone exactly from its output, so the
backward pass reconstructs the trajectory instead of storing it (`ReversibleAdjoint`).

Every solver here steps a state larger than the user's (it carries what the inverse needs)
and reports the user's state from it. None has a dense interpolant: save points are landed on.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Callable

import torch

from .base import AbstractSolver, AbstractStepper, StepResult, VectorField
from .runge_kutta import AbstractExplicitRK
from .sde import AbstractSDESolver, bind_noise


class AbstractReversibleStepper(AbstractStepper):
    uses_k1 = False

    @abc.abstractmethod
    def inverse(self, t: float, h: float, state: torch.Tensor) -> torch.Tensor:
        """The state at t from the state at t + h: the exact algebraic inverse of `step`."""


class AbstractReversibleSolver(AbstractSolver):
    """A solver whose steps `ReversibleAdjoint` can invert. Subclass it to qualify."""

    @abc.abstractmethod
    def stepper(self, f: VectorField, dtype: torch.dtype, device: torch.device) -> AbstractReversibleStepper: ...


def _error_ratio(
    error: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor, rtol: float, atol: float, norm: Callable
) -> torch.Tensor:
    scale = torch.maximum(y0.abs(), y1.abs()).mul_(rtol).add_(atol)
    return norm(error / scale)


@dataclass(frozen=True)
class Reversible(AbstractReversibleSolver):
    """Any solver made algebraically reversible (McCallum & Foster, "Efficient, accurate and
    stable gradients for neural ODEs", 2024). With Ψ_h(x) = Φ_h(x) - x the base method's
    increment and λ the coupling,

        Y_{n+1} = λ Y_n + (1 - λ) Z_n + Ψ_h(Z_n),     Z_{n+1} = Z_n - Ψ_{-h}(Y_{n+1}),

    from Y_0 = Z_0 = y0, reporting Y. The inverse is
        Z_n = Z_{n+1} + Ψ_{-h}(Y_{n+1}),     Y_n = (Y_{n+1} - (1 - λ) Z_n - Ψ_h(Z_n)) / λ.

    Each step (and each inverse) costs two steps of the base method. The order is the base's
    (measured: 4 for RK4, 5 for DP5 and Tsit5), but with λ near 1 the parasitic mode is damped
    by only λ per step, so the error of a high-order base oscillates with h before it settles
    (at λ = 0.999 the local slopes of Reversible(DP5()) range from 3.5 to 10 above round-off).
    Adaptive when the base is, with the base's error estimate on the Ψ_h(Z_n) step.

    Args:
        base: any pyode solver with a Runge–Kutta tableau (RK4(), Tsit5(), DP5(), ...).
        coupling: λ in (0, 1]. The inverse divides by λ, so errors made while reconstructing
            grow like λ^-N over N steps backward; λ < 1 damps the forward recursion's parasitic
            mode (λ = 1 is only neutrally stable). The paper's 0.999 balances the two.
    """

    base: AbstractExplicitRK
    coupling: float = 0.999

    def __post_init__(self) -> None:
        if isinstance(self.base, AbstractReversibleSolver) or not isinstance(self.base, AbstractExplicitRK):
            raise TypeError(f"Reversible: base must be a Runge–Kutta solver such as Tsit5(); got {self.base!r}")
        if not 0 < self.coupling <= 1:
            raise ValueError(f"Reversible: coupling must be in (0, 1]; got {self.coupling}")

    @property
    def order(self) -> int:  # type: ignore[override]
        return self.base.order

    @property
    def error_order(self) -> int | None:  # type: ignore[override]
        return self.base.error_order

    def stepper(self, f: VectorField, dtype: torch.dtype, device: torch.device) -> _ReversibleStepper:
        return _ReversibleStepper(self, f, dtype, device)

    def __repr__(self) -> str:
        coupling = "" if self.coupling == 0.999 else f", coupling={self.coupling}"
        return f"Reversible({self.base!r}{coupling})"


class _ReversibleStepper(AbstractReversibleStepper):
    def __init__(self, solver: Reversible, f: VectorField, dtype: torch.dtype, device: torch.device):
        self.base = solver.base.stepper(f, dtype, device)
        self.lam = solver.coupling
        self.f = f

    def init(self, t0: float, y0: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
        return torch.cat((y0, y0))

    def output(self, state: torch.Tensor) -> torch.Tensor:
        return state[: state.shape[0] // 2]

    def _increment(self, t: float, x: torch.Tensor, h: float) -> tuple[torch.Tensor, StepResult]:
        step = self.base.step(t, x, h, self.f(t, x))
        return step.y1 - x, step

    def step(self, t: float, state: torch.Tensor, h: float, k1: torch.Tensor | None = None) -> StepResult:
        Y, Z = state.chunk(2)
        psi_z, forward = self._increment(t, Z, h)
        Y1 = torch.add(psi_z, Y, alpha=self.lam).add_(Z, alpha=1 - self.lam) if self.lam != 1 else Y + psi_z
        psi_back, _ = self._increment(t + h, Y1, -h)
        Z1 = Z - psi_back
        return StepResult(t, h, state, torch.cat((Y1, Z1)), inner=forward)

    def inverse(self, t: float, h: float, state: torch.Tensor) -> torch.Tensor:
        Y1, Z1 = state.chunk(2)
        psi_back, _ = self._increment(t + h, Y1, -h)
        Z = Z1 + psi_back
        psi_z, _ = self._increment(t, Z, h)
        Y = (Y1 - (1 - self.lam) * Z - psi_z) / self.lam
        return torch.cat((Y, Z))

    def error_ratio(self, step: StepResult, rtol: float, atol: float, norm: Callable) -> torch.Tensor:
        return self.base.error_ratio(step.inner, rtol, atol, norm)


@dataclass(frozen=True)
class ReversibleHeun(AbstractReversibleSolver, AbstractSDESolver):
    """The reversible Heun method (Kidger, Foster, Li & Lyons, "Efficient and accurate
    gradients for neural SDEs", NeurIPS 2021), for ODEs and Stratonovich SDEs: with an
    auxiliary state z and the carried f_n = f(t_n, z_n), g_n = g(t_n, z_n),

        z_{n+1} = 2 y_n - z_n + h f_n + g_n ΔW,
        y_{n+1} = y_n + h/2 (f_n + f_{n+1}) + ½ (g_n + g_{n+1}) ΔW,

    one evaluation of f (and of g) per step, second order for ODEs (strong order 0.5 for SDEs,
    1.0 for commutative noise, measured), and inverted exactly by
        z_n = 2 y_{n+1} - z_{n+1} - h f_{n+1} - g_{n+1} ΔW,  y_n = y_{n+1} - h/2 (f_n + f_{n+1}) - ½ (g_n + g_{n+1}) ΔW.
    Adaptive with the embedded estimate h/2 (f_{n+1} - f_n) + ½ (g_{n+1} - g_n) ΔW (Heun minus Euler).
    With `ReversibleAdjoint` (its default) the gradient is the exact gradient of the discrete
    solve, at memory independent of the number of steps, for SDEs too (the backward pass
    re-reads the same Brownian increments).

    Stability: its region of absolute stability is a segment of the imaginary axis, so on
    strongly dissipative dynamics (a drift that pulls hard toward an attractor, such as the
    double well x - x³ away from its wells) its parasitic mode grows and the solve ends
    `Unstable` after a few time units; torchsde's reversible Heun does the same. Use `Heun()`
    or `EulerHeun()` there, with `BacksolveAdjoint` for constant memory.
    """

    order = 2
    error_order = 1

    def stepper(self, f: VectorField, dtype: torch.dtype, device: torch.device) -> _ReversibleHeunStepper:
        return _ReversibleHeunStepper(f)


class _ReversibleHeunStepper(AbstractReversibleStepper):
    def __init__(self, f: VectorField):
        self.f = f
        self.diffusion = None  # an SDE's, bound by `configure`
        self.n = 0

    def configure(self, prob, layout, rtol, atol, norm: Callable, stats) -> None:
        if getattr(prob, "noise", None) is not None:
            self.diffusion = bind_noise(ReversibleHeun(), prob, layout, stats)
            self.n = layout.numel

    def init(self, t0: float, y0: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
        if self.diffusion is not None:  # (y, z, f(t, z), g(t, z))
            return torch.cat((y0, y0, f0, self.diffusion.matrix(t0, y0).reshape(-1)))
        return torch.cat((y0, y0, f0))  # (y, z, f(t, z))

    def output(self, state: torch.Tensor) -> torch.Tensor:
        if self.diffusion is not None:
            return state[: self.n]
        return state[: state.shape[0] // 3]

    def _split(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        n = self.n
        y, z, fz, gz = state[:n], state[n : 2 * n], state[2 * n : 3 * n], state[3 * n :]
        return y, z, fz, gz.view(self._g_shape(gz))

    def _g_shape(self, flat: torch.Tensor) -> tuple[int, ...]:
        shape = self.diffusion.shape
        return tuple(shape) if self.diffusion.noise == "diagonal" else (*shape, flat.numel() // self.n)

    def step(self, t: float, state: torch.Tensor, h: float, k1: torch.Tensor | None = None) -> StepResult:
        if self.diffusion is not None:
            return self._sde_step(t, state, h)
        y, z, fz = state.chunk(3)
        z1 = torch.add(2 * y - z, fz, alpha=h)
        fz1 = self.f(t + h, z1)
        y1 = torch.add(y, fz + fz1, alpha=h / 2)
        return StepResult(t, h, state, torch.cat((y1, z1, fz1)), error=(fz1 - fz) * (h / 2))

    def _sde_step(self, t: float, state: torch.Tensor, h: float) -> StepResult:
        D = self.diffusion
        y, z, f0, g0 = self._split(state)
        dW = D.increment(t, h)
        z1 = 2 * y - z + f0 * h + D.times(g0, dW)
        f1, g1 = self.f(t + h, z1), D.matrix(t + h, z1)
        y1 = y + (f0 + f1) * (0.5 * h) + D.times(g0 + g1, dW) * 0.5
        error = (f1 - f0) * (0.5 * h) + D.times(g1 - g0, dW) * 0.5
        return StepResult(t, h, state, torch.cat((y1, z1, f1, g1.reshape(-1))), error=error)

    def inverse(self, t: float, h: float, state: torch.Tensor) -> torch.Tensor:
        if self.diffusion is not None:
            D = self.diffusion
            y1, z1, f1, g1 = self._split(state)
            dW = D.increment(t, h)
            z = 2 * y1 - z1 - f1 * h - D.times(g1, dW)
            f0, g0 = self.f(t, z), D.matrix(t, z)
            y = y1 - (f0 + f1) * (0.5 * h) - D.times(g0 + g1, dW) * 0.5
            return torch.cat((y, z, f0, g0.reshape(-1)))
        y1, z1, fz1 = state.chunk(3)
        z = torch.add(2 * y1 - z1, fz1, alpha=-h)
        fz = self.f(t, z)
        y = torch.add(y1, fz + fz1, alpha=-h / 2)
        return torch.cat((y, z, fz))

    def error_ratio(self, step: StepResult, rtol: float, atol: float, norm: Callable) -> torch.Tensor:
        return _error_ratio(step.error, self.output(step.y0), self.output(step.y1), rtol, atol, norm)


@dataclass(frozen=True)
class AsyncLeapfrog(AbstractReversibleSolver):
    """The asynchronous leapfrog integrator of MALI (Zhuang, Dvornek, Tatikonda & Duncan, "MALI:
    a memory efficient and reverse accurate integrator for neural ODEs", ICLR 2021). It carries
    v ≈ f alongside z:

        ẑ = z_n + h/2 v_n,  v̂ = f(t_n + h/2, ẑ),  v_{n+1} = 2 v̂ - v_n,  z_{n+1} = ẑ + h/2 v_{n+1},

    one evaluation of f per step, second order, inverted by running the same half steps backward.
    Adaptive with the embedded estimate h (v̂ - v_n) (the step minus an Euler step with v_n).
    """

    order = 2
    error_order = 1

    def stepper(self, f: VectorField, dtype: torch.dtype, device: torch.device) -> _AsyncLeapfrogStepper:
        return _AsyncLeapfrogStepper(f)


class _AsyncLeapfrogStepper(AbstractReversibleStepper):
    def __init__(self, f: VectorField):
        self.f = f

    def init(self, t0: float, y0: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
        return torch.cat((y0, f0))  # (z, v)

    def output(self, state: torch.Tensor) -> torch.Tensor:
        return state[: state.shape[0] // 2]

    def step(self, t: float, state: torch.Tensor, h: float, k1: torch.Tensor | None = None) -> StepResult:
        z, v = state.chunk(2)
        z_half = torch.add(z, v, alpha=h / 2)
        v_half = self.f(t + h / 2, z_half)
        v1 = 2 * v_half - v
        z1 = torch.add(z_half, v1, alpha=h / 2)
        return StepResult(t, h, state, torch.cat((z1, v1)), error=(v_half - v) * h)

    def inverse(self, t: float, h: float, state: torch.Tensor) -> torch.Tensor:
        z1, v1 = state.chunk(2)
        z_half = torch.add(z1, v1, alpha=-h / 2)
        v_half = self.f(t + h / 2, z_half)
        v = 2 * v_half - v1
        z = torch.add(z_half, v, alpha=-h / 2)
        return torch.cat((z, v))

    def error_ratio(self, step: StepResult, rtol: float, atol: float, norm: Callable) -> torch.Tensor:
        return _error_ratio(step.error, self.output(step.y0), self.output(step.y1), rtol, atol, norm)
