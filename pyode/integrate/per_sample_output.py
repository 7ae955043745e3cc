"""What a per-sample solve (`per_sample.py`) returns: its save points and its dense output, each
element read from its own steps.

Save points are filled as the steps pass them: after a step, each element's save times in
(t, t + h] come from that step's interpolant (its end state exactly at its end). The loop learns
the most save points any element passed in the same host sync it needs anyway, and evaluates a
window that wide for every element at once; the values and their slots in the (T, B) output are
collected and scattered into it once, at the end.
"""

from __future__ import annotations

import torch

from .._autocast import no_autocast


def theta_powers(theta: torch.Tensor, degree: int) -> torch.Tensor:
    """(..., P) powers θ^1..θ^P of θ (...), by repeated multiplication."""
    return theta.unsqueeze(-1).expand(*theta.shape, degree).cumprod(-1)


class SaveBuffer:
    """Each element's save points, filled step by step.

    Args:
        times: (B, T) save times in the time dtype (the graph kept when they require grad).
        direction: +1 forward in time, -1 backward.
        n: entries per element.
    """

    def __init__(self, times: torch.Tensor, direction: float, like: torch.Tensor):
        self.times = times
        self.direction = direction
        self.B, self.T = times.shape
        self.keys = (direction * times.detach()).contiguous()  # increasing along each row
        self.rows = torch.arange(self.B, device=times.device)
        self.like = like  # (B, n): dtype, device and width of the outputs
        self.slots: list[torch.Tensor] = []  # flat indices into the (T·B + 1) outputs; T·B is a sink
        self.values: list[torch.Tensor] = []
        # Unrecorded, the values go straight into the outputs; recorded, they are kept and
        # scattered once at the end (one node, rather than a copy of the outputs per step).
        n = like.shape[1]
        self.out = None if torch.is_grad_enabled() else like.new_full((self.T * self.B + 1, n), torch.nan)
        self.next = torch.zeros(self.B, dtype=torch.long, device=times.device)  # each element's next save

    def _key(self, t: torch.Tensor) -> torch.Tensor:
        return (t if self.direction > 0 else -t).unsqueeze(1)

    def passed(self, t: torch.Tensor) -> torch.Tensor:
        """How many save points lie at or before t (B,) along each row."""
        return torch.searchsorted(self.keys, self._key(t), right=True).squeeze(1)

    def before(self, t: torch.Tensor) -> torch.Tensor:
        """How many save points lie strictly before t (B,) along each row."""
        return torch.searchsorted(self.keys, self._key(t)).squeeze(1)

    def save_start(self, y0: torch.Tensor, at_t0: torch.Tensor) -> None:
        """The save points at t0 (only a row's first can be), with values y0 (B, n)."""
        self._put(torch.where(at_t0, self.rows, self.T * self.B), y0)
        self.next = at_t0.long()

    def _put(self, slots: torch.Tensor, values: torch.Tensor) -> None:
        if self.out is not None:
            self.out.index_put_((slots,), values)
        else:
            self.slots.append(slots)
            self.values.append(values)

    def save_step(
        self,
        width: int,
        passed: torch.Tensor,
        t: torch.Tensor,
        h: torch.Tensor,
        y0: torch.Tensor,
        r: torch.Tensor | None,
        t_new: torch.Tensor,
        y1: torch.Tensor,
        end_exact: bool,
    ) -> None:
        """The save points each element's step [t, t + h] passed (`passed` (B,) counts them up to
        t + h; `width` is their largest number), from its interpolant y0 + Σ θ^p r_p (r: (P, B, n)),
        and exactly y1 at t_new when `end_exact`. r may be None when every one is at t_new."""
        B, T = self.B, self.T
        index = self.next.unsqueeze(1) + torch.arange(width, device=passed.device)
        valid = index < passed.unsqueeze(1)
        index = index.clamp_max(T - 1)
        s = self.times.gather(1, index)  # (B, W)
        if r is None:
            values = y1.unsqueeze(1).expand(-1, width, -1)
        else:
            # θ = 0 in the unused slots keeps their (discarded) values finite, and so their gradients.
            theta = torch.where(valid, (s - t.unsqueeze(1)) / torch.where(h != 0, h, 1.0).unsqueeze(1), 0.0)
            powers = theta_powers(theta, r.shape[0]).to(y0.dtype)
            values = torch.einsum("bwp,pbn->bwn", powers, r).add_(y0.unsqueeze(1))
        if end_exact and r is not None:
            ends = valid & (s.detach() == t_new.unsqueeze(1))
            values = torch.where(ends.unsqueeze(-1), y1.unsqueeze(1), values)
        self._put(
            torch.where(valid, index * B + self.rows.unsqueeze(1), T * B).reshape(-1), values.reshape(B * width, -1)
        )
        self.next = passed

    def result(self) -> torch.Tensor:
        """(T, B, n): the save points, NaN where an element never reached them."""
        n = self.like.shape[1]
        out = self.out
        if out is None:
            out = self.like.new_full((self.T * self.B + 1, n), torch.nan)
            out = out.index_put((torch.cat(self.slots),), torch.cat(self.values))
        return out[: self.T * self.B].view(self.T, self.B, n)


