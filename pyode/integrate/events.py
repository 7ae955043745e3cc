"""Events: a condition g(t, y) whose zero crossings the loop locates on each accepted step's
dense output, lands the step on, and then either stops at or applies an `affect` at.

Gradients through the event time come from the implicit function theorem: g(t*, y(t*; θ); θ) = 0
gives dt*/dθ = -(∂g/∂θ + ∂g/∂y·∂y/∂θ) / (dg/dt). The loop adds δ = c - c.detach(), with
c = -g(t*, y*) / (dg/dt) (dg/dt held constant), to the event time and ẏ·δ to the state there:
δ is zero in value, so nothing computed changes, and its gradient is exactly dt*/dθ. A state
changed by `affect` and integrated on from t* also depends on t* through the start of what
follows; subtracting f(t*, y⁺)·δ from the new state y⁺ carries that dependence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .. import interpolation
from .record import AcceptedStep
from .state import StateLayout

_MAX_ITERATIONS = 100
# Where each step's conditions are sampled, as fractions of the step.
_SAMPLES = tuple(k / 10 for k in range(11))


@dataclass(frozen=True)
class Event:
    """A zero crossing of `condition(t, y)` during a solve.

    Args:
        condition: g(t, y) -> a scalar (a 0-d tensor or a number), or a 1-D tensor with one value
            per element of a batch (the state's leading dimension): each element then has its own
            event. t arrives as a 0-d tensor of y's dtype, y as the state (tuple states as tuples).
        terminal: stop the solve at the event (`ReturnCode.Terminated`; `sol.event_time`,
            `sol.event_index`). With a batched condition, each element stops at its own event (its
            state is frozen there) and the solve ends when all have.
        direction: 1 for rising crossings only (g goes from negative to non-negative), -1 for
            falling ones, 0 for both.
        affect: for a non-terminal event, `affect(t, y) -> y_new`: the state to continue from (a
            bounce, a dose, a reset). Differentiable: gradients flow through it, its inputs and
            the event time.
    """

    condition: Callable[[torch.Tensor, Any], Any]
    terminal: bool = True
    direction: int = 0
    affect: Callable[[torch.Tensor, Any], Any] | None = None

    def __post_init__(self) -> None:
        if not callable(self.condition):
            raise TypeError(f"Event: condition must be callable as condition(t, y); got {self.condition!r}")
        if not isinstance(self.terminal, bool):
            raise TypeError(f"Event: terminal must be True or False; got {self.terminal!r}")
        if isinstance(self.direction, bool) or self.direction not in (-1, 0, 1):
            raise ValueError(f"Event: direction must be -1 (falling), 0 (both) or 1 (rising); got {self.direction!r}")
        if self.affect is not None and not callable(self.affect):
            raise TypeError(f"Event: affect must be callable as affect(t, y) -> y_new; got {self.affect!r}")
        if self.affect is not None and self.terminal:
            raise ValueError("Event: affect runs when the solve continues past the event; pass terminal=False with it")


def check_events(events: Any) -> tuple[Event, ...]:
    """`solve`'s `events` argument as a tuple of Events."""
    if events is None:
        return ()
    if isinstance(events, Event):
        return (events,)
    if not isinstance(events, (list, tuple)) or not all(isinstance(e, Event) for e in events):
        raise TypeError(f"events must be a pyode.Event or a list of them; got {events!r}")
    return tuple(events)


class EventHandler:
    """Locates and applies the events of one solve. The loop calls `locate` on each accepted step
    (which may shorten it to the earliest crossing) and `fire` when it returns True.

    With `stop_at_any=True` every crossing ends the loop without applying anything: what the
    adjoints' segment-by-segment driver uses to find where the next segment ends.
    """

    def __init__(
        self, events: tuple[Event, ...], layout: StateLayout, time_dtype: torch.dtype, stop_at_any: bool = False
    ):
        self.events, self.layout, self.time_dtype = events, layout, time_dtype
        self.stop_at_any = stop_at_any
        self.grad = torch.is_grad_enabled()
        self.prev: list[torch.Tensor] | None = None  # g at the current step's start (its sign)
        self.batch: int | None = None
        self.alive: torch.Tensor | None = None  # which batch elements still run
        self.mask: torch.Tensor | None = None  # `alive` on the flat state: frozen elements' f is 0
        self.fired: list[tuple[float, int, torch.Tensor | None]] = []  # (t*, event, elements) this step
        self.log: list[tuple[torch.Tensor, int]] = []  # every firing: (event time, event index)
        self.terminal_time: torch.Tensor | None = None
        self.terminal_index: Any = None

    def begin(self, t0: float, y0: torch.Tensor) -> None:
        """Read the conditions at the start (once: a handler carried across solves keeps its state)."""
        if self.prev is not None:
            return
        with torch.no_grad():
            g0 = [self._g(e, t0, y0) for e in self.events]
        self.batched = [g.dim() == 1 for g in g0]
        for e, g, b in zip(self.events, g0, self.batched):
            if not b:
                continue
            if not e.terminal:
                raise ValueError(
                    "Event: a batched condition (one value per element) must be terminal: each element stops at "
                    "its own event; an affect on part of a batch is not supported"
                )
            if self.batch is not None and g.numel() != self.batch:
                raise ValueError(
                    f"Event: batched conditions return {self.batch} and {g.numel()} values; they must agree"
                )
            self.batch = g.numel()
        if self.batch is not None:
            self.expand = self._expander()
            device = self.layout.device
            self.alive = torch.ones(self.batch, dtype=torch.bool, device=device)
            self.batch_time = torch.full((self.batch,), math.nan, dtype=self.time_dtype, device=device)
            self.batch_index = torch.full((self.batch,), -1, dtype=torch.long, device=device)
        self.prev = [g.reshape(-1).clone() for g in g0]
        self._zero_start = any(bool((p == 0).any()) for p in self.prev)

    def results(self) -> tuple[torch.Tensor | None, Any, list]:
        """(event_time, event_index, event_log) for the Solution: a batched condition reports
        every element's time (NaN where it did not fire) even when the span ended first."""
        if self.batch is not None:
            return self.batch_time, self.batch_index, self.log
        return self.terminal_time, self.terminal_index, self.log

    def start(self, t0: float, y0: torch.Tensor, k1: torch.Tensor) -> None:
        """A condition that is exactly zero at t0 takes the sign it leaves zero with."""
        if not self._zero_start:
            return
        self._zero_start = False
        with torch.no_grad():
            for i, e in enumerate(self.events):
                if bool((self.prev[i] == 0).any()):
                    self.prev[i] = torch.where(self.prev[i] == 0, self._gdot(e, t0, y0, k1), self.prev[i])

    # -- evaluation --------------------------------------------------------------------------

    def _g(self, event: Event, t: float | torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        like = y
        tt = t if isinstance(t, torch.Tensor) else torch.scalar_tensor(t, dtype=like.dtype, device=like.device)
        out = event.condition(tt.to(like.dtype), self.layout.unflatten(y))
        if not isinstance(out, torch.Tensor):
            if isinstance(out, (int, float)) and not isinstance(out, bool):
                out = torch.scalar_tensor(float(out), dtype=like.dtype, device=like.device)
            else:
                raise TypeError(
                    f"Event condition must return a scalar or a 1-D tensor; it returned {type(out).__name__}"
                )
        if out.dim() > 1 or not (out.is_floating_point()):
            raise ValueError(
                f"Event condition must return a real scalar or a 1-D tensor (one value per batch element); "
                f"it returned shape {tuple(out.shape)} of dtype {out.dtype}"
            )
        return out

    def _expander(self) -> Callable[[torch.Tensor], torch.Tensor]:
        B = self.batch
        for shape in self.layout.shapes:
            if len(shape) == 0 or shape[0] != B:
                raise ValueError(
                    f"Event: a batched condition returned {B} values, so every part of the state must have a leading "
                    f"(batch) dimension of {B}; the state has shape(s) {[tuple(s) for s in self.layout.shapes]}"
                )

        def expand(v: torch.Tensor) -> torch.Tensor:
            parts = [v.reshape((B,) + (1,) * (len(s) - 1)).expand(s).reshape(-1) for s in self.layout.shapes]
            return torch.cat(parts) if len(parts) > 1 else parts[0]

        return expand

    def _update_mask(self) -> None:
        if self.alive is not None and not bool(self.alive.all()):
            self.mask = self.expand(self.alive.to(self.layout.dtype))
        else:
            self.mask = None

    def wrap(self, f: Callable[[float, torch.Tensor], torch.Tensor]) -> Callable[[float, torch.Tensor], torch.Tensor]:
        """f with frozen batch elements held still."""

        def masked(t: float, y: torch.Tensor) -> torch.Tensor:
            out = f(t, y)
            return out if self.mask is None else out * self.mask

        masked.resolve_time = getattr(f, "resolve_time", None)
        return masked

    def _gdot(self, event: Event, t: float, y: torch.Tensor, ydot: torch.Tensor) -> torch.Tensor:
        """dg/dt along the solution: ∂g/∂t + ∂g/∂y·ẏ (a Jacobian-vector product), detached."""
        tt = torch.scalar_tensor(t, dtype=y.dtype, device=y.device)
        with torch.enable_grad():
            _, out = torch.autograd.functional.jvp(
                lambda a, b: self._g(event, a, b), (tt, y.detach()), (torch.ones_like(tt), ydot.detach())
            )
        return out.reshape(-1).detach()

    # -- location ----------------------------------------------------------------------------

    def _crossing(self, i: int, ga: torch.Tensor, gb: torch.Tensor) -> torch.Tensor:
        d = self.events[i].direction
        rising = (ga < 0) & (gb >= 0)
        falling = (ga > 0) & (gb <= 0)
        cross = rising if d == 1 else falling if d == -1 else rising | falling
        if self.batched[i]:
            cross = cross & self.alive
        return cross

    def locate(self, step: AcceptedStep) -> bool:
        """Find the earliest crossing in the step; shorten the step to it. True if any fired."""
        self.fired = []
        r = step.coefficients()
        t, h, y = step.t, step.h, step.state0
        with torch.no_grad():
            ends = [self._g(e, step.t_new, step.state1).reshape(-1).detach() for e in self.events]
            # The conditions at interior points too, so that a pair of crossings inside one step
            # (a rise and fall through a level) is not missed: SciML's interp_points.
            inner = interpolation.evaluate_at(y, r, list(_SAMPLES[1:-1]))
            samples = [
                torch.stack(
                    [self.prev[i]]
                    + [self._g(e, t + th * h, inner[k]).reshape(-1).detach() for k, th in enumerate(_SAMPLES[1:-1])]
                    + [ends[i]]
                )
                for i, e in enumerate(self.events)
            ]
            roots = []  # (θ, event, element)
            for i, g in enumerate(samples):
                for k in range(len(_SAMPLES) - 1):
                    cross = self._crossing(i, g[k], g[k + 1])
                    for j in cross.nonzero().flatten().tolist():
                        phi = self._phi(i, j, t, h, y, r)
                        a, b = _SAMPLES[k], _SAMPLES[k + 1]
                        roots.append((_illinois(phi, float(g[k, j]), float(g[k + 1, j]), a, b), i, j))
                    if bool(cross.any()):
                        break
            if not roots:
                self.prev = ends
                return False
        theta = min(root for root, _, _ in roots)
        tol = 4 * 2.2e-16 * max(1.0, abs(t) / abs(h) if h else 1.0)
        fired: dict[int, list[int]] = {}
        for root, i, j in roots:
            if root <= theta + tol:
                fired.setdefault(i, []).append(j)
        if theta < 1.0:
            step.truncate(theta, interpolation.evaluate_at(y, r, [theta])[0])
        self.fired = [(step.t_new, i, self._elements(i, js)) for i, js in sorted(fired.items())]
        if not self.stop_at_any:
            step.state1 = self.attach(step.t_new, step.state1, _derivative(step))
        return True

    def _elements(self, i: int, js: list[int]) -> torch.Tensor | None:
        if not self.batched[i]:
            return None
        mask = torch.zeros(self.batch, dtype=torch.bool, device=self.layout.device)
        mask[js] = True
        return mask

    def _phi(self, i: int, j: int, t: float, h: float, y: torch.Tensor, r: torch.Tensor) -> Callable[[float], float]:
        event = self.events[i]

        def phi(theta: float) -> float:
            state = interpolation.evaluate_at(y, r, [theta])[0]
            return float(self._g(event, t + theta * h, state).reshape(-1)[j])

        return phi

    # -- what happens at an event --------------------------------------------------------------

    def attach(self, t_star: float, y: torch.Tensor, ydot: torch.Tensor) -> torch.Tensor:
        """The state at the located events, carrying the event time's gradient (ydot: dy/dt there)."""
        ydot = ydot.detach()
        deltas = []
        for _, i, elements in self.fired:
            event = self.events[i]
            gdot = self._gdot(event, t_star, y, ydot)
            if self.grad:
                g = self._g(event, t_star, y).reshape(-1)
                safe = torch.where(gdot == 0, torch.ones_like(gdot), gdot)
                c = torch.where(gdot == 0, torch.zeros_like(g), -g / safe)
                delta = _FirstOrderShift.apply(c)  # zero in value; its gradient is dt*/dθ
            else:
                delta = torch.zeros_like(gdot)
            deltas.append((i, elements, delta))
        # The state at the event carries the event time's gradient (the first event's, if several
        # fire at once: they share the time).
        _, el0, d0 = deltas[0]
        shift = d0[0] if el0 is None else self.expand(torch.where(el0, d0, torch.zeros_like(d0)))
        self._pending = (deltas, shift, ydot)
        return y + ydot * shift if self.grad else y

    def fire(
        self, t_star: float, y: torch.Tensor, f: Callable[[float, torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, bool, torch.Tensor | None]:
        """Apply the located events at (t*, y) from `attach`: the state to continue from,
        whether the solve stops, and f there (None when it stops)."""
        deltas, shift, ydot = self._pending
        tt = torch.tensor(t_star, dtype=self.time_dtype, device=y.device)
        stop = False
        for i, elements, delta in deltas:
            event = self.events[i]
            if elements is None:
                time = tt + delta[0].to(self.time_dtype)
                self.log.append((time, i))
                if event.terminal:
                    stop = True
                    self.terminal_time, self.terminal_index = time, i
                continue
            times = tt + delta.to(self.time_dtype)
            self.batch_time = torch.where(elements, times, self.batch_time)
            self.batch_index = torch.where(elements, torch.full_like(self.batch_index, i), self.batch_index)
            self.log.append((times, i))
            self.alive = self.alive & ~elements
        self._update_mask()
        affected = False
        if not stop:
            for i, _, delta in deltas:
                event = self.events[i]
                if event.affect is not None:
                    time = tt.to(y.dtype) + delta[0]
                    y = self.layout.flatten(event.affect(time, self.layout.unflatten(y)))
                    affected = True
        if self.alive is not None and not bool(self.alive.any()):
            stop = True
            self.terminal_time, self.terminal_index = self.batch_time, self.batch_index
        if stop:
            return y, True, None
        k1 = f(t_star, y)
        if affected and self.grad:
            y = y - k1.detach() * shift  # what follows starts at t*, which moves with θ
            k1 = f(t_star, y)
        with torch.no_grad():
            self.prev = [self._g(e, t_star, y).reshape(-1).detach() for e in self.events]
            direction = ydot if not affected else k1.detach()
            for i, elements, _ in deltas:
                # Just after the event g leaves zero with the sign of dg/dt: read it there, so the
                # event just handled is not found again at the start of the next step.
                gdot = self._gdot(self.events[i], t_star, y, direction)
                self.prev[i] = gdot if elements is None else torch.where(elements, gdot, self.prev[i])
        return y, False, k1


class _FirstOrderShift(torch.autograd.Function):
    """δ = c − c.detach(): zero in value, with c's gradient, the event time's first derivative.
    Its second derivative is not the event time's (the step holds dg/dt fixed; the exact root's
    curvature is missing), so differentiating it again raises instead of returning a wrong number."""

    @staticmethod
    def forward(ctx, c: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(c)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            raise RuntimeError(
                "events: gradients through an event time are first derivatives only (implicit function theorem "
                "with dg/dt held fixed); create_graph=True, double backward and Hessians through a solve with "
                "events are not supported"
            )
        return grad


def _derivative(step: AcceptedStep) -> torch.Tensor:
    """dy/dt at the end of a step, from its interpolant."""
    r = step.coefficients()
    powers = torch.arange(1, r.shape[0] + 1, dtype=r.dtype, device=r.device)
    return (powers.unsqueeze(-1) * r).sum(0) / step.h


def _illinois(phi: Callable[[float], float], ga: float, gb: float, a: float = 0.0, b: float = 1.0) -> float:
    """The root of phi on [a, b] given phi(a) = ga and phi(b) = gb of opposite signs (or gb = 0):
    regula falsi with the Illinois modification, to the rounding of θ. Returns the end of the
    final bracket on the crossed side, so the state there has crossed."""
    if gb == 0:
        return b
    side = 0
    for _ in range(_MAX_ITERATIONS):
        if b - a <= 4 * 2.2e-16 * max(1.0, b):
            break
        c = (a * gb - b * ga) / (gb - ga)
        if not a < c < b:
            c = 0.5 * (a + b)
        gc = phi(c)
        if gc == 0:
            return c
        if (gc > 0) == (gb > 0):
            b, gb = c, gc
            if side == -1:
                ga /= 2
            side = -1
        else:
            a, ga = c, gc
            if side == 1:
                gb /= 2
            side = 1
    return b
