"""Implicit methods for stiff equations: Rosenbrock (linearly implicit) and ESDIRK (Newton).

Both factor M = I - hγ·J of f's Jacobian J (`linalg.py`) with one Jacobian per step (a rejected
step's retries reuse it): Rosenbrock methods need the exact one for their order, and the ESDIRK
methods' error filter needs the current one. Each attempted step factors M once for all its
stages. A Newton iteration that diverges or converges too slowly fails the step through
its status (`StepStatus.FAILED`), and the loop retries with a smaller step.

Gradients: a Rosenbrock step is a fixed sequence of differentiable operations (J itself is
computed on the graph), so autograd through it is exact. An ESDIRK stage is the solution of a
nonlinear system: its Newton iterates run without the graph, and the converged stage is
attached to the graph by the implicit function theorem (`_attach`), so memory per step does not
grow with the iterations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch

from .base import AbstractSolver, DenseStepper, StepResult, StepStatus, VectorField
from .implicit_tableaus import KENCARP4, KVAERNO3, KVAERNO5, RODAS5P, ESDIRKTableau, RosenbrockTableau
from .linalg import Factored, Jacobian, JacobianBuilder, Structure

# Newton: iterations per stage, and the tolerance κ on the estimated error of the iterate in
# the step's own scaled norm (Hairer & Wanner, Solving ODEs II, §IV.8, eq. (8.10)-(8.11)).
# Hairer's κ = 0.01-0.1 left Kvaerno5's global error at 100x rtol on Van der Pol (mu = 1e6,
# rtol 1e-7: 6.5e-5); κ = 1e-3 gives 6.4e-7 for 20% more iterations.
_NEWTON_MAX_ITERS = 10
_NEWTON_KAPPA = 1e-3
_NEWTON_MAX_RATE = 0.9  # a contraction rate above this fails the step


def structure_of(prob, layout) -> Structure:
    """The Jacobian structure a problem declares, on its flat state."""
    numel = layout.numel
    dynamic = numel - sum(layout.sizes[len(layout.sizes) - prob.integral_parts :]) if prob.integral_parts else numel
    blocks = int(layout.shapes[0][0]) if prob.independent_batch else None
    return Structure(numel, dynamic, blocks, prob.jac)


class AbstractImplicitSolver(AbstractSolver):
    """An implicit method: `autodiff=True` computes f's Jacobian by autodiff
    (`torch.func`), `autodiff=False` by finite differences; a problem's `jac` overrides both."""

    autodiff: bool = True
    stability: ClassVar[str] = ""
    dense_order: ClassVar[int] = 3

    def __post_init__(self) -> None:
        if not isinstance(self.autodiff, bool):
            raise TypeError(f"{type(self).__name__}: autodiff must be True or False; got {self.autodiff!r}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()" if self.autodiff else f"{type(self).__name__}(autodiff=False)"


class ImplicitStepper(DenseStepper):
    """What Rosenbrock and ESDIRK steppers share: the Jacobian, the factored matrix, the
    tolerances (bound by the loop through `configure`)."""

    def __init__(self, solver: AbstractImplicitSolver, f: VectorField, dtype: torch.dtype, device: torch.device):
        self.solver, self.f, self.dtype, self.device = solver, f, dtype, device
        self.structure: Structure | None = None
        self.builder: JacobianBuilder | None = None
        self.jac: Jacobian | None = None
        self.factored: Factored | None = None
        self._T: torch.Tensor | None = None
        self._T_for: Jacobian | None = None  # the Jacobian _T was computed beside
        self.rtol, self.atol, self.norm = 1e-3, 1e-6, None
        self.stats = None

    def configure(self, prob, layout, rtol, atol, norm: Callable, stats) -> None:
        """Bind what the step needs beyond f: the problem's Jacobian structure (its `jac`,
        `independent_batch`, `integral_parts`), the tolerances Newton's test uses, the counters."""
        self.structure = structure_of(prob, layout)
        self.rtol, self.atol, self.norm, self.stats = rtol, atol, norm, stats
        autodiff = self.solver.autodiff and not getattr(prob.f, "jacobian_by_differences", False)
        self.builder = JacobianBuilder(self.f, self.structure, autodiff, stats, layout)

    def _require(self) -> None:
        if self.structure is None:
            raise RuntimeError(f"{self.solver!r} was stepped without `configure`: step it through pyode.solve")

    def jacobian_at(self, t: float, y: torch.Tensor, f0: torch.Tensor) -> Jacobian:
        jac = self.jac
        if jac is None or jac.t != t or jac.y is not y:
            jac = self.jac = self.builder.jacobian(t, y, f0)
            self.factored = None
        return jac

    def time_derivative_at(self, t: float, y: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
        """∂f/∂t at the step's start, kept with the Jacobian for a rejected step's retries."""
        jac = self.jac
        if self._T_for is not jac:
            self._T, self._T_for = self.builder.time_derivative(t, y, f0), jac
        return self._T

    def factor(self, hgamma: float) -> Factored:
        fac = self.factored
        if fac is None or fac.jac is not self.jac or fac.hgamma != hgamma:
            fac = self.factored = Factored(self.jac, hgamma, self.structure, self.stats)
        return fac

    def error_ratio(self, step: StepResult, rtol: float, atol: float, norm: Callable) -> torch.Tensor:
        scale = torch.maximum(step.y0.abs(), step.y1.abs()) * rtol + atol
        return norm(step.error / scale)

    def failed(self, t: float, y: torch.Tensor, h: float) -> StepResult:
        nan = torch.full_like(y, math.nan)
        return StepResult(t, h, y, nan, error=nan, status=StepStatus.FAILED)

    def stiffness(self) -> float:
        """h-free estimate of the spectral radius of J at the last step (for `AutoSwitch`)."""
        return self.jac.spectral_radius() if self.jac is not None else 0.0


# ---------------------------------------------------------------------------------------------
# Rosenbrock methods


@dataclass(frozen=True, repr=False)
class Rosenbrock23(AbstractImplicitSolver):
    """Shampine & Reichelt's ode23s: a Rosenbrock–W method of order 2 with a 3rd-order error
    estimate, L-stable, FSAL, with a 2nd-order stiff-aware dense output. Robust at loose
    tolerances and with inexact Jacobians (MATLAB's ode23s, SciML's Rosenbrock23).

    Reference: Shampine & Reichelt (1997), "The MATLAB ODE suite", SIAM J. Sci. Comput. 18(1), 1–22.
    """

    autodiff: bool = True
    order: ClassVar[int] = 2
    error_order: ClassVar[int] = 2
    stability: ClassVar[str] = "L-stable"
    dense_order: ClassVar[int] = 2

    def stepper(self, f: VectorField, dtype: torch.dtype, device: torch.device) -> ImplicitStepper:
        return _Rosenbrock23Stepper(self, f, dtype, device)


_D23 = 1 / (2 + math.sqrt(2))
_E32 = 6 + math.sqrt(2)


class _Rosenbrock23Stepper(ImplicitStepper):
    def step(self, t: float, y: torch.Tensor, h: float, k1: torch.Tensor | None) -> StepResult:
        self._require()
        f, d = self.f, _D23
        f0 = k1
        self.jacobian_at(t, y, f0)
        T = self.time_derivative_at(t, y, f0)
        M = self.factor(h * d)
        if M.singular:
            return self.failed(t, y, h)
        k_1 = M.solve(f0 + (h * d) * T)
        f1 = f(t + h / 2, y + (h / 2) * k_1)
        k_2 = M.solve(f1 - k_1) + k_1
        y1 = y + h * k_2
        f2 = f(t + h, y1)
        k_3 = M.solve(f2 - _E32 * (k_2 - f1) - 2 * (k_1 - f0) + (h * d) * T)
        error = (h / 6) * (k_1 - 2 * k_2 + k_3)
        return StepResult(t, h, y, y1, stages=torch.stack((k_1, k_2)), next_k1=f2, error=error)

    @property
    def dense_needs_f1(self) -> bool:
        return False

    def dense(self, step: StepResult, f1: torch.Tensor | None) -> torch.Tensor:
        # y(t + θh) = y0 + h[θ(1-θ) k1 + θ(θ-2d) k2] / (1 - 2d)  (Shampine & Reichelt, eq. 4.1)
        k_1, k_2 = step.stages
        w = step.h / (1 - 2 * _D23)
        return torch.stack(((k_1 - 2 * _D23 * k_2) * w, (k_2 - k_1) * w))


class AbstractRosenbrock(AbstractImplicitSolver):
    """A Rosenbrock method given by its transformed `tableau` (`implicit_tableaus.py`)."""

    tableau: ClassVar[RosenbrockTableau]

    def stepper(self, f: VectorField, dtype: torch.dtype, device: torch.device) -> ImplicitStepper:
        return RosenbrockStepper(self, f, dtype, device)


class RosenbrockStepper(ImplicitStepper):
    def __init__(self, solver: AbstractRosenbrock, f: VectorField, dtype: torch.dtype, device: torch.device):
        super().__init__(solver, f, dtype, device)
        tab = solver.tableau
        self.gamma = float(tab.gamma)
        self.a = [[float(x) for x in row] for row in tab.a]
        self.C = [[float(x) for x in row] for row in tab.C]
        self.c = [float(x) for x in tab.c]
        self.d = [float(x) for x in tab.d]
        self.m = [float(x) for x in tab.m]
        self.e = [float(x) for x in tab.e]
        self.H = torch.tensor([[float(x) for x in row] for row in tab.H], dtype=dtype).to(device)
        self.uses_time = any(self.d)

    def step(self, t: float, y: torch.Tensor, h: float, k1: torch.Tensor | None) -> StepResult:
        self._require()
        f, hg = self.f, h * self.gamma
        f0 = k1
        self.jacobian_at(t, y, f0)
        T = self.time_derivative_at(t, y, f0) if self.uses_time else None
        M = self.factor(hg)
        if M.singular:
            return self.failed(t, y, h)
        u: list[torch.Tensor] = []
        for i in range(len(self.c)):
            a_row, C_row = self.a[i], self.C[i]
            Yi = y
            for a_ij, u_j in zip(a_row, u):
                if a_ij:
                    Yi = Yi + a_ij * u_j
            Fi = f0 if i == 0 else f(t + self.c[i] * h, Yi)
            rhs = Fi
            for C_ij, u_j in zip(C_row, u):
                if C_ij:
                    rhs = rhs + (C_ij / h) * u_j
            if self.d[i]:
                rhs = rhs + (self.d[i] * h) * T
            u.append(hg * M.solve(rhs))
        y1 = y
        error = None
        for m_i, e_i, u_i in zip(self.m, self.e, u):
            if m_i:
                y1 = y1 + m_i * u_i
            if e_i:
                error = e_i * u_i if error is None else error + e_i * u_i
        return StepResult(t, h, y, y1, stages=torch.stack(u), error=error)

    @property
    def dense_needs_f1(self) -> bool:
        return False

    def dense(self, step: StepResult, f1: torch.Tensor | None) -> torch.Tensor:
        # y(θ) = (1-θ)y0 + θ(y1 + (1-θ)(K0 + θK1 + θ²K2)) = y0 + Σ_p θ^p r_p with
        # r1 = y1 - y0 + K0, r_p = K_{p-1} - K_{p-2}, r_{R+1} = -K_{R-1}.
        K = torch.mm(self.H, step.stages)
        R = K.shape[0]
        rows = [step.y1 - step.y0 + K[0]]
        rows += [K[p] - K[p - 1] for p in range(1, R)]
        rows.append(-K[R - 1])
        return torch.stack(rows)


@dataclass(frozen=True, repr=False)
class Rodas5P(AbstractRosenbrock):
    """Steinebach's Rodas5P: an 8-stage Rosenbrock method of order 5(4), stiffly accurate and
    L-stable, with a 4th-order dense output; SciML's recommendation for stiff problems at
    moderate and tight tolerances.

    Reference: Steinebach (2023), BIT Numer. Math. 63, 27.
    """

    autodiff: bool = True
    tableau: ClassVar[RosenbrockTableau] = RODAS5P
    order: ClassVar[int] = 5
    error_order: ClassVar[int] = 4
    stability: ClassVar[str] = "L-stable, stiffly accurate"
    dense_order: ClassVar[int] = 4


# ---------------------------------------------------------------------------------------------
# ESDIRK methods


class AbstractESDIRK(AbstractImplicitSolver):
    """An ESDIRK method given by its `tableau`; with an explicit tableau it is an IMEX pair
    for a `SplitODEProblem` (the explicit tableau steps the non-stiff part)."""

    tableau: ClassVar[ESDIRKTableau]

    def stepper(self, f: VectorField, dtype: torch.dtype, device: torch.device) -> ImplicitStepper:
        return ESDIRKStepper(self, f, dtype, device)


class ESDIRKStepper(ImplicitStepper):
    def __init__(self, solver: AbstractESDIRK, f: VectorField, dtype: torch.dtype, device: torch.device):
        super().__init__(solver, f, dtype, device)
        tab = solver.tableau
        self.gamma = float(tab.gamma)
        self.c = [float(x) for x in tab.c]
        self.a = [[float(x) for x in row] for row in tab.a]
        self.b = [float(x) for x in tab.b]
        self.b_error = [float(x) for x in tab.b_error]
        self.ex: list[list[float]] | None = None  # the explicit tableau, when stepping a split problem
        self.stiffly_accurate = tab.stiffly_accurate
        self.split: tuple[Callable, Callable] | None = None  # (stiff, non-stiff) parts of f, for IMEX
        self.rate = None  # the last contraction rate, carried to the next step's first iteration
        self._differentiable: bool | None = None

    def configure(self, prob, layout, rtol, atol, norm: Callable, stats) -> None:
        super().configure(prob, layout, rtol, atol, norm, stats)
        tab = self.solver.tableau
        if getattr(prob, "f_stiff", None) is None or tab.explicit_a is None:
            return
        # An IMEX pair on a SplitODEProblem: the explicit tableau steps f_nonstiff. Each part's
        # evaluation counts as one in nfe.

        def flat(part: Callable) -> Callable:
            def call(t, y):
                stats.nfe += 1
                return layout.call(part, t, y)

            return call

        self.split = (flat(prob.f_stiff), flat(prob.f_nonstiff))
        self.ex = [[float(x) for x in row] for row in tab.explicit_a]
        self.builder.f = self.split[0]
        self.uses_k1 = False  # both parts are evaluated at the step's start instead

    def step(self, t: float, y: torch.Tensor, h: float, k1: torch.Tensor | None) -> StepResult:
        self._require()
        return self._attempt(t, y, h, k1)

    def _attempt(self, t: float, y: torch.Tensor, h: float, k1: torch.Tensor) -> StepResult:
        if self.split is None:
            f_im, f_ex = self.f, None
            k_im0, k_ex0 = k1, None
        else:
            f_im, f_ex = self.split
            k_im0, k_ex0 = f_im(t, y), f_ex(t, y)
        # One Jacobian per step, at its start: every stage's Newton iteration and a rejected
        # step's retries reuse it. A Jacobian kept across steps converges Newton just as well,
        # but the error filter M⁻¹·est needs the current one: with Robertson's from t = 0, the
        # filter let Newton's residue through and Kvaerno5 took 2015 steps instead of 77.
        self.jacobian_at(t, y, k_im0)
        hg = h * self.gamma
        fac = self.factor(hg)
        if fac.singular:
            return self.failed(t, y, h)
        scale = y.detach().abs() * self.rtol + self.atol
        k_im, k_ex = [k_im0], [k_ex0]
        z = y
        for i in range(1, len(self.c)):
            ti = t + self.c[i] * h
            rhs = y
            for j in range(i):
                a_ij = self.a[i][j]
                if a_ij:
                    rhs = rhs + (h * a_ij) * k_im[j]
                if self.ex is not None and self.ex[i][j]:
                    rhs = rhs + (h * self.ex[i][j]) * k_ex[j]
            # The previous stage (y for the first): an explicit predictor y + c·h·f(y) is
            # unstable in the stiff components, and started Newton 1e5 tolerances away on HIRES.
            guess = z
            z_star = self._newton(f_im, ti, rhs, guess, hg, fac, scale)
            if z_star is None:
                return self.failed(t, y, h)
            z = self._attach(f_im, ti, rhs, z_star, hg, fac)
            k_im.append((z - rhs) / hg)
            if f_ex is not None:
                k_ex.append(f_ex(ti, z))
        if self.stiffly_accurate and self.ex is None:
            y1 = z
        else:
            y1 = y
            for j, b_j in enumerate(self.b):
                if b_j:
                    y1 = y1 + (h * b_j) * (k_im[j] if f_ex is None else k_im[j] + k_ex[j])
        est = None
        for j, e_j in enumerate(self.b_error):
            if e_j:
                term = (h * e_j) * (k_im[j] if f_ex is None else k_im[j] + k_ex[j])
                est = term if est is None else est + term
        # Hairer's error filter: M⁻¹·est damps the stiff components of the raw estimate, which
        # would otherwise reject every step that is accurate (Solving ODEs II, §IV.8, eq. (8.20)).
        with torch.no_grad():
            error = fac.solve(est.detach())
        stages = torch.stack(k_im)
        return StepResult(t, h, y, y1, stages=stages, error=error)

    def _newton(self, f, ti, rhs, z, hg, fac, scale):
        """The stage equation z = rhs + hγ f(ti, z) by simplified Newton (no graph); None when it
        diverges or would not converge within the iterations."""
        norm = self.norm
        stats = self.stats
        rate = self.rate if self.rate is not None else 1.0
        previous = None
        with torch.no_grad():
            rhs_, z = rhs.detach(), z.detach()
            # Below a few ulps of z the iteration only stirs rounding (float32 at tight
            # tolerances): that is converged.
            floor = 4 * float(norm(z.abs() * torch.finfo(z.dtype).eps / scale))
            for it in range(_NEWTON_MAX_ITERS):
                stats.nnewton += 1
                residual = z - rhs_ - hg * f(ti, z)
                dz = fac.solve(-residual)
                z = z + dz
                size = float(norm(dz / scale))
                if not math.isfinite(size):
                    return None
                if size <= floor:
                    self.rate = min(self.rate or 0.0, 0.5)
                    return z
                if previous is not None:
                    rate = size / previous if previous > 0 else 0.0
                    if rate >= _NEWTON_MAX_RATE:
                        return None
                    remaining = _NEWTON_MAX_ITERS - it - 1
                    # A rate that cannot reach the tolerance within the iterations left fails now.
                    # (against the tolerance itself, not κ: a stage that reaches κ in more
                    # iterations than predicted is still worth finishing)
                    if rate ** max(remaining, 1) / (1 - rate) * size > 1.0:
                        return None
                eta = rate / (1 - rate) if rate < 1 else 1.0
                if previous is None:  # no rate yet: the correction itself must be below κ
                    eta = 1.0
                if size == 0 or eta * size <= _NEWTON_KAPPA:
                    self.rate = rate
                    return z
                previous = size
        return None

    def _attach(self, f, ti, rhs, z_star, hg, fac):
        """z* on the graph by the implicit function theorem. Φ = rhs + hγ f(ti, z*) (z* held
        constant) has the right dependence on rhs and on f's parameters; z = z* + (Φ - Φ̄), with
        Φ̄ Φ's value, keeps z*'s value exactly (Φ itself, a fixed-point iterate, would multiply
        Newton's error by hγ·|J|), and Φ's hook replaces the cotangent v by (I - hγ J(z*))⁻ᵀ v,
        which accounts for z* inside f. Without anything to differentiate it is z*."""
        if not torch.is_grad_enabled() or (not rhs.requires_grad and not self._has_parameters(f, ti, z_star)):
            return z_star
        phi = rhs + hg * f(ti, z_star)
        if not phi.requires_grad:
            return z_star
        # The hook evaluates f after the step, when the loop no longer holds a stage at a
        # discontinuity before it (Kvaerno5's stage at c = 1.23 on a step that lands on one):
        # it takes the time the forward stage was evaluated at.
        resolve = getattr(f, "resolve_time", None)
        t_hook = resolve(ti) if resolve is not None else ti
        phi.register_hook(_TransposeSolve(f, t_hook, z_star, hg, fac, self.stats))
        return z_star + (phi - phi.detach())

    def _has_parameters(self, f, ti, z_star) -> bool:
        """Whether f's output depends on tensors that require grad (its parameters), checked
        once per solve."""
        if self._differentiable is None:
            self._differentiable = bool(f(ti, z_star).requires_grad)
        return self._differentiable

    @property
    def dense_needs_f1(self) -> bool:
        return True

    def dense(self, step: StepResult, f1: torch.Tensor | None) -> torch.Tensor:
        from .. import interpolation

        k0 = step.stages[0] if self.split is None else None
        if k0 is None:  # IMEX: f(t, y0) is the sum of both parts
            k0 = self.split[0](step.t, step.y0) + self.split[1](step.t, step.y0)
        return interpolation.hermite_coefficients(step.y0, step.y1, k0, f1, step.h)


class _TransposeSolve:
    """u = (I - hγ J(z*))⁻ᵀ v, by iterative refinement: the factored M (possibly from an earlier
    Jacobian) preconditions, vector–Jacobian products of f at z* give the exact operator."""

    def __init__(self, f, ti, z_star, hg, fac: Factored, stats):
        self.f, self.ti, self.z, self.hg, self.fac, self.stats = f, ti, z_star.detach(), hg, fac, stats

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():  # backward(create_graph=True): this solve is not itself differentiable
            raise RuntimeError(
                "second derivatives through an ESDIRK stage (Kvaerno3, Kvaerno5, KenCarp4) are not supported: its "
                "implicit-function gradient is computed off the graph. Rodas5P() and Rosenbrock23() are "
                "differentiable twice"
            )
        v = v.detach()
        with torch.enable_grad():
            z = self.z.requires_grad_(True) if not self.z.requires_grad else self.z
            out = self.f(self.ti, z)
        v_norm = float(v.abs().max())
        if v_norm == 0:
            return v
        eps = torch.finfo(v.dtype).eps
        u, size = self._refine(out, z, v, self.fac, 64 * eps * v_norm)
        if size > 64 * eps * v_norm:
            # The factor's Jacobian (from an earlier step) is too far from J(z*) to converge on:
            # factor the exact one and refine again, which converges in an iteration or two.
            exact = JacobianBuilder(self.f, self.fac.structure, True, self.stats).jacobian(self.ti, self.z, out)
            u, size = self._refine(
                out, z, v, Factored(exact, self.hg, self.fac.structure, self.stats), 64 * eps * v_norm, u
            )
            # Refinement stalls at the conditioning of M times eps (3e-8 relative measured for
            # KenCarp4 on Robertson); a residual above 1e-3·sqrt(eps)⁻¹·eps ≈ 1e-6 is a failure.
            if size > 1e-6 * v_norm:
                raise RuntimeError(
                    "the implicit-function gradient of an ESDIRK stage did not converge (residual "
                    f"{size / v_norm:.2e} relative): the stage's linear system is too ill-conditioned to differentiate"
                )
        self.z = self.z.detach()
        return u

    def _refine(self, out, z, v, fac: Factored, tol: float, u=None) -> tuple[torch.Tensor, float]:
        u = fac.solve(v, adjoint=True) if u is None else u
        size = math.inf
        for _ in range(30):
            (jtu,) = torch.autograd.grad(out, z, u, retain_graph=True)
            residual = v - u + self.hg * jtu
            size = float(residual.abs().max())
            if size <= tol or not math.isfinite(size):
                break
            u = u + fac.solve(residual, adjoint=True)
        return u, size


@dataclass(frozen=True, repr=False)
class Kvaerno3(AbstractESDIRK):
    """Kværnø's 4-stage ESDIRK method of order 3(2), L-stable and stiffly accurate, with a
    cubic Hermite dense output (diffrax's Kvaerno3).

    Reference: Kværnø (2004), BIT Numer. Math. 44, 489–502.
    """

    autodiff: bool = True
    tableau: ClassVar[ESDIRKTableau] = KVAERNO3
    order: ClassVar[int] = 3
    error_order: ClassVar[int] = 2
    stability: ClassVar[str] = "L-stable, stiffly accurate"


@dataclass(frozen=True, repr=False)
class Kvaerno5(AbstractESDIRK):
    """Kværnø's 7-stage ESDIRK method of order 5(4), L-stable and stiffly accurate, with a
    cubic Hermite dense output (diffrax's Kvaerno5).

    Reference: Kværnø (2004), BIT Numer. Math. 44, 489–502.
    """

    autodiff: bool = True
    tableau: ClassVar[ESDIRKTableau] = KVAERNO5
    order: ClassVar[int] = 5
    error_order: ClassVar[int] = 4
    stability: ClassVar[str] = "L-stable, stiffly accurate"


@dataclass(frozen=True, repr=False)
class KenCarp4(AbstractESDIRK):
    """Kennedy & Carpenter's ARK4(3)6L[2]SA: a 6-stage ESDIRK method of order 4(3), L-stable and
    stiffly accurate, paired with an explicit tableau as an IMEX method: on a
    `SplitODEProblem` it treats f_stiff implicitly and f_nonstiff explicitly (one Newton system
    per stage in f_stiff alone); on an `ODEProblem` it is fully implicit. Cubic Hermite dense
    output.

    Reference: Kennedy & Carpenter (2003), Appl. Numer. Math. 44, 139–181.
    """

    autodiff: bool = True
    tableau: ClassVar[ESDIRKTableau] = KENCARP4
    order: ClassVar[int] = 4
    error_order: ClassVar[int] = 3
    stability: ClassVar[str] = "L-stable, stiffly accurate"
