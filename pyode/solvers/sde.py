"""Solvers for stochastic differential equations dy = f(t, y) dt + g(t, y) dW.

Each step reads the drift f like an ODE solver (the loop's k1 = f(t, y) included) and the
diffusion g and the increments of the Brownian motion W through an `AbstractDiffusion`, which the
loop binds to the step from the problem (`configure`). The Brownian motion answers the same
query with the same value, so a rejected step retries on the same sample path and a backward pass
re-reads the path the forward pass took.

Which calculus a method converges to is part of the method: Euler–Maruyama and SRA1 are Itô
methods (SRA1 for additive noise, where both calculi agree), the Heun family and reversible Heun
are Stratonovich methods, and Milstein is either. `solve` refuses a method for the other calculus
by name. Strong orders (on diagonal commutative noise, which every test problem here has):

| method | calculus | noise | strong order | evaluations per step | adaptive |
| --- | --- | --- | --- | --- | --- |
| EulerMaruyama | Itô | any | 0.5 (1.0 additive) | 1 f, 1 g | no |
| EulerHeun | Stratonovich | any | 0.5 (1.0 commutative) | 1 f, 2 g | yes |
| Heun, Midpoint (SDE) | Stratonovich | any | 0.5 (1.0 commutative) | 2 f, 2 g | yes |
| ReversibleHeun | Stratonovich | any | 0.5 (1.0 commutative) | 1 f, 1 g | yes |
| Milstein | both | diagonal, scalar, additive | 1.0 | 1 f, 1 g + one VJP | yes |
| SRA1 | both (additive) | additive | 1.5 | 2 f, 2 g | yes |
| ShARK | both (additive) | additive | 1.5 | 2 f, 2 g | yes |
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

from .base import AbstractSolver, AbstractStepper, StepResult, VectorField


class AbstractDiffusion(abc.ABC):
    """What an SDE step reads besides the drift: the Brownian increments over a step and the
    diffusion's products with them, on the loop's flat states."""

    noise: str  # "diagonal", "scalar", "additive", "general"

    @abc.abstractmethod
    def increment(self, t: float, h: float) -> torch.Tensor:
        """W(t + h) - W(t) (h may be negative)."""

    @abc.abstractmethod
    def prod(self, t: float, y: torch.Tensor, dW: torch.Tensor) -> torch.Tensor:
        """g(t, y) · dW as a flat state."""

    def levy(self, t: float, h: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(W(t + h) - W(t), the space-time Lévy area H over the step)."""
        raise TypeError("this diffusion has no space-time Lévy area")

    def matrix(self, t: float, y: torch.Tensor) -> torch.Tensor:
        """g(t, y) itself, for methods that carry it or differentiate it."""
        raise TypeError("this diffusion gives only products g·dW; use EulerHeun(), Heun() or Midpoint()")

    def times(self, G: torch.Tensor, dW: torch.Tensor) -> torch.Tensor:
        """G · dW as a flat state, for a G from `matrix`."""
        raise TypeError("this diffusion gives only products g·dW; use EulerHeun(), Heun() or Midpoint()")


