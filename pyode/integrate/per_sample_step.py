"""One explicit Runge–Kutta step for every element of a batch at once, each with its own step
size: the tableau arithmetic of the per-sample loop (`per_sample.py`), as `RKStepper` is the
joint loop's.

Every combination rounds as `RKStepper`'s does for one element: `addmv(y, stages.T, a, alpha=h)`
adds the products (h·a_j)·k_j to y one at a time, unfused, in order of j (MKL's gemv; checked
bit for bit), the error estimate is one `mv` and its norm one reduction per row. So on the CPU
each element's stages, error ratios and steps are bit for bit those of a solve of it alone.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..problem import Stats
from ..solvers.runge_kutta import AbstractExplicitRK


def rms_rows(x: torch.Tensor) -> torch.Tensor:
    """`pyode.rms_norm` of each row of x (B, n)."""
    return torch.linalg.vector_norm(x, dim=1) * (1.0 / x.shape[1] ** 0.5)


def max_rows(x: torch.Tensor) -> torch.Tensor:
    """`pyode.max_norm` of each row of x (B, n)."""
    return x.abs().amax(dim=1)


class Field:
    """f on (B, n) rows at (B,) times, counted (one count per batched call), output checked."""

    def __init__(self, f: Callable, y0: torch.Tensor, stats: Stats):
        self.f, self.stats = f, stats
        self.shape, self.dtype, self.device = y0.shape, y0.dtype, y0.device
        self.rows = y0.dim() == 2  # already (B, n): no reshaping

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.stats.nfe += 1
        out = self.f(t if t.dtype == self.dtype else t.to(self.dtype), y if self.rows else y.view(self.shape))
        if not (
            isinstance(out, torch.Tensor)
            and out.shape == self.shape
            and out.dtype == self.dtype
            and out.device == self.device
        ):
            out = self._fix(out)
        return out if self.rows else out.reshape(self.shape[0], -1)

    def _fix(self, out) -> torch.Tensor:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"f(t, y) must return a tensor shaped like y; it returned {type(out).__name__}")
        if out.shape != self.shape:
            raise ValueError(
                f"f(t, y) returned shape {tuple(out.shape)}, but the state has shape {tuple(self.shape)}; with "
                "batch_axis=0, f gets t of shape (B,) and y of shape (B, ...) and must return dy/dt shaped like y"
            )
        if out.device != self.device:
            raise TypeError(f"f(t, y) returned a tensor on {out.device}, but the state is on {self.device}")
        if out.dtype not in (torch.float16, torch.bfloat16):  # f under torch.autocast: cast back
            raise TypeError(f"f(t, y) returned dtype {out.dtype}, but the state has dtype {self.dtype}")
        return out.to(self.dtype)


def _guard(x: torch.Tensor, fallback: torch.Tensor, bad: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace non-finite stage inputs by the element's own state before f sees them. The step is
    graded as not finite anyway (and rejected); but on the autograd graph, f's backward at a
    non-finite input would put 0·inf = NaN into that row's parameter gradient, which is summed
    into every element's."""
    finite = torch.isfinite(x)
    bad = ~finite if bad is None else bad | ~finite
    return torch.where(finite, x, fallback), bad


