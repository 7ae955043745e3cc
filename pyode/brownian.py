"""Brownian motion for neural SDEs: sample paths that answer any query the same way, in bounded memory.

An SDE solver asks for increments W(t) - W(s) of a Brownian motion W, and often asks again for the same
interval (a rejected adaptive step, the backward pass of an adjoint method). So a path here is a
deterministic function of a seed: the same query always returns the same value, and the values at
all the times queried are jointly those of one Brownian path. Two classes keep it so in bounded memory:

- `VirtualBrownianTree` (Gaines & Lyons 1997; Li, Wong, Chen & Duvenaud 2020): the values at the
  dyadic points of [t0, t1] are fixed by the seed; a query descends the dyadic tree to a leaf shorter
  than `tol` and samples a Brownian bridge inside it. Any query order, any times, constant memory and
  no state that grows with use. Exact in law for times in different leaves; within one leaf the path is
  a smooth-in-t interpolant, so values are approximate there (errors O(√tol)). Each query costs
  O(log₂((t1 - t0)/tol)) bridge samples once the cache no longer holds its path.
- `BrownianInterval` (Kidger, Foster, Li & Lyons 2021): a binary tree of intervals split exactly at
  the queried times as queries arrive, with tensor values in an LRU cache and recomputed from the
  parent and the seed when evicted. Exact at every queried time (no tolerance) and fastest for the
  sequential queries of a fixed- or adaptive-step solver, forward or backward. The tree itself (small
  Python objects, no tensors) grows with the number of distinct query times.

Pick `BrownianInterval` for solves (the default of `pyode.solve`); pick `VirtualBrownianTree` when
queries come in no particular order over a long time (e.g. many unrelated solves sharing one path)
or when memory must not grow at all.

Both can also return the space-time Lévy area of the path over [s, t], h = t - s,

    H_{s,t} = (1/h) ∫_s^t (W_r - W_s - (r - s)/h · (W_t - W_s)) dr  ~  N(0, h/12), independent of W_t - W_s,

which higher-order SDE methods read (Foster, Lyons & Oberhauser 2020). Internally each node keeps, for
its interval [a, b], the pair (W_b - W_a, ∫_a^b (W_r - W_a) dr): the integrated Brownian motion
(W, ∫W) is a Gaussian Markov process, so the value at an interior time given both ends is a Gaussian
bridge with a closed-form 2×2 mean map and covariance. Values relative to each interval's left end
never subtract large, nearly equal numbers, so H keeps its digits in float32 even for a short step
late in a long interval.

`as_brownian` turns any callable `bm(s, t) -> W(t) - W(s)` (e.g. a `torchsde.BrownianInterval`) into
an `AbstractBrownian`.

References:
    Gaines & Lyons (1997), Variable step size control in the numerical solution of stochastic
    differential equations, SIAM J. Appl. Math. 57(5), 1455–1484.
    Li, Wong, Chen & Duvenaud (2020), Scalable gradients for stochastic differential equations, AISTATS.
    Foster, Lyons & Oberhauser (2020), An optimal polynomial approximation of Brownian motion,
    SIAM J. Numer. Anal. 58(3), 1393–1421.
    Kidger, Foster, Li & Lyons (2021), Efficient and accurate gradients for neural SDEs, NeurIPS.
    Steele, Lea & Flood (2014), Fast splittable pseudorandom number generators, OOPSLA (splitmix64).
"""

from __future__ import annotations

import abc
import contextlib
import math
import numbers
import operator
import threading
from collections import OrderedDict
from typing import Any, Callable, NamedTuple, Sequence, Union

import torch

Time = Union[float, torch.Tensor]

__all__ = ["AbstractBrownian", "BrownianIncrement", "BrownianInterval", "VirtualBrownianTree", "as_brownian"]


class BrownianIncrement(NamedTuple):
    """A Brownian increment over [s, t] and its space-time Lévy area, both of the motion's `shape`."""

    dW: torch.Tensor  # W(t) - W(s)
    H: torch.Tensor  # H over the interval between s and t (unchanged when s > t)


