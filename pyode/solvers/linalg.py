"""The linear algebra of the implicit methods: f's Jacobian and the factored iteration matrix.

The Jacobian covers the *dynamic* channels only: the leading entries of the flat state whose
derivative depends on the state. Trailing running-integral channels (`integral_parts` of the
problem: an adjoint's a_θ, a running cost) neither feed back nor depend on themselves, so the
matrix M = I - hγ·J_full is block lower-triangular, [[M_dd, 0], [-hγ J_qd, I]], and solving with
it needs M_dd and the coupling rows J_qd, which the Jacobian's columns carry anyway.

When the state is a batch of independent systems (`independent_batch=True` on the problem,
a single tensor whose dim 0 indexes the systems) the Jacobian is block-diagonal: its B blocks
of n×n come from n Jacobian–vector products on the whole batch at once (one per coordinate of a
block, the same coordinate in every block), and are factored as one batched LU: B·n³ work,
never (B·n)³.
"""

from __future__ import annotations

import math
import threading
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

# torch's forward-mode AD levels are process-global: two threads inside `torch.func.jvp` at once
# corrupt each other's levels. Jacobians by autodiff are taken one thread at a time (re-entrant:
# f may itself run an implicit solve).
_FORWARD_AD = threading.RLock()


class Structure:
    """What the problem declares about its Jacobian: a user `jac`, a batch of independent
    systems of `block` entries each, and how many leading entries are `dynamic`."""

    def __init__(self, numel: int, dynamic: int, blocks: int | None, jac: Callable | None):
        self.numel, self.dynamic, self.blocks, self.jac = numel, dynamic, blocks, jac
        self.block = numel // blocks if blocks else None

    @property
    def has_integrals(self) -> bool:
        return self.dynamic < self.numel


@dataclass
class Jacobian:
    """∂f/∂y over the dynamic channels at (t, y): a (d, d) matrix, or (B, n, n) blocks."""

    t: float
    y: torch.Tensor
    matrix: torch.Tensor
    blocked: bool
    coupling: torch.Tensor | None = None  # J_qd: the integral channels' rows over the dynamic ones

    def spectral_radius(self) -> float:
        """An estimate of the largest |eigenvalue| (for automatic stiffness switching)."""
        with torch.no_grad():
            m = self.matrix.detach()
            if not torch.isfinite(m).all():
                return math.inf
            if m.shape[-1] <= 64:
                return float(torch.linalg.eigvals(m).abs().max()) if m.numel() else 0.0
            v = torch.ones(m.shape[:-1], dtype=m.dtype, device=m.device)
            rho = 0.0
            for _ in range(12):  # power iteration, enough for a switching decision
                w = (m @ v.unsqueeze(-1)).squeeze(-1)
                rho = float(w.norm() / v.norm().clamp_min(1e-300))
                v = w / w.norm().clamp_min(1e-300)
            return rho