class ElementDenseOutput:
    """A per-sample solve's dense output: `sol(t)` interpolates each element on its own steps.

    `t` is a number or a 0-d tensor (returns (B, ...)), a 1-D tensor (M,) of times shared by every
    element, or a (B, M) tensor of times per element (both return (M, B, ...)). Times that require
    grad get gradients through the interpolant.
    """

    def __init__(self, t0: float, direction: float, y0: torch.Tensor, shape: tuple, time_dtype: torch.dtype):
        self.t0, self.direction, self.y0, self.shape, self.time_dtype = t0, direction, y0, shape, time_dtype
        self.steps: list[tuple[torch.Tensor, ...]] = []  # (t, h, y_n, r (P, B, n), accepted), per batched step
        self.reached: torch.Tensor | None = None  # (B,) each element's last time, set when the solve ends
        self._stacked: tuple[torch.Tensor, ...] | None = None

    def append(
        self, t: torch.Tensor, h: torch.Tensor, y: torch.Tensor, r: torch.Tensor, accepted: torch.Tensor
    ) -> None:
        self.steps.append((t, h, y, r, accepted))

    def __call__(self, t) -> torch.Tensor:
        with no_autocast(self.y0.device):  # interpolation is the solver's arithmetic
            return self._evaluate(t)

    def _stack(self) -> tuple[torch.Tensor, ...]:
        """Each element's accepted steps first, in time order: the batched steps stacked (K, B),
        sorted by start along each element with the steps it did not take (+inf) last."""
        if self._stacked is None:
            t, h, y, r, accepted = (torch.stack(x) for x in zip(*self.steps))
            keys = torch.where(accepted, self.direction * t, torch.inf).T.contiguous()
            keys, order = keys.sort(dim=1, stable=True)
            self._stacked = (t, h, y, r, keys, order, accepted.sum(0))
        return self._stacked

    def _evaluate(self, t) -> torch.Tensor:
        B = self.y0.shape[0]
        if isinstance(t, torch.Tensor) and t.dim() == 2:
            if t.shape[0] != B:
                raise ValueError(f"sol(t) with per-element times needs t of shape ({B}, M); got {tuple(t.shape)}")
            query, scalar = t, False
        elif isinstance(t, torch.Tensor) and t.dim() <= 1:
            query, scalar = t.reshape(1, -1).expand(B, -1), t.dim() == 0
        else:
            query, scalar = torch.full((B, 1), float(t), dtype=self.time_dtype), True
        query = query.to(dtype=self.time_dtype, device=self.y0.device)
        self._check_span(query.detach())
        if not self.steps:
            values = self.y0.unsqueeze(1).expand(-1, query.shape[1], -1)
        else:
            t_n, h_n, y_n, r_n, keys, order, taken = self._stack()
            position = torch.searchsorted(keys, self.direction * query.detach(), right=True) - 1
            position = torch.minimum(position.clamp_min(0), (taken - 1).clamp_min(0).unsqueeze(1))
            k = order.gather(1, position)  # (B, M): the batched step each query falls in
            b = torch.arange(B, device=k.device).unsqueeze(1)
            h = h_n[k, b]
            # An element with no step (failed at once) takes y0 below; a finite θ keeps its gradient 0.
            theta = (query - t_n[k, b]) / torch.where(h != 0, h, 1.0)
            powers = theta_powers(theta, r_n.shape[1]).to(self.y0.dtype)
            values = torch.einsum("bmp,bmpn->bmn", powers, r_n[k, :, b]) + y_n[k, b]
            values = torch.where((taken > 0).view(B, 1, 1), values, self.y0.unsqueeze(1))
        values = values.transpose(0, 1)  # (M, B, n)
        if scalar:
            return values[0].reshape(self.shape)
        return values.reshape(values.shape[0], *self.shape)

    def _check_span(self, query: torch.Tensor) -> None:
        reached = self.reached if self.reached is not None else torch.full((query.shape[0],), self.t0)
        reached = reached.to(query)  # the time dtype and device
        lo, hi = (
            torch.minimum(reached, torch.full_like(reached, self.t0)),
            torch.maximum(reached, torch.full_like(reached, self.t0)),
        )
        slack = 1e-12 * torch.maximum(lo.abs(), hi.abs()).clamp_min(1.0)
        outside = (query < (lo - slack).unsqueeze(1)) | (query > (hi + slack).unsqueeze(1))
        if bool(outside.any()):
            i, m = (int(x) for x in outside.nonzero()[0])
            raise ValueError(
                f"t = {float(query[i, m])} lies outside element {i}'s solved span [{float(lo[i])}, {float(hi[i])}]"
            )