class AbstractBrownian(abc.ABC):
    """A Brownian motion W on [t0, t1] with values of shape `shape`; the same query always returns the same value.

    Subclasses implement `_increment` for t0 ≤ s ≤ t ≤ t1; this base checks the times, reverses
    queries with s > t and refuses `increment` without Lévy area.
    """

    t0: float | None
    t1: float | None
    shape: tuple[int, ...] | None
    dtype: torch.dtype | None
    device: torch.device | None
    levy_area: bool  # whether `increment` can return H
    # Queries share a cache and a generator reseeded per draw: one thread at a time (a solve in
    # each of several threads on one path is safe, and reads the same values as in one thread).
    # A subclass without shared state needs no lock.
    _lock: Any = contextlib.nullcontext()

    def __call__(self, s: Time, t: Time) -> torch.Tensor:
        """W(t) - W(s), of shape `shape`; s > t is allowed and gives minus the increment over [t, s]."""
        s, t = self._time(s, "s"), self._time(t, "t")
        with self._lock:
            if s <= t:
                return self._increment(s, t, False)[0]
            return -self._increment(t, s, False)[0]

    def increment(self, s: Time, t: Time) -> BrownianIncrement:
        """(W(t) - W(s), H over the interval between s and t), each of shape `shape`.

        Raises:
            ValueError: if the motion was built with `levy_area=False`.
        """
        if not self.levy_area:
            raise ValueError(
                f"{type(self).__name__} was built with levy_area=False, so it has no space-time Lévy area: build it "
                "with levy_area=True, or call it as bm(s, t) for W(t) - W(s) alone"
            )
        s, t = self._time(s, "s"), self._time(t, "t")
        # Time reversal leaves H unchanged. With h = t - s, the bridge B_r = W_r - ((t - r)·W_s + (r - s)·W_t)/h
        # is the integrand of H and is symmetric in (s, t): it is W minus the chord through (s, W_s) and (t, W_t).
        # So H_{t,s} = (1/(s - t)) ∫_t^s B_r dr = (1/(t - s)) ∫_s^t B_r dr = H_{s,t}: both the prefactor and the
        # integral change sign. Hence increment(s, t) for s > t is (-ΔW over [t, s], H over [t, s]).
        with self._lock:
            if s <= t:
                dW, H = self._increment(s, t, True)
                return BrownianIncrement(dW, H)
            dW, H = self._increment(t, s, True)
        return BrownianIncrement(-dW, H)

    def evaluate(self, t: Time) -> torch.Tensor:
        """W(t) - W(t0), of shape `shape`."""
        if self.t0 is None:
            raise ValueError(f"evaluate needs the start time t0 of {self!r}; pass t0= to as_brownian")
        return self(self.t0, t)

    @abc.abstractmethod
    def _increment(self, s: float, t: float, levy_area: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(W(t) - W(s), H or None) for t0 ≤ s ≤ t ≤ t1, as new tensors the caller may modify."""

    def _time(self, t: Any, name: str) -> float:
        """A query time as a float inside [t0, t1], allowing a few ulps (of the time's own dtype) of slack."""
        if isinstance(t, torch.Tensor):
            if t.dim() != 0:
                raise ValueError(f"{name} must be a float or a 0-d tensor; got a tensor of shape {tuple(t.shape)}")
            eps = torch.finfo(t.dtype).eps if t.is_floating_point() else _EPS64
            value = float(t)
        elif isinstance(t, numbers.Real) and not isinstance(t, bool):
            eps, value = _EPS64, float(t)
        else:
            raise TypeError(f"{name} must be a float or a 0-d tensor; got {type(t).__name__}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite; got {name}={value}")
        t0, t1 = self.t0, self.t1
        if t0 is None or t1 is None or t0 <= value <= t1:
            return value
        slack = 8 * eps * max(abs(t0), abs(t1), t1 - t0)
        if t0 - slack <= value < t0:
            return t0
        if t1 < value <= t1 + slack:
            return t1
        raise ValueError(f"{name}={value!r} lies outside the Brownian motion's interval [t0, t1] = [{t0!r}, {t1!r}]")


class VirtualBrownianTree(AbstractBrownian):
    """Brownian motion on [t0, t1] as a virtual dyadic tree: random access, constant memory, exact to `tol`.

    W(t0) = 0 and W(t1) ~ N(0, t1 - t0) come from the seed; the value at each dyadic midpoint is a
    Brownian bridge sample given its interval's ends, from a seed hashed from (seed, level, index).
    A query descends to the leaf (a dyadic interval no longer than `tol`) containing the time and samples
    the bridge there with the leaf's normals, so the same time always gives the same value.
    Increments between times in different leaves are exactly Brownian; two times in one leaf see a
    smooth interpolant instead (an error of order √tol). Refining `tol` keeps every dyadic value
    above the old leaves and changes values in between by O(√tol).

    Reference: Gaines & Lyons (1997); Li, Wong, Chen & Duvenaud (2020) (the virtual Brownian tree).

    Args:
        t0, t1: the interval, t0 < t1.
        shape: the shape of W, e.g. (batch, noise_channels).
        tol: the longest leaf, absolute, in time units; defaults to (t1 - t0)·2⁻²⁰. Increments over
            steps longer than tol are exact in law; a sequential step of length h costs about
            log₂(h/tol) + 3 new bridge samples (13 for 1000 steps with the default).
        seed: any int (only its value mod 2⁶⁴ matters); None draws one from torch's global generator,
            so `torch.manual_seed` fixes it.
        dtype: of the values; defaults to `torch.get_default_dtype()`.
        device: where values are sampled and returned; defaults to torch's default device.
        levy_area: whether `increment` returns the space-time Lévy area (costs about twice as much).
            A path with Lévy area differs from the one without for the same seed.
        cache_size: how many node values (one tensor each) to keep; sequential queries run without
            recomputation when it is at least about 4·log₂((t1 - t0)/tol) (80 with the default tol).
    """

    def __init__(
        self,
        t0: Time,
        t1: Time,
        shape: Union[int, Sequence[int]],
        tol: float | None = None,
        seed: int | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: Union[str, torch.device, None] = None,
        levy_area: bool = False,
        cache_size: int = 128,
    ):
        _setup(self, t0, t1, shape, seed, dtype, device, levy_area, cache_size)
        span = self.t1 - self.t0
        if tol is None:
            tol = span * 2.0**-20
        elif isinstance(tol, bool) or not isinstance(tol, numbers.Real):
            raise TypeError(f"tol must be a positive float (a time); got {tol!r}")
        elif not math.isfinite(tol) or tol <= 0:
            raise ValueError(f"tol must be a positive finite float (a time); got {tol!r}")
        if tol < span * 2.0**-52:
            raise ValueError(
                f"tol={tol!r} is below the float64 resolution of [t0, t1] (leaves 2⁻⁵² of t1 - t0); use tol ≥ "
                f"{span * 2.0**-52!r}"
            )
        self.tol = float(tol)
        depth = 0
        while span * 2.0**-depth > self.tol:
            depth += 1
        self._depth = depth  # leaves are the nodes at this level, each no longer than tol
        lengths = [span * 2.0**-level for level in range(depth + 1)]
        self._midpoint = [_left_bridge(h, 0.5, self.levy_area) for h in lengths]
        self._level_seeds = [_mix(self._seed ^ _mix(level)) for level in range(depth + 1)]

    def __repr__(self) -> str:
        return (
            f"VirtualBrownianTree(t0={self.t0!r}, t1={self.t1!r}, shape={self.shape}, tol={self.tol!r}, "
            f"dtype={self.dtype}, device={self.device}, levy_area={self.levy_area})"
        )

    def _cached(self) -> int:
        """How many tensors the cache holds (at most `cache_size`)."""
        return len(self._cache)

    def _point(self, level: int, k: int) -> float:
        if k == 0:
            return self.t0
        if k == 1 << level:
            return self.t1
        return self.t0 + (self.t1 - self.t0) * math.ldexp(k, -level)

    def _root(self) -> torch.Tensor:
        x = self._cache.get((0, 0))
        if x is None:
            x = _root_values(self, _mix(self._seed ^ 0x5DEECE66D))
            _put(self, (0, 0), x)
        else:
            self._cache.move_to_end((0, 0))
        return x

    def _children(self, level: int, k: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cache, left, right = self._cache, (level + 1, 2 * k), (level + 1, 2 * k + 1)
        xl, xr = cache.get(left), cache.get(right)
        if xl is None or xr is None:
            z = _normals(self, _mix(self._level_seeds[level] ^ k))
            xl = _sample(x, self._midpoint[level], z, self.levy_area)
            xr = _rest(x, xl, (self.t1 - self.t0) * 2.0 ** -(level + 1), self.levy_area, sampled_left=True)
            _put(self, left, xl)
            _put(self, right, xr)
        else:
            cache.move_to_end(left)
            cache.move_to_end(right)
        return xl, xr

    def _leaf_prefix(self, level: int, k: int, x: torch.Tensor, a: float, b: float, p: float) -> torch.Tensor:
        # One set of normals per leaf for every p: the value at p is a fixed function of p (so repeated
        # queries agree), and at the leaf's midpoint it equals what a tree with tol/2 samples there.
        z = _normals(self, _mix(self._level_seeds[level] ^ k))
        return _sample(x, _left_bridge(b - a, (p - a) / (b - a), self.levy_area), z, self.levy_area)

    def _increment(self, s: float, t: float, levy_area: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        if s == t:
            return _zeros(self, levy_area)
        x = self._state(s, t)
        return _outputs(x, t - s, levy_area)

    def _state(self, s: float, t: float) -> torch.Tensor:
        """The node state over [s, t]: descend while one child holds both, then join a suffix and a prefix."""
        level, k, x, a, b = 0, 0, self._root(), self.t0, self.t1
        levy = self.levy_area
        while True:
            if s == a and t == b:
                return x
            if level == self._depth:
                xt = x if t == b else self._leaf_prefix(level, k, x, a, b, t)
                if s == a:
                    return xt
                xs = self._leaf_prefix(level, k, x, a, b, s)
                out = xt - xs
                if levy:  # ∫_s^t (W_r - W_s) dr = K(t) - K(s) - (t - s)(W_s - W_a), K(p) = ∫_a^p (W_r - W_a) dr
                    out[1].sub_(xs[0], alpha=t - s)
                return out
            m = self._point(level + 1, 2 * k + 1)
            xl, xr = self._children(level, k, x)
            if t <= m:
                level, k, x, b = level + 1, 2 * k, xl, m
            elif s >= m:
                level, k, x, a = level + 1, 2 * k + 1, xr, m
            else:
                left = self._suffix(level + 1, 2 * k, xl, a, m, s)
                right = self._prefix(level + 1, 2 * k + 1, xr, m, b, t)
                return _join(left, right, t - m, levy)

    def _prefix(self, level: int, k: int, x: torch.Tensor, a: float, b: float, t: float) -> torch.Tensor:
        """The state over [a, t] for the node (level, k) = [a, b] with state x, a < t ≤ b."""
        levy, acc = self.levy_area, None  # acc: the state over [a0, a], pieces already passed on the left
        while t != b:
            if level == self._depth:
                x = self._leaf_prefix(level, k, x, a, b, t)
                break
            m = self._point(level + 1, 2 * k + 1)
            xl, xr = self._children(level, k, x)
            if t <= m:
                level, k, x, b = level + 1, 2 * k, xl, m
            else:
                acc = xl if acc is None else _join(acc, xl, m - a, levy)
                level, k, x, a = level + 1, 2 * k + 1, xr, m
        return x if acc is None else _join(acc, x, t - a, levy)

    def _suffix(self, level: int, k: int, x: torch.Tensor, a: float, b: float, s: float) -> torch.Tensor:
        """The state over [s, b] for the node (level, k) = [a, b] with state x, a ≤ s < b."""
        levy, acc, end = self.levy_area, None, b  # acc: the state over [b, end], pieces already passed on the right
        while s != a:
            if level == self._depth:
                x = _rest(x, self._leaf_prefix(level, k, x, a, b, s), b - s, levy, sampled_left=True)
                break
            m = self._point(level + 1, 2 * k + 1)
            xl, xr = self._children(level, k, x)
            if s >= m:
                level, k, x, a = level + 1, 2 * k + 1, xr, m
            else:
                acc = xr if acc is None else _join(xr, acc, end - b, levy)
                level, k, x, b = level + 1, 2 * k, xl, m
        return x if acc is None else _join(x, acc, end - b, levy)


class _Interval:
    """A node of `BrownianInterval`'s tree: [start, end], the seed of its split, its parent and children."""

    __slots__ = ("end", "left", "parent", "right", "seed", "start")

    def __init__(self, start: float, end: float, seed: int, parent: _Interval | None):
        self.start, self.end, self.seed, self.parent = start, end, seed, parent
        self.left: _Interval | None = None
        self.right: _Interval | None = None


class BrownianInterval(AbstractBrownian):
    """Brownian motion on [t0, t1], exact at the queried times, fastest for a solver's sequential queries.

    A tree of intervals is split at the query times as queries arrive (long intervals first at their
    midpoints, so the tree stays balanced: depth O(log((t1 - t0)/step))). Each split samples the
    shorter child as a Brownian bridge given its parent, from the parent's seed. Values live in an
    LRU cache of `cache_size` tensors; an evicted value is recomputed from its nearest cached ancestor.
    A search starts at the last interval used, so sequential queries bm(t, t + h), bm(t + h, t + 2h),
    ... (and the same backward) touch O(1) nodes each.

    The same query on one object always returns the same value, and the same seed with the same
    sequence of queries gives the same values. But where the tree is split depends on the order of the
    queries, so two objects with one seed asked in different orders give different (equally valid) paths.

    Reference: Kidger, Foster, Li & Lyons (2021) (the Brownian Interval).

    Args:
        t0, t1: the interval, t0 < t1.
        shape: the shape of W, e.g. (batch, noise_channels).
        seed: any int (only its value mod 2⁶⁴ matters); None draws one from torch's global generator,
            so `torch.manual_seed` fixes it.
        dtype: of the values; defaults to `torch.get_default_dtype()`.
        device: where values are sampled and returned; defaults to torch's default device.
        levy_area: whether `increment` returns the space-time Lévy area (costs about twice as much).
            A path with Lévy area differs from the one without for the same seed.
        cache_size: how many interval values (one tensor each) to keep.
    """

    def __init__(
        self,
        t0: Time,
        t1: Time,
        shape: Union[int, Sequence[int]],
        seed: int | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: Union[str, torch.device, None] = None,
        levy_area: bool = False,
        cache_size: int = 64,
    ):
        _setup(self, t0, t1, shape, seed, dtype, device, levy_area, cache_size)
        self._tree = _Interval(self.t0, self.t1, _mix(self._seed ^ 0x2545F4914F6CDD1D), None)
        self._last = self._tree

    def __repr__(self) -> str:
        return (
            f"BrownianInterval(t0={self.t0!r}, t1={self.t1!r}, shape={self.shape}, dtype={self.dtype}, "
            f"device={self.device}, levy_area={self.levy_area})"
        )

    def _cached(self) -> int:
        """How many tensors the cache holds (at most `cache_size`)."""
        return len(self._cache)

    def _increment(self, s: float, t: float, levy_area: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        if s == t:
            return _zeros(self, levy_area)
        node = self._last
        while not (node.start <= s and t <= node.end):
            node = node.parent
        pieces = self._cover(node, s, t)
        self._last = pieces[-1]
        x = self._values(pieces[0])
        for piece in pieces[1:]:
            x = _join(x, self._values(piece), piece.end - piece.start, self.levy_area)
        return _outputs(x, t - s, levy_area)

    def _cover(self, node: _Interval, s: float, t: float) -> list[_Interval]:
        """The intervals, left to right, that tile [s, t] inside `node`, splitting leaves as needed."""
        pieces, todo = [], [(node, s, t)]
        while todo:
            node, s, t = todo.pop()
            if node.start == s and node.end == t:
                pieces.append(node)
                continue
            if node.left is None:
                self._split(node, s if s > node.start else t)
            m = node.left.end
            if t <= m:
                todo.append((node.left, s, t))
            elif s >= m:
                todo.append((node.right, s, t))
            else:
                todo.append((node.right, m, t))
                todo.append((node.left, s, m))
        return pieces

    def _split(self, node: _Interval, p: float) -> None:
        # Split at p unless it lies within 1/8 of an end; then at the midpoint (and again below). Every
        # child is at most 7/8 of its parent, so the depth stays logarithmic whatever the order of the
        # queries, and a recomputation walks up few nodes. (1/4 keeps the tree shallower but splits
        # about 1.5x as often for sequential steps; 1/16 saves another 20% of the splits but doubles the depth.)
        a, b = node.start, node.end
        m = p
        if min(p - a, b - p) < 0.125 * (b - a):
            mid = a + 0.5 * (b - a)
            if a < mid < b:
                m = mid
        node.left = _Interval(a, m, _mix(node.seed ^ 1), node)
        node.right = _Interval(m, b, _mix(node.seed ^ 2), node)

    def _values(self, node: _Interval) -> torch.Tensor:
        """The state of `node`, from the cache or recomputed down from its nearest cached ancestor."""
        cache, path = self._cache, []
        while True:
            x = cache.get(node)
            if x is not None:
                cache.move_to_end(node)
                break
            if node.parent is None:
                x = _root_values(self, _mix(self._seed ^ 0x5DEECE66D))
                _put(self, node, x)
                break
            path.append(node)
            node = node.parent
        levy = self.levy_area
        for child in reversed(path):
            parent = child.parent
            a, m, b = parent.start, parent.left.end, parent.end
            u = (m - a) / (b - a)
            z = _normals(self, parent.seed)
            # The shorter child is sampled, the longer one derived: the derivation subtracts, and
            # cancellation there costs digits in proportion to (parent length / derived length).
            if u <= 0.5:
                xl = _sample(x, _left_bridge(b - a, u, levy), z, levy)
                xr = _rest(x, xl, b - m, levy, sampled_left=True)
            else:
                xr = _sample(x, _right_bridge(b - a, u, levy), z, levy)
                xl = _rest(x, xr, b - m, levy, sampled_left=False)
            _put(self, parent.left, xl)
            _put(self, parent.right, xr)
            x = xl if child is parent.left else xr
        return x


class _CallableBrownian(AbstractBrownian):
    """Any callable bm(s, t) -> W(t) - W(s) for s ≤ t, as an `AbstractBrownian` (no Lévy area)."""

    def __init__(self, bm: Callable, t0: Any, t1: Any, shape: Any, dtype: Any, device: Any):
        self._bm = bm
        self._lock = threading.RLock()
        self.t0 = None if t0 is None else float(t0)
        self.t1 = None if t1 is None else float(t1)
        self.shape = None if shape is None else tuple(int(n) for n in shape)
        self.dtype = dtype
        self.device = None if device is None else torch.device(device)
        self.levy_area = False

    def __repr__(self) -> str:
        return f"as_brownian({self._bm!r})"

    def _increment(self, s: float, t: float, levy_area: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._bm(s, t), None


def as_brownian(
    bm: Any,
    *,
    t0: float | None = None,
    t1: float | None = None,
    shape: Sequence[int] | None = None,
    dtype: torch.dtype | None = None,
    device: Union[str, torch.device, None] = None,
) -> AbstractBrownian:
    """`bm` as an `AbstractBrownian`: returned as is if it is one, else wrapped.

    The wrapper calls `bm(s, t)` for s ≤ t and returns `-bm(t, s)` for s > t (torchsde's Brownian
    objects require s ≤ t). It has no Lévy area. Its t0, t1, shape, dtype and device are the keyword
    arguments given, else read from `bm` (`t0`/`t1` or torchsde's `_start`/`_end`; `shape`, `dtype`,
    `device`), else None (then times are not range-checked and `evaluate` needs t0).

    Raises:
        TypeError: if `bm` is not callable.
    """
    if isinstance(bm, AbstractBrownian):
        return bm
    if not callable(bm):
        raise TypeError(
            f"bm must be an AbstractBrownian or a callable bm(s, t) returning W(t) - W(s); got {type(bm).__name__}"
        )

    def read(given: Any, *names: str) -> Any:
        for name in names:
            if given is None:
                given = getattr(bm, name, None)
        return given

    return _CallableBrownian(
        bm,
        read(t0, "t0", "_start"),
        read(t1, "t1", "_end"),
        read(shape, "shape"),
        read(dtype, "dtype"),
        read(device, "device"),
    )


# ---- helpers shared by the two trees ----------------------------------------------------------------
#
# A node's state for an interval [a, b] is one tensor x of shape (k, *shape): x[0] = W_b - W_a and, with
# Lévy area (k = 2), x[1] = ∫_a^b (W_r - W_a) dr = (b - a)·(x[0]/2 + H_{a,b}). Without it, k = 1.

_MASK64 = (1 << 64) - 1
_EPS64 = 2.0**-52


def _mix(x: int) -> int:
    """splitmix64's output function (Steele, Lea & Flood 2014): a 64-bit bijection that scrambles every bit."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _setup(
    bm: AbstractBrownian,
    t0: Any,
    t1: Any,
    shape: Any,
    seed: Any,
    dtype: Any,
    device: Any,
    levy_area: Any,
    cache_size: Any,
) -> None:
    """Check and store the constructor arguments the two trees share."""
    times = []
    for name, t in (("t0", t0), ("t1", t1)):
        if isinstance(t, torch.Tensor) and t.dim() == 0:
            t = float(t)
        if isinstance(t, bool) or not isinstance(t, numbers.Real):
            raise TypeError(f"{name} must be a float or a 0-d tensor; got {t!r}")
        if not math.isfinite(t):
            raise ValueError(f"{name} must be finite; got {t!r}")
        times.append(float(t))
    if not times[0] < times[1]:
        raise ValueError(f"t1 must be greater than t0; got t0={times[0]!r}, t1={times[1]!r}")
    bm.t0, bm.t1 = times
    bm.shape = _check_shape(shape)
    if dtype is None:
        dtype = torch.get_default_dtype()
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype such as torch.float32; got {dtype!r}")
    bm.dtype = dtype
    try:
        # As the tensors will report it: 'cuda' becomes 'cuda:0' (the current device), so comparisons hold.
        bm.device = torch.empty(0, device=torch.get_default_device() if device is None else device).device
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be a torch.device or a string such as 'cuda:0'; got {device!r}") from e
    if not isinstance(levy_area, bool):
        raise TypeError(f"levy_area must be True or False; got {levy_area!r}")
    bm.levy_area = levy_area
    if isinstance(cache_size, bool) or not isinstance(cache_size, numbers.Integral):
        raise TypeError(f"cache_size must be an int ≥ 1; got {cache_size!r}")
    if cache_size < 1:
        raise ValueError(f"cache_size must be an int ≥ 1; got {cache_size!r}")
    bm._cache_size = int(cache_size)
    bm._cache = OrderedDict()
    bm._lock = threading.RLock()
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()).item())
    elif isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int or None; got {seed!r}")
    bm._seed = _mix(int(seed) & _MASK64)
    bm._generator = torch.Generator(device=bm.device)
    bm._k = 2 if levy_area else 1


def _check_shape(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, Sequence) or isinstance(shape, str):
        raise TypeError(f"shape must be a tuple of non-negative ints such as (batch, noise_channels); got {shape!r}")
    out = []
    for n in shape:
        if isinstance(n, bool):
            raise TypeError(f"shape must be a tuple of non-negative ints; got {shape!r}")
        try:
            n = operator.index(n)
        except TypeError:
            raise TypeError(f"shape must be a tuple of non-negative ints; got {shape!r}") from None
        if n < 0:
            raise ValueError(f"shape must be a tuple of non-negative ints; got {shape!r}")
        out.append(n)
    return tuple(out)


def _put(bm: Any, key: Any, x: torch.Tensor) -> None:
    cache = bm._cache
    cache[key] = x
    cache.move_to_end(key)
    if len(cache) > bm._cache_size:
        cache.popitem(last=False)


def _normals(bm: Any, seed: int) -> torch.Tensor:
    """Standard normals of shape (k, *shape), a function of `seed` alone.

    torch's CPU generator (mt19937) reads only the low 32 bits of a seed, so among n distinct nodes
    some two share their normals with probability about n²/2³³; CUDA's Philox reads all 64 bits.
    """
    bm._generator.manual_seed(seed)
    return torch.randn((bm._k, *bm.shape), generator=bm._generator, dtype=bm.dtype, device=bm.device)


def _root_values(bm: Any, seed: int) -> torch.Tensor:
    h = bm.t1 - bm.t0
    z = _normals(bm, seed)
    x = z * math.sqrt(h)
    if bm._k == 2:  # ∫ = h·(W/2 + H), H = √(h/12)·z₂ independent of W
        x[1].mul_(h / math.sqrt(12)).add_(x[0], alpha=h / 2)
    return x


def _zeros(bm: Any, levy_area: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    dW = torch.zeros(bm.shape, dtype=bm.dtype, device=bm.device)
    return dW, (torch.zeros_like(dW) if levy_area else None)


def _outputs(x: torch.Tensor, h: float, levy_area: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(ΔW, H) from a state over an interval of length h, as new tensors (x may be a cached value)."""
    dW = x[0].clone()
    if not levy_area:
        return dW, None
    H = x[1] * (1 / h)
    return dW, H.sub_(dW, alpha=0.5)


def _join(x: torch.Tensor, y: torch.Tensor, length_y: float, levy: bool) -> torch.Tensor:
    """The state over [a, c] from x over [a, b] and y over [b, c]: ∫_a^c = ∫_a^b + ∫_b^c + (c - b)·(W_b - W_a)."""
    out = x + y
    if levy:
        out[1].add_(x[0], alpha=length_y)
    return out


def _rest(x: torch.Tensor, y: torch.Tensor, length_right: float, levy: bool, *, sampled_left: bool) -> torch.Tensor:
    """The other child of an interval with state x, given one child's state y; inverts `_join`."""
    out = x - y
    if levy:
        left_w = y[0] if sampled_left else out[0]
        out[1].sub_(left_w, alpha=length_right)
    return out


class _Coefficients(NamedTuple):
    """A child's state as A·(parent state) + B·z for standard normals z; rows (W, ∫W)."""

    a00: float
    a01: float
    a10: float
    a11: float
    b00: float
    b01: float
    b10: float
    b11: float


def _left_bridge(h: float, u: float, levy: bool) -> _Coefficients:
    """The left child [a, a + u·h] of an interval of length h, given the interval's state.

    Conditioning (w_l, H_l) on (w, H) for Gaussians with Var w = h, Var H = h/12, v = 1 - u:
        E[w_l] = u·w + 6uv·H,           E[H_l] = u²·H,
        Var w_l = h·uv(1 - 3uv),        Cov(w_l, H_l) = -h·u³v/2,       Var H_l = h·u(1 - u³)/12,
    from H = (v·w_l - u·w_r)/2 + u·H_l + v·H_r. The Cholesky factor is closed form (the determinant
    is h²u²v⁴/12), so nothing cancels as u → 0 or 1. Then ∫_a^{a+uh} (W_r - W_a) dr = uh·(w_l/2 + H_l)
    with H = ∫/h - w/2 gives the rows below. Without Lévy area: the Brownian bridge u·w + √(h·uv)·z.
    """
    v = 1.0 - u
    if not levy:
        return _Coefficients(u, 0.0, 0.0, 0.0, math.sqrt(max(h * u * v, 0.0)), 0.0, 0.0, 0.0)
    u = min(max(u, 0.0), 1.0)
    v = 1.0 - u
    r = 1.0 - 3.0 * u * v  # in [1/4, 1]
    l11 = math.sqrt(h * u * v * r)
    l21 = -0.5 * math.sqrt(h * v / r) * u**2.5
    l22 = math.sqrt(h * u * v**3 / (12.0 * r))
    tau = u * h
    return _Coefficients(
        a00=u * (1.0 - 3.0 * v),
        a01=6.0 * u * v / h,
        a10=-tau * u * v,
        a11=u * u * (u + 3.0 * v),
        b00=l11,
        b01=0.0,
        b10=tau * (0.5 * l11 + l21),
        b11=tau * l22,
    )


def _right_bridge(h: float, u: float, levy: bool) -> _Coefficients:
    """The right child [a + u·h, b] of an interval of length h, given the interval's state.

    Reversing time maps (w, ∫) over [a, b] to (-w, ∫ - h·w) and the right child of length σ = (1 - u)·h
    to a left child; map that child back with w_r = -w', ∫_r = ∫' - σ·w'.
    """
    sigma = (1.0 - u) * h
    c = _left_bridge(h, 1.0 - u, levy)
    if not levy:
        return _Coefficients(c.a00, 0.0, 0.0, 0.0, c.b00, 0.0, 0.0, 0.0)
    # The reversed child as a function of the original state: w' = (-a00 - h·a01)·w + a01·∫ + ...
    w_w, w_i = -c.a00 - h * c.a01, c.a01
    i_w, i_i = -c.a10 - h * c.a11, c.a11
    return _Coefficients(
        a00=-w_w,
        a01=-w_i,
        a10=i_w - sigma * w_w,
        a11=i_i - sigma * w_i,
        b00=-c.b00,
        b01=-c.b01,
        b10=c.b10 - sigma * c.b00,
        b11=c.b11 - sigma * c.b01,
    )


def _sample(x: torch.Tensor, c: _Coefficients, z: torch.Tensor, levy: bool) -> torch.Tensor:
    """A·x + B·z, with Python-float coefficients (no small tensors to move to the device)."""
    out = torch.mul(z, c.b00) if not levy else torch.empty_like(x)
    if not levy:
        return out.add_(x, alpha=c.a00)
    w, i, o0, o1 = x[0], x[1], out[0], out[1]
    torch.mul(z[0], c.b00, out=o0)
    if c.b01:
        o0.add_(z[1], alpha=c.b01)
    o0.add_(w, alpha=c.a00).add_(i, alpha=c.a01)
    torch.mul(z[1], c.b11, out=o1)
    o1.add_(z[0], alpha=c.b10).add_(w, alpha=c.a10).add_(i, alpha=c.a11)
    return out