class JacobianBuilder:
    """Computes f's Jacobian (and ∂f/∂t) by autodiff (rows by reverse mode; columns by forward
    mode when the integral channels' rows are wanted too), finite differences, or the problem's
    `jac`, counting each in `stats.njac`.

    Autodiff keeps the Jacobian on the autograd graph, so that differentiating through a
    Rosenbrock step (whose result depends on J) gives the exact discrete gradient.
    """

    def __init__(self, f: Callable, structure: Structure, autodiff: bool, stats, layout=None):
        self.f, self.structure, self.autodiff, self.stats, self.layout = f, structure, autodiff, stats, layout
        self.warned = False
        self.reverse = True  # rows by reverse mode until torch.func.vjp refuses

    def _fallback(self, err: Exception) -> None:
        if not self.warned:
            warnings.warn(
                f"autodiff of f (torch.func) failed ({type(err).__name__}: {str(err)[:160]}); the implicit solver "
                "uses finite-difference Jacobians for this solve (pass autodiff=False to choose them and silence this)",
                RuntimeWarning,
                stacklevel=6,
            )
            self.warned = True
        self.autodiff = False

    def jacobian(self, t: float, y: torch.Tensor, f0: torch.Tensor) -> Jacobian:
        s = self.structure
        self.stats.njac += 1
        blocked = s.blocks is not None
        if s.jac is not None:
            coupling = self._columns(t, y, f0)[1] if s.has_integrals else None
            return Jacobian(t, y, self._user(t, y), blocked, coupling)
        matrix, coupling = self._matrix(t, y, f0)
        return Jacobian(t, y, matrix, blocked, coupling)

    def _matrix(self, t, y, f0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(J over the dynamic channels, J_qd or None)."""
        if self.autodiff and self.reverse and not self.structure.has_integrals:
            try:
                return self._reverse(t, y), None
            except (RuntimeError, NotImplementedError, TypeError):
                # torch.func.vjp refuses saved-tensor hooks (AutoAdjoint's probe, checkpointed
                # segments) where jvp works: forward mode from here on.
                self.reverse = False
        return self._columns(t, y, f0)

    def _columns(self, t, y, f0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """J's columns over the dynamic channels, which hold J_qd below them too."""
        columns = None
        if self.autodiff:
            try:
                columns = self._forward(t, y)
            except (RuntimeError, NotImplementedError, TypeError) as err:
                self._fallback(err)
        if columns is None:
            columns = self._differences(t, y, f0)
        s = self.structure
        coupling = columns[:, s.dynamic :].T if s.has_integrals else None
        return self._arrange(columns), coupling

    def _basis(self, y: torch.Tensor) -> torch.Tensor:
        """The tangents (cotangents) whose Jacobian–vector (vector–Jacobian) products give J's
        columns (rows) over the dynamic channels: (k, N). For a batch of independent systems,
        coordinate i of every block at once."""
        s = self.structure
        if s.blocks is None:
            return torch.eye(s.dynamic, s.numel, dtype=y.dtype, device=y.device)
        eye = torch.eye(s.block, dtype=y.dtype, device=y.device)
        return eye.unsqueeze(1).expand(s.block, s.blocks, s.block).reshape(s.block, s.numel)

    def _arrange(self, columns: torch.Tensor) -> torch.Tensor:
        """J from its columns (k, N) as computed along `_basis`."""
        s = self.structure
        if s.blocks is None:
            return columns[:, : s.dynamic].T
        # columns[i] holds, for every block b, column i of block b: (n, B, n) -> (B, n, n)
        return columns.reshape(s.block, s.blocks, s.block).permute(1, 2, 0)

    def _reverse(self, t: float, y: torch.Tensor) -> torch.Tensor:
        """J's rows by vector–Jacobian products, vmapped: reverse mode, which torch runs several
        times faster than forward mode here (a Python float times a dual tensor costs ~0.5 ms
        under torch.func.jvp on torch 2.13)."""
        s = self.structure
        count = self.stats.nfe
        with _FORWARD_AD:
            _, pullback = torch.func.vjp(lambda z: self.f(t, z), y)
            (rows,) = torch.func.vmap(pullback)(self._basis(y))
        self.stats.nfe = count  # the transformed call ran f once; njac counts it
        if s.blocks is None:
            return rows.to(y.dtype)
        # rows[i] holds, for every block b, row i of block b: (n, B, n) -> (B, n, n)
        return rows.reshape(s.block, s.blocks, s.block).permute(1, 0, 2).to(y.dtype)

    def _forward(self, t: float, y: torch.Tensor) -> torch.Tensor:
        """J's columns (k, N) by Jacobian–vector products, vmapped."""
        f = self.f

        def jvp(v: torch.Tensor) -> torch.Tensor:
            return torch.func.jvp(lambda z: f(t, z), (y,), (v,))[1]

        count = self.stats.nfe
        with _FORWARD_AD:
            columns = torch.func.vmap(jvp)(self._basis(y))
        self.stats.nfe = count  # the transformed call ran f once symbolically; njac counts it
        # Cast: under vmap, torch 2.13 promotes `python float * 0-d dual tensor` to float64.
        return columns.to(y.dtype)

    def _differences(self, t: float, y: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
        """Forward differences, one evaluation of f per column (per coordinate of a block)."""
        y_ = y.detach()
        f0_ = f0.detach()
        eps = torch.finfo(y.dtype).eps
        columns = []
        with torch.no_grad():
            for v in self._basis(y_):
                delta = math.sqrt(eps) * torch.where(y_.abs() > 1, y_.abs(), torch.ones_like(y_)) * v
                step = (y_ + delta) - y_  # the step actually taken, exact in floating point
                width = step.sum() if self.structure.blocks is None else None
                df = self.f(t, y_ + step) - f0_
                if width is not None:
                    columns.append(df / width)
                else:
                    # each block's coordinate moved by its own width
                    widths = step.reshape(self.structure.blocks, self.structure.block).sum(-1, keepdim=True)
                    columns.append((df.reshape(self.structure.blocks, -1) / widths).reshape(-1))
        self.stats.nfe -= len(columns)  # njac counts them
        return torch.stack(columns)

    def _user(self, t: float, y: torch.Tensor) -> torch.Tensor:
        s = self.structure
        layout = self.layout
        J = s.jac(torch.as_tensor(t, dtype=y.dtype, device=y.device), layout.unflatten(y) if layout else y)
        if not isinstance(J, torch.Tensor):
            raise TypeError(f"jac must return a tensor; got {type(J).__name__}")
        want = (s.blocks, s.block, s.block) if s.blocks is not None else (s.dynamic, s.dynamic)
        if tuple(J.shape) != want:
            raise ValueError(
                f"jac(t, y) returned shape {tuple(J.shape)}; expected {want} "
                + ("(one n×n block per independent system)" if s.blocks is not None else "(∂f/∂y over the flat state)")
            )
        return J.to(y.dtype)

    def time_derivative(self, t: float, y: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
        """∂f/∂t at (t, y), by forward mode in t when autodiff works, else a forward difference."""
        if self.autodiff:
            tt = torch.as_tensor(t, dtype=y.dtype, device=y.device)
            try:
                count = self.stats.nfe
                with _FORWARD_AD:
                    out = torch.func.jvp(lambda s: self.f(s, y), (tt,), (torch.ones_like(tt),))[1]
                self.stats.nfe = count + 1
                return out.to(y.dtype)
            except (RuntimeError, NotImplementedError, TypeError) as err:
                self._fallback(err)
        eps = torch.finfo(y.dtype).eps
        dt = math.sqrt(eps) * max(abs(t), 1.0)
        dt = (t + dt) - t
        with torch.no_grad():
            return (self.f(t + dt, y.detach()) - f0.detach()) / dt


class Factored:
    """M = I - hγ·J factored once (dense or batched LU), solved many times.

    With integral channels the solve adds their coupling x_q = b_q + hγ·J_qd x_d, J_qd read from
    the Jacobian's columns (which hold it below the dynamic rows at no extra cost).
    """

    def __init__(self, jac: Jacobian, hgamma: float, structure: Structure, stats):
        self.hgamma, self.structure, self.jac = hgamma, structure, jac
        J = jac.matrix
        eye = torch.eye(J.shape[-1], dtype=J.dtype, device=J.device)
        stats.nlu += 1
        self.lu, self.pivots, info = torch.linalg.lu_factor_ex(eye - hgamma * J)
        self.singular = bool((info != 0).any()) or not bool(torch.isfinite(self.lu).all())

    def solve(self, b: torch.Tensor, adjoint: bool = False) -> torch.Tensor:
        s = self.structure
        d = s.dynamic
        bd = b[:d] if s.has_integrals else b
        if s.blocks is not None:
            x = torch.linalg.lu_solve(self.lu, self.pivots, bd.reshape(s.blocks, s.block, 1), adjoint=adjoint)
            x = x.reshape(-1)
        else:
            x = torch.linalg.lu_solve(self.lu, self.pivots, bd.unsqueeze(-1), adjoint=adjoint).squeeze(-1)
        if not s.has_integrals:
            return x
        if adjoint:  # x_q = b_q; the coupling enters x_d, which the caller's refinement corrects
            return torch.cat((x, b[d:]))
        return torch.cat((x, b[d:] + self.hgamma * torch.mv(self.jac.coupling, x)))