class BatchedRKStepper:
    """An explicit Runge–Kutta method on (B, n) states, each row with its own h (0 freezes it).

    Args:
        norm: maps the scaled error (B, n) to each row's norm (B,).
        on_graph: guard stage inputs (see `_guard`): the step is recorded by autograd.
    """

    def __init__(
        self,
        solver: AbstractExplicitRK,
        f: Field,
        like: torch.Tensor,
        time_dtype: torch.dtype,
        rtol: float | torch.Tensor,
        atol: float | torch.Tensor,
        norm: Callable[[torch.Tensor], torch.Tensor],
        on_graph: bool,
    ):
        self.solver, self.f, self.rtol, self.atol, self.norm, self.on_graph = solver, f, rtol, atol, norm, on_graph
        self.dtype, device = like.dtype, like.device
        tableau = solver.tableau
        self.tableau, self.fsal, self.s = tableau.cast(self.dtype, device), tableau.fsal, tableau.stages
        self.c = torch.tensor(self.tableau.c, dtype=time_dtype, device=device).unsqueeze(1)
        self.a = torch.stack((*self.tableau.a_rows, self.tableau.b))  # (s + 1, s): the rows of a, then b
        self.weights = solver.interpolant.cast(self.dtype, device) if solver.interpolant is not None else None
        self.dense_stages = tuple(
            (c, torch.tensor(row, dtype=self.dtype, device=device)) for c, row in solver.dense_stages
        )
        self.dense_c = torch.tensor([c for c, _ in solver.dense_stages], dtype=time_dtype, device=device).unsqueeze(1)
        # Evaluations of f beyond the step's own: k(t + h) for a non-FSAL method, DP8's extra stages.
        self.extra = not self.fsal or bool(self.dense_stages)

    def step(
        self, t: torch.Tensor, y: torch.Tensor, k1: torch.Tensor, h: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(stages (s, B, n), y1, rows whose stage inputs were not finite, or None).

        Each new stage adds its products (h·a_ij)·k_j to the running sums of all later stage
        inputs at once: for each of them the same sequence of roundings as `addmv`'s.
        """
        s = self.s
        rows = s if not self.fsal else s - 1  # the inputs of stages 1..s-1, then y1 (non-FSAL)
        columns = (self.a[1 : rows + 1].unsqueeze(-1) * h.to(self.dtype)).unsqueeze(-1).unbind(1)  # (rows, B, 1)
        times = (t + self.c * h).unbind(0)  # the stage times as `loop.py` forms them
        k, stages, bad, sums = k1, [k1], None, y
        yi = y
        for i in range(1, s):
            sums = sums + columns[i - 1][i - 1 :] * k  # rows i, i + 1, ...: add (h·a_r,i-1)·k_i-1
            yi = sums[0]
            if self.on_graph:
                yi, bad = _guard(yi, y, bad)
            k = self.f(times[i], yi)
            stages.append(k)
            sums = sums[1:]
        y1 = yi if self.fsal else (sums + columns[s - 1][s - 1 :] * k)[0]
        return torch.stack(stages), y1, (bad.any(dim=1) if bad is not None else None)

    def error_ratio(
        self, stages: torch.Tensor, y: torch.Tensor, y1: torch.Tensor, h: torch.Tensor, bad: torch.Tensor | None
    ) -> torch.Tensor:
        """Each row's error ratio (B,) in h's dtype: `RKStepper.error_ratio` per row; NaN for the
        rows in `bad`."""
        with torch.no_grad():  # the controller is not differentiated
            B = y.shape[0]
            b_error = self.tableau.b_error
            flat = stages.view(self.s, -1).T
            scale = torch.maximum(y.abs(), y1.abs()).mul_(self.rtol).add_(self.atol)
            if b_error.shape[1] == 1:
                ratio = self.norm(torch.mv(flat, b_error[:, 0]).view(B, -1).div_(scale))
            else:
                scaled = torch.mm(flat, b_error).view(B, y.shape[1], -1).div_(scale.unsqueeze(-1))
                ratio = self.solver.combine_error_norms([self.norm(scaled[..., j]) for j in range(scaled.shape[-1])])
            ratio = (ratio * h.abs().to(self.dtype)).to(h.dtype)
            return ratio if bad is None else torch.where(bad, torch.nan, ratio)

    def coefficients(
        self, stages: torch.Tensor, t: torch.Tensor, h: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor, f1
    ) -> torch.Tensor:
        """The step's dense coefficients r (P, B, n): y(t + θh) = y0 + Σ θ^p r_p for each row.
        `f1` = f(t + h, y1); DP8 evaluates its `dense_stages` more (batched) here."""
        h_col = h.to(self.dtype).unsqueeze(1)
        if self.weights is None:  # cubic Hermite
            hf0, hf1, dy = stages[0] * h_col, f1 * h_col, y1 - y0
            return torch.stack((hf0, 3 * dy - 2 * hf0 - hf1, hf0 + hf1 - 2 * dy))
        if self.dense_stages:
            extended = [*stages.unbind(0), f1]
            times = t + self.dense_c * h
            for i, (_, row) in enumerate(self.dense_stages):
                yj = y0
                for c, k in zip((row.unsqueeze(-1) * h.to(self.dtype)).unbind(0), extended):
                    yj = yj + c.unsqueeze(-1) * k  # added in order, as `addmv` adds them
                if self.on_graph:
                    yj, _ = _guard(yj, y0, None)
                extended.append(self.f(times[i], yj))
            stages = torch.stack(extended)
        B = y0.shape[0]
        return torch.mm(self.weights, stages.view(stages.shape[0], -1)).view(-1, B, y0.shape[1]) * h_col