class Diffusion(AbstractDiffusion):
    """The user's g(t, y) on flat states: counted in `stats.nfe_diffusion`, its output checked
    against the noise type, multiplied with the increments of `bm`."""

    def __init__(self, g: Callable, bm: Any, noise: str, layout: Any, stats: Any):
        self.g, self.bm, self.noise, self.stats = g, bm, noise, stats
        self.shape, self.dtype, self.device = torch.Size(layout.shapes[0]), layout.dtype, layout.device
        self.g_shape: torch.Size | None = None  # g's output shape, checked on every call
        self.dW_checked = False

    def increment(self, t: float, h: float) -> torch.Tensor:
        dW = self.bm(t, t + h)
        if not self.dW_checked:
            self._check_increment(dW)
        return dW

    def _check_increment(self, dW: Any) -> None:
        shape = self.shape
        ok = isinstance(dW, torch.Tensor) and dW.dim() == len(shape) and dW.shape[:-1] == shape[:-1]
        if ok and self.noise in ("diagonal", "scalar"):
            ok = dW.shape[-1] == (shape[-1] if self.noise == "diagonal" else 1)
        if not ok:
            got = tuple(dW.shape) if isinstance(dW, torch.Tensor) else type(dW).__name__
            raise ValueError(
                f"bm(s, t) returned {got}; with noise={self.noise!r} and y of shape {tuple(shape)} the increments "
                "have shape " + (f"{tuple(shape)}" if self.noise == "diagonal" else f"{(*shape[:-1], 'm')}")
            )
        if dW.dtype != self.dtype or dW.device != self.device:
            raise TypeError(f"bm(s, t) returned {dW.dtype} on {dW.device}; the state is {self.dtype} on {self.device}")
        self.dW_checked = True

    def levy(self, t: float, h: float) -> tuple[torch.Tensor, torch.Tensor]:
        inc = self.bm.increment(t, t + h)
        return inc.dW, inc.H

    def matrix(self, t: float | torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.stats.nfe_diffusion += 1
        if not isinstance(t, torch.Tensor):
            t = torch.scalar_tensor(t, dtype=y.dtype, device=y.device)
        G = self.g(t, y.view(self.shape))
        if not (isinstance(G, torch.Tensor) and G.shape == self.g_shape):
            self._check(G)
        if G.dtype != y.dtype:  # half precision under autocast
            G = G.to(y.dtype)
        return G

    def _check(self, G: Any) -> None:
        shape = self.shape
        expected = shape if self.noise == "diagonal" else (*shape, 1) if self.noise == "scalar" else None
        ok = isinstance(G, torch.Tensor) and (
            G.shape == expected if expected is not None else (G.dim() == len(shape) + 1 and G.shape[:-1] == shape)
        )
        if not ok:
            want = tuple(expected) if expected is not None else (*shape, "m")
            got = tuple(G.shape) if isinstance(G, torch.Tensor) else type(G).__name__
            raise ValueError(f"g(t, y) returned {got} for y of shape {tuple(shape)}; noise={self.noise!r} needs {want}")
        if G.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise TypeError(f"g(t, y) returned dtype {G.dtype}; it must return the state's dtype")
        if self.g_shape is not None and G.shape != self.g_shape:
            raise ValueError(f"g(t, y) returned {tuple(G.shape)}, but earlier {tuple(self.g_shape)}: m changed")
        self.g_shape = G.shape

    def times(self, G: torch.Tensor, dW: torch.Tensor) -> torch.Tensor:
        if self.noise == "diagonal":
            return (G * dW).reshape(-1)
        return (G @ dW.unsqueeze(-1)).reshape(-1)

    def prod(self, t: float, y: torch.Tensor, dW: torch.Tensor) -> torch.Tensor:
        return self.times(self.matrix(t, y), dW)

    def milstein(self, t: float, y: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(g(t, y) as a flat vector of y's layout, the Milstein term (∂g/∂y · g) v flat), with v
        shaped like W: diagonal noise, Σ_i v_i g_i ∂g_i/∂y_j (g_i reading y_i only, as
        torchsde's); scalar noise, the Jacobian–vector product (∂g/∂y) g times v; additive
        noise, zero. Differentiable when grad is enabled (`DirectAdjoint` through Milstein)."""
        if torch.is_inference_mode_enabled():
            # Inference tensors cannot enter autograd: take the derivative on ordinary copies.
            with torch.inference_mode(False):
                G, term = self.milstein(t, y.clone(), v.clone())
            return G.detach(), term.detach()
        if self.noise == "additive":
            return self.matrix(t, y), torch.zeros_like(y)
        # torch.func's transforms differentiate g at y alone: autograd.grad with respect to a y
        # that carries the solve's history would walk all of it on every step (quadratic in the
        # steps under DirectAdjoint), while the term stays differentiable by ordinary autograd.
        if self.noise == "diagonal":
            G, pullback = torch.func.vjp(lambda x: self.matrix(t, x), y)
            (term,) = pullback((G * v).reshape(G.shape))
            return G, term
        # scalar: the Jacobian–vector product (∂g/∂y) g in forward mode. (Not torch.autograd's
        # forward AD: inside an autograd.Function's forward, where the adjoints run the forward
        # solve, it records no tangent, and the term would silently vanish.)
        G = self.matrix(t, y)
        direction = G[..., 0].reshape(-1)
        _, jvp = torch.func.jvp(lambda x: self.matrix(t, x)[..., 0].reshape(-1), (y,), (direction,))
        return G, jvp * v.expand(*self.shape[:-1], 1).expand(self.shape).reshape(-1)


class AbstractSDESolver(AbstractSolver):
    """A method for SDEs. `sde_types` are the calculi it converges to, `noise_types` the noise
    it handles, `levy_area` whether it reads the space-time Lévy area of the Brownian motion,
    and `products_only` whether it needs only the products g·dW (then it can step an adjoint's
    backward SDE, whose diffusion is a vector–Jacobian product)."""

    sde_types: ClassVar[tuple[str, ...]] = ("stratonovich",)
    noise_types: ClassVar[tuple[str, ...]] = ("diagonal", "scalar", "additive", "general")
    levy_area: ClassVar[bool] = False
    products_only: ClassVar[bool] = False


class _SDEStepper(AbstractStepper):
    """A step of an SDE method: f comes from the loop, g and W from `configure`."""

    def __init__(self, solver: AbstractSDESolver, f: VectorField):
        self.solver, self.f = solver, f
        self.diffusion: Any = None

    def configure(self, prob, layout, rtol, atol, norm: Callable, stats) -> None:
        self.diffusion = bind_noise(self.solver, prob, layout, stats)

    def error_ratio(self, step: StepResult, rtol: float, atol: float, norm: Callable) -> torch.Tensor:
        y0, y1 = self.output(step.y0), self.output(step.y1)
        scale = torch.maximum(y0.abs(), y1.abs()).mul_(rtol).add_(atol)
        return norm(step.error / scale)


def bind_noise(solver: AbstractSolver, prob: Any, layout: Any, stats: Any) -> AbstractDiffusion:
    """The problem's noise as the steps read it (`prob` is the `NoisyODEProblem` an SDEProblem
    is lowered to, whose noise is an `SDENoise` or, for an adjoint's backward SDE, a diffusion
    already bound)."""
    noise = getattr(prob, "noise", None)
    if noise is None:
        raise TypeError(f"{solver!r} is a method for SDEs: solve a pyode.SDEProblem with it")
    if isinstance(noise, AbstractDiffusion):
        return noise
    return Diffusion(noise.g, noise.bm, noise.noise, layout, stats)


@dataclass(frozen=True)
class EulerMaruyama(AbstractSDESolver):
    """y_{n+1} = y_n + h f(t_n, y_n) + g(t_n, y_n) ΔW: the Itô method. Strong order 0.5 (1.0 for
    additive noise), weak order 1; fixed steps only (it has no error estimate).

    Reference: Kloeden & Platen, "Numerical solution of stochastic differential equations" (1992), §10.2.
    """

    order: ClassVar[float] = 0.5
    sde_types: ClassVar[tuple[str, ...]] = ("ito",)

    def stepper(self, f: VectorField, dtype: torch.dtype, device: torch.device) -> _EulerMaruyamaStepper:
        return _EulerMaruyamaStepper(self, f)


class _EulerMaruyamaStepper(_SDEStepper):
    def step(self, t: float, y: torch.Tensor, h: float, k1: torch.Tensor | None) -> StepResult:
        dW = self.diffusion.increment(t, h)
        y1 = y + k1 * h + self.diffusion.prod(t, y, dW)
        return StepResult(t, h, y, y1)


@dataclass(frozen=True)
class EulerHeun(AbstractSDESolver):
    """Euler in the drift, Heun (the trapezoidal rule) in the diffusion: a Stratonovich method,

        y' = y_n + g(t_n, y_n) ΔW,   y_{n+1} = y_n + h f(t_n, y_n) + ½ (g(t_n, y_n) + g(t_{n+1}, y')) ΔW.

    Strong order 0.5 (1.0 for commutative noise); one drift and two diffusion evaluations per step.
    Adaptive with the embedded estimate ½ (g(t_{n+1}, y') - g(t_n, y_n)) ΔW (the step minus Euler's).

    Reference: the method torchsde calls `euler_heun` (Li, Wong, Chen & Duvenaud 2020).
    """

    order: ClassVar[float] = 0.5
    error_order: ClassVar[float] = 0
    products_only: ClassVar[bool] = True

    def stepper(self, f: VectorField, dtype: torch.dtype, device: torch.device) -> _EulerHeunStepper:
        return _EulerHeunStepper(self, f)


class _EulerHeunStepper(_SDEStepper):
    def step(self, t: float, y: torch.Tensor, h: float, k1: torch.Tensor | None) -> StepResult:
        D = self.diffusion
        dW = D.increment(t, h)
        g_prod = D.prod(t, y, dW)
        g_prod_prime = D.prod(t + h, y + g_prod, dW)
        y1 = y + h * k1 + (g_prod + g_prod_prime) * 0.5
        return StepResult(t, h, y, y1, error=(g_prod_prime - g_prod) * 0.5)


@dataclass(frozen=True)
class SDEHeun(AbstractSDESolver):
    """Heun's method (the trapezoidal rule in both terms) for a Stratonovich SDE: `pyode.Heun()`
    given an `SDEProblem` steps with this.

        y' = y_n + h f_n + g_n ΔW,   y_{n+1} = y_n + ½ h (f_n + f(t_{n+1}, y')) + ½ (g_n + g(t_{n+1}, y')) ΔW.

    Strong order 0.5 (1.0 for commutative noise); adaptive with the estimate y_{n+1} - y'.

    Reference: Rümelin, "Numerical treatment of stochastic differential equations", SIAM J. Numer. Anal. 19 (1982).
    """

    order: ClassVar[float] = 0.5
    error_order: ClassVar[float] = 0
    products_only: ClassVar[bool] = True

    def stepper(self, f: VectorField, dtype: torch.dtype, device: torch.device) -> _HeunStepper:
        return _HeunStepper(self, f)

    def __repr__(self) -> str:
        return "Heun()"


class _HeunStepper(_SDEStepper):
    def step(self, t: float, y: torch.Tensor, h: float, k1: torch.Tensor | None) -> StepResult:
        D = self.diffusion
        dW = D.increment(t, h)
        g_prod = D.prod(t, y, dW)
        y_prime = y + h * k1 + g_prod
        f_prime = self.f(t + h, y_prime)
        g_prod_prime = D.prod(t + h, y_prime, dW)
        y1 = y + (h * (k1 + f_prime) + g_prod + g_prod_prime) * 0.5
        return StepResult(t, h, y, y1, error=y1 - y_prime)


@dataclass(frozen=True)
class SDEMidpoint(AbstractSDESolver):
    """The midpoint method for a Stratonovich SDE: `pyode.Midpoint()` given an `SDEProblem` steps
    with this.

        y' = y_n + ½ h f_n + ½ g_n ΔW,   y_{n+1} = y_n + h f(t_n + h/2, y') + g(t_n + h/2, y') ΔW.

    Strong order 0.5 (1.0 for commutative noise); adaptive with the estimate against Euler's step.
    """

    order: ClassVar[float] = 0.5
    error_order: ClassVar[float] = 0
    products_only: ClassVar[bool] = True

    def stepper(self, f: VectorField, dtype: torch.dtype, device: torch.device) -> _MidpointStepper:
        return _MidpointStepper(self, f)

    def __repr__(self) -> str:
        return "Midpoint()"


class _MidpointStepper(_SDEStepper):
    def step(self, t: float, y: torch.Tensor, h: float, k1: torch.Tensor | None) -> StepResult:
        D = self.diffusion
        dW = D.increment(t, h)
        g_prod = D.prod(t, y, dW)
        y_prime = y + (0.5 * h) * k1 + 0.5 * g_prod
        f_prime = self.f(t + 0.5 * h, y_prime)
        g_prod_prime = D.prod(t + 0.5 * h, y_prime, dW)
        y1 = y + h * f_prime + g_prod_prime
        return StepResult(t, h, y, y1, error=y1 - (y + h * k1 + g_prod))


@dataclass(frozen=True)
class Milstein(AbstractSDESolver):
    """Milstein's method: Euler–Maruyama plus the term that makes it strong order 1,

        y_{n+1} = y_n + h f_n + g_n ΔW + ½ g_n (∂g/∂y)_n (ΔW² - h)     (Itô; ΔW² for Stratonovich),

    for diagonal noise (g_i reading y_i only), scalar noise (the term is the Jacobian–vector
    product (∂g/∂y) g), and additive noise (where the term vanishes). The derivative comes from
    autograd: one extra backward pass per step. Adaptive with the correction term as the error
    estimate. Either calculus: `solve` picks the form the problem's `sde_type` asks for.

    Reference: Milstein, "Approximate integration of stochastic differential equations", Theory
    Probab. Appl. 19 (1975); Kloeden & Platen (1992), §10.3.
    """

    order: ClassVar[float] = 1.0
    error_order: ClassVar[float] = 0
    sde_types: ClassVar[tuple[str, ...]] = ("ito", "stratonovich")
    noise_types: ClassVar[tuple[str, ...]] = ("diagonal", "scalar", "additive")

    def stepper(self, f: VectorField, dtype: torch.dtype, device: torch.device) -> _MilsteinStepper:
        return _MilsteinStepper(self, f)


class _MilsteinStepper(_SDEStepper):
    def configure(self, prob, layout, rtol, atol, norm: Callable, stats) -> None:
        super().configure(prob, layout, rtol, atol, norm, stats)
        self.ito = prob.noise.sde_type == "ito"

    def step(self, t: float, y: torch.Tensor, h: float, k1: torch.Tensor | None) -> StepResult:
        D = self.diffusion
        dW = D.increment(t, h)
        # Itô: E[ΔW²] = |h| in either direction of integration
        v = dW**2 - abs(h) if self.ito else dW**2
        if D.noise == "scalar":
            v = v[..., :1]
        G, term = D.milstein(t, y, 0.5 * v)
        correction = term
        y1 = y + k1 * h + D.times(G, dW) + correction
        return StepResult(t, h, y, y1, error=correction)


@dataclass(frozen=True)
class SRA1(AbstractSDESolver):
    """Rößler's SRA1: a two-stage stochastic Runge–Kutta method of strong order 1.5 for additive
    noise (g independent of y; it may depend on t), where the Itô and Stratonovich solutions
    agree. It reads the space-time Lévy area of the Brownian motion: with ΔW and H over the step,
    I₁₀ = ∫(W_s - W_{t_n}) ds = h (ΔW/2 + H),

        H₂ = y_n + ¾ h f(t_n, y_n) + (3/2) g(t_n + h) I₁₀/h,
        y_{n+1} = y_n + h (⅓ f(t_n, y_n) + ⅔ f(t_n + ¾h, H₂)) + g(t_n + h) ΔW + (g(t_n) - g(t_n + h)) I₁₀/h.

    Adaptive with the difference from Euler–Maruyama as the error estimate. The default
    Brownian motion of an `SDEProblem` solved with it carries the Lévy area; one given as `bm`
    must too (`levy_area=True`).

    Reference: Rößler, "Runge–Kutta methods for the strong approximation of solutions of
    stochastic differential equations", SIAM J. Numer. Anal. 48(3) (2010), Table 6.1 (SRA1).
    """

    order: ClassVar[float] = 1.5
    error_order: ClassVar[float] = 0.5
    sde_types: ClassVar[tuple[str, ...]] = ("ito", "stratonovich")
    noise_types: ClassVar[tuple[str, ...]] = ("additive",)
    levy_area: ClassVar[bool] = True

    def stepper(self, f: VectorField, dtype: torch.dtype, device: torch.device) -> _SRA1Stepper:
        return _SRA1Stepper(self, f)


class _SRA1Stepper(_SDEStepper):
    def step(self, t: float, y: torch.Tensor, h: float, k1: torch.Tensor | None) -> StepResult:
        D = self.diffusion
        dW, H = D.levy(t, h)
        I10_h = dW * 0.5 + H  # I₁₀ / h
        G_end, G_start = D.matrix(t + h, y), D.matrix(t, y)
        H2 = y + (0.75 * h) * k1 + 1.5 * D.times(G_end, I10_h)
        f2 = self.f(t + 0.75 * h, H2)
        noise = D.times(G_end, dW) + D.times(G_start - G_end, I10_h)
        y1 = y + h * (k1 / 3 + f2 * (2 / 3)) + noise
        euler = y + h * k1 + D.times(G_start, dW)
        return StepResult(t, h, y, y1, error=y1 - euler)


@dataclass(frozen=True)
class ShARK(AbstractSDESolver):
    """Foster's shifted additive-noise Runge–Kutta method: strong order 1.5 for additive noise
    with two drift evaluations per step, like `SRA1`, but a smaller error constant. It reads the
    space-time Lévy area H of the Brownian motion; its first stage is shifted by H:

        z₁ = y_n + g H,   z₂ = y_n + (5/6) h f(t_n, z₁) + g ((5/6) ΔW + H),
        y_{n+1} = y_n + h (0.4 f(t_n, z₁) + 0.6 f(t_n + 5h/6, z₂)) + ∫ g dW,

    with g = g(t_n) in the stages and ∫ g dW = g(t_n + h) ΔW + (g(t_n) − g(t_n + h)) (ΔW/2 + H)
    (exact for g linear in t, as in `SRA1`; for constant g it is g ΔW). Adaptive with the
    embedded estimate 0.6 h (f(t_n + 5h/6, z₂) − f(t_n, z₁)). Either calculus (they agree for
    additive noise).

    Reference: Foster, Dos Reis & Strange, "High order splitting methods for SDEs satisfying a
    commutativity condition", SIAM J. Numer. Anal. 62(1) (2024), eq. (6.1) (the ShARK method).
    """

    order: ClassVar[float] = 1.5
    error_order: ClassVar[float] = 0.5
    sde_types: ClassVar[tuple[str, ...]] = ("ito", "stratonovich")
    noise_types: ClassVar[tuple[str, ...]] = ("additive",)
    levy_area: ClassVar[bool] = True

    def stepper(self, f: VectorField, dtype: torch.dtype, device: torch.device) -> _ShARKStepper:
        return _ShARKStepper(self, f)


class _ShARKStepper(_SDEStepper):
    uses_k1 = False  # its first stage reads f at the shifted point z₁, not at y_n

    def step(self, t: float, y: torch.Tensor, h: float, k1: torch.Tensor | None) -> StepResult:
        D = self.diffusion
        dW, H = D.levy(t, h)
        G_start, G_end = D.matrix(t, y), D.matrix(t + h, y)
        f1 = self.f(t, y + D.times(G_start, H))
        z2 = y + (5 / 6 * h) * f1 + D.times(G_start, dW * (5 / 6) + H)
        f2 = self.f(t + 5 / 6 * h, z2)
        noise = D.times(G_end, dW) + D.times(G_start - G_end, dW * 0.5 + H)
        y1 = y + h * (0.4 * f1 + 0.6 * f2) + noise
        return StepResult(t, h, y, y1, error=(0.6 * h) * (f2 - f1))


# The ODE solvers whose names step SDEs too, as in diffrax: Euler is then Euler–Maruyama, Heun and
# Midpoint their Stratonovich forms.
def sde_form(solver: AbstractSolver) -> AbstractSolver:
    """The SDE method an ODE solver's name stands for (itself if it is an SDE method)."""
    from .explicit import Euler, Heun, Midpoint

    forms = {Euler: EulerMaruyama, Heun: SDEHeun, Midpoint: SDEMidpoint}
    form = forms.get(type(solver))
    return form() if form is not None else solver
