"""The problem a user states and the solution they get back."""

from __future__ import annotations

import enum
import math
import numbers
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence, Union

import torch

if TYPE_CHECKING:
    from .interpolation import DenseOutput

State = Union[torch.Tensor, tuple]
TimeLike = Union[float, int, torch.Tensor]


class ReturnCode(enum.Enum):
    """How a solve ended, named as in SciML so code moves between engines unchanged."""

    Success = "the solve reached the end of the time span"
    MaxIters = (
        "the solve took max_steps steps without reaching the end of the time span; "
        "raise max_steps, loosen rtol/atol, or check the problem for stiffness"
    )
    DtLessThanMin = (
        "the step size fell below dtmin while steps kept failing the error test; the solution may "
        "blow up, have a singularity, or be stiff (an explicit method then needs tiny steps)"
    )
    Unstable = "the solution became NaN or Inf"
    ConvergenceFailure = (
        "an implicit method's Newton iteration did not converge at the fixed step size (adaptive=False); "
        "take a smaller dt, or step adaptively so that the step can shrink"
    )
    # The codes below come only from the Julia engine (SciMLBase's ReturnCode of the same name).
    DtNaN = "the step size became NaN: f returned NaN or Inf"
    Terminated = "the solve was stopped before the end of the time span, successfully"
    Failure = "the Julia solver failed with a return code pyode has no name for (see the message)"

    @property
    def message(self) -> str:
        return self.value

    @property
    def successful(self) -> bool:
        return self in (ReturnCode.Success, ReturnCode.Terminated)


class SolveError(RuntimeError):
    """A solve that did not succeed, raised when `throw=True`.

    Attributes:
        retcode: the `ReturnCode` of the failure.
        t: the time the solve reached.
        solution: the partial `Solution`, up to the last save point reached.
    """

    def __init__(self, retcode: ReturnCode, t: float, solution: Solution | None = None):
        self.retcode = retcode
        self.t = t
        self.solution = solution
        super().__init__(f"solve failed with ReturnCode.{retcode.name} at t = {t:.6g}: {retcode.message}")


@dataclass(frozen=True)
class ElementStats:
    """Each element's own record in a solve with `batch_axis=0` (`Stats.per_element`).

    Attributes:
        nfe: (B,) evaluations of f the element took part in while it was still integrating: the
            count a solve of that element alone reports (f is called on the whole batch, so
            `Stats.nfe`, the number of batched calls, is at least the largest of these).
        naccept, nreject: (B,) the element's accepted and rejected steps.
        retcode: the element's `ReturnCode`, one per element.
        t: (B,) the time each element reached (t1 for those that succeeded).
    """

    nfe: torch.Tensor
    naccept: torch.Tensor
    nreject: torch.Tensor
    retcode: tuple[ReturnCode, ...]
    t: torch.Tensor


@dataclass
class Stats:
    """Work done by one solve: evaluations of f, accepted and rejected steps, and (for the
    quadrature adjoints' backward pass) the quadrature nodes at which a_z·∂f/∂θ was evaluated.
    The implicit solvers add their Jacobians (`njac`; each counts once, however many
    evaluations of f or Jacobian–vector products it took), LU factorizations (`nlu`) and Newton
    iterations (`nnewton`, each one evaluation of f, counted in `nfe` too); `AutoSwitch` counts
    its switches between the explicit and the implicit method (`nswitch`). An SDE solve counts
    its evaluations of the diffusion g apart (`nfe_diffusion`; `nfe` counts the drift f).

    With `batch_axis=0` these count batched work: `nfe` calls of f on the whole batch, and the
    batched steps in which some element advanced (`naccept`) or none did (`nreject`);
    `per_element` holds each element's own counts (None otherwise).
    """

    nfe: int = 0
    naccept: int = 0
    nreject: int = 0
    nquad: int = 0
    njac: int = 0
    nlu: int = 0
    nnewton: int = 0
    nswitch: int = 0
    nfe_diffusion: int = 0
    per_element: ElementStats | None = field(default=None, repr=False, compare=False)

    def __iadd__(self, other: Stats) -> Stats:
        self.nfe += other.nfe
        self.naccept += other.naccept
        self.nreject += other.nreject
        self.nquad += other.nquad
        self.njac += other.njac
        self.nlu += other.nlu
        self.nnewton += other.nnewton
        self.nswitch += other.nswitch
        self.nfe_diffusion += other.nfe_diffusion
        return self


def _as_time(value: TimeLike, name: str) -> TimeLike:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar; got a tensor of shape {tuple(value.shape)}")
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{name} must be real; got dtype {value.dtype}")
        as_float = float(value.detach())
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        as_float = float(value)  # also numpy scalars
    else:
        raise TypeError(f"{name} must be a real number or a 0-d tensor; got {type(value).__name__}")
    if not math.isfinite(as_float):
        raise ValueError(f"{name} must be finite; got {as_float}")
    return value


def _span(tspan: Any) -> tuple[TimeLike, TimeLike]:
    """(t0, t1) from a pair or a tensor of two times, each checked."""
    if isinstance(tspan, torch.Tensor):
        if tspan.shape != (2,):
            raise ValueError(f"tspan must hold two times (t0, t1); got a tensor of shape {tuple(tspan.shape)}")
        tspan = (tspan[0], tspan[1])
    if not isinstance(tspan, (tuple, list)) or len(tspan) != 2:
        raise ValueError(f"tspan must be a pair (t0, t1); got {tspan!r}")
    return _as_time(tspan[0], "tspan[0]"), _as_time(tspan[1], "tspan[1]")


def _checked_params(params: Sequence[Any]) -> tuple[torch.Tensor, ...]:
    params = tuple(params)
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"params[{i}] must be a torch.Tensor; got {type(p).__name__}")
    return params


def _check_state(y0: Any) -> None:
    parts = y0 if isinstance(y0, tuple) else (y0,)
    if isinstance(y0, list):
        raise TypeError("y0 must be a tensor or a tuple of tensors; got a list (use a tuple)")
    if not parts:
        raise ValueError("y0 is an empty tuple; give at least one tensor")
    for i, part in enumerate(parts):
        name = f"y0[{i}]" if isinstance(y0, tuple) else "y0"
        if not isinstance(part, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(part).__name__}")
        if part.dtype in (torch.float16, torch.bfloat16):
            raise TypeError(
                f"{name} is {part.dtype}: a half-precision state cannot carry the step control (its 8 or 11 "
                "significant bits swallow the increments). Keep the state float32 and run f under "
                "torch.autocast for mixed precision: f may return float16/bfloat16, which pyode casts back"
            )
        if part.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{name} must be a real floating-point tensor (float32 or float64); got {part.dtype}")
        if part.dtype != parts[0].dtype or part.device != parts[0].device:
            raise TypeError(
                f"the tensors of a tuple state must share one dtype and device; y0[0] is "
                f"{parts[0].dtype} on {parts[0].device}, {name} is {part.dtype} on {part.device}"
            )
        if not bool(torch.isfinite(part.detach()).all()):
            raise ValueError(f"{name} contains NaN or Inf")


@dataclass(frozen=True)
class ODEProblem:
    """dy/dt = f(t, y) on `tspan` with y(tspan[0]) = y0.

    Args:
        f: the vector field, called as `f(t, y)` with `t` a 0-d tensor of y's dtype and `y` shaped
            like `y0`; it returns dy/dt of the same shape (a tuple for tuple states).
        y0: the initial state: a tensor of any shape (a batch is a leading dimension) or a tuple
            of tensors sharing dtype and device; float32 or float64, any device.
        tspan: (t0, t1); t1 < t0 integrates backward in time.
        params: the tensors gradients are taken with respect to by the adjoint methods; by default
            the parameters of `f` when it is an `nn.Module`, else none.
        jac: ∂f/∂y for the implicit solvers, called as `jac(t, y)`; it returns an (N, N) matrix
            over the flattened state (N = its number of entries), or with `independent_batch`
            a (B, n, n) tensor of the B systems' own Jacobians. By default the solvers compute
            it by autodiff (or finite differences with `autodiff=False`).
        independent_batch: dim 0 of a tensor y0 of shape (B, ...) indexes B independent systems:
            element b's derivative reads element b only. The implicit solvers then build and
            factor B blocks of n×n (n = y0[0].numel()) rather than one (B·n)² matrix.
        integral_parts: for a tuple state, how many trailing parts are running integrals: their
            derivative does not read them and no other part reads them (an accumulated cost,
            an adjoint's parameter gradient). The implicit solvers leave them out of the
            Jacobian.
    """

    f: Callable
    y0: State
    tspan: tuple[TimeLike, TimeLike]
    params: tuple[torch.Tensor, ...] = ()
    jac: Callable | None = None
    independent_batch: bool = False
    integral_parts: int = 0

    def __init__(
        self,
        f: Callable,
        y0: State,
        tspan: Sequence[TimeLike],
        params: Sequence[torch.Tensor] | None = None,
        *,
        jac: Callable | None = None,
        independent_batch: bool = False,
        integral_parts: int = 0,
    ):
        if not callable(f):
            raise TypeError(f"f must be callable as f(t, y); got {type(f).__name__}")
        _check_state(y0)
        t0, t1 = _span(tspan)
        if params is None:
            params = tuple(f.parameters()) if isinstance(f, torch.nn.Module) else ()
        else:
            params = _checked_params(params)
        object.__setattr__(self, "f", f)
        object.__setattr__(self, "y0", y0)
        object.__setattr__(self, "tspan", (t0, t1))
        object.__setattr__(self, "params", params)
        if jac is not None and not callable(jac):
            raise TypeError(f"jac must be callable as jac(t, y); got {type(jac).__name__}")
        if not isinstance(independent_batch, bool):
            raise TypeError(f"independent_batch must be True or False; got {independent_batch!r}")
        if independent_batch and (isinstance(y0, tuple) or y0.dim() < 1 or y0.shape[0] == 0):
            raise ValueError(
                "independent_batch=True needs y0 to be one tensor of shape (B, ...) with B >= 1; "
                f"got {'a tuple' if isinstance(y0, tuple) else f'shape {tuple(y0.shape)}'}"
            )
        n_parts = len(y0) if isinstance(y0, tuple) else 1
        if isinstance(integral_parts, bool) or not isinstance(integral_parts, int) or not 0 <= integral_parts < n_parts:
            raise ValueError(
                f"integral_parts must be an int from 0 to {n_parts - 1} (the state has {n_parts} part(s) and at "
                f"least one must be dynamic); got {integral_parts!r}"
            )
        object.__setattr__(self, "jac", jac)
        object.__setattr__(self, "independent_batch", independent_batch)
        object.__setattr__(self, "integral_parts", integral_parts)


@dataclass(frozen=True, init=False)
class SplitODEProblem(ODEProblem):
    """dy/dt = f_stiff(t, y) + f_nonstiff(t, y): an ODE whose right-hand side is split into a
    stiff part, which an IMEX method (`KenCarp4`) treats implicitly, and a non-stiff part it
    treats explicitly (SciML's SplitODEProblem; f1 is the stiff part there too). Every other
    solver solves it as the ODE of the sum. `jac`, when given, is the stiff part's Jacobian.
    """

    f_stiff: Callable | None = None
    f_nonstiff: Callable | None = None

    def __init__(
        self,
        f_stiff: Callable,
        f_nonstiff: Callable,
        y0: State,
        tspan: Sequence[TimeLike],
        params: Sequence[torch.Tensor] | None = None,
        *,
        jac: Callable | None = None,
        independent_batch: bool = False,
        integral_parts: int = 0,
        f: Callable | None = None,
    ):
        for name, part in (("f_stiff", f_stiff), ("f_nonstiff", f_nonstiff)):
            if not callable(part):
                raise TypeError(f"{name} must be callable as {name}(t, y); got {type(part).__name__}")
        if params is None:
            found: list[torch.Tensor] = []
            for part in (f_stiff, f_nonstiff):
                if isinstance(part, torch.nn.Module):
                    found.extend(p for p in part.parameters() if all(p is not q for q in found))
            params = found
        if f is None:
            f = _Sum(f_stiff, f_nonstiff)
        super().__init__(
            f, y0, tspan, params, jac=jac, independent_batch=independent_batch, integral_parts=integral_parts
        )
        object.__setattr__(self, "f_stiff", f_stiff)
        object.__setattr__(self, "f_nonstiff", f_nonstiff)


@dataclass(frozen=True, init=False)
class CDEProblem:
    """dz = f(t, z) dX(t): a controlled differential equation driven by a path X through data, on
    `tspan` with z(tspan[0]) = z0. Along a differentiable path it is the ODE
    dz/dt = f(t, z) · dX/dt, which every solver and sensitivity algorithm of pyode solves.

    Args:
        f: the vector field, called as `f(t, z)`; it returns a matrix of shape (*z.shape, channels)
            (a tuple of them for a tuple state), or has a method `prod(t, z, dXdt)` returning
            f(t, z) · dX/dt itself (torchcde's convention). The path's batch dimensions come
            first in z: data x of shape (B, length, channels) drives a state of shape (B, hidden).
        X: the control, a path from `pyode.cde` (`natural_cubic_spline`, `hermite_cubic_backward`,
            `linear`, `rectilinear`) or any object with `evaluate(t)`, `derivative(t)` and `knots`.
        z0: the initial state, as `ODEProblem`'s y0.
        tspan: (t0, t1) inside the path's knots; by default the whole path (its first and last knot).
        params: the tensors the adjoints differentiate: by default the parameters of f (an
            `nn.Module`) and the tensors of the path that require grad, so gradients reach the
            data too.
        stop_at_knots: make the steps land on the path's knots. By default they do where the
            path's derivative jumps (`linear`, `rectilinear`: the knots are then
            discontinuities, where the next step restarts with the derivative after the knot)
            or its second derivative jumps (`hermite_cubic_backward`), and do not for the C²
            natural cubic spline, whose knots the error control handles.

    Attributes:
        term: the `pyode.terms.ControlTerm(f, X)`.
        y0: z0 (the name `solve` and `Solution` use).
    """

    f: Callable
    control: Any
    y0: State
    tspan: tuple[TimeLike, TimeLike]
    params: tuple[torch.Tensor, ...] = ()
    stop_at_knots: bool | None = None
    term: Any = field(default=None, repr=False, compare=False)

    def __init__(
        self,
        f: Callable,
        X: Any,
        z0: State,
        tspan: Sequence[TimeLike] | None = None,
        params: Sequence[torch.Tensor] | None = None,
        *,
        stop_at_knots: bool | None = None,
    ):
        from .terms import ControlTerm

        term = ControlTerm(f, X)  # checks f and X
        knots = getattr(X, "knots", None)
        if not isinstance(knots, torch.Tensor) or knots.dim() != 1 or knots.shape[0] < 2:
            raise TypeError(
                f"X must be a path with knots (a 1-D tensor of at least 2 times), such as pyode.cde.natural_cubic_spline"
                f"(t, x); got {type(X).__name__}"
            )
        _check_state(z0)
        part = z0[0] if isinstance(z0, tuple) else z0
        if knots.dtype != part.dtype or knots.device != part.device:
            raise TypeError(
                f"X is {knots.dtype} on {knots.device} but z0 is {part.dtype} on {part.device}: build the path from "
                "data of z0's dtype and device, or pass X.to(z0)"
            )
        first, last = float(knots[0]), float(knots[-1])
        if tspan is None:
            tspan = (first, last)
        t0, t1 = _span(tspan)
        slack = 4 * torch.finfo(knots.dtype).eps * max(abs(first), abs(last), 1.0)
        for name, value in (("tspan[0]", t0), ("tspan[1]", t1)):
            v = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
            if not first - slack <= v <= last + slack:
                raise ValueError(
                    f"{name} = {v:.6g} lies outside the path's knots [{first:.6g}, {last:.6g}]: the path would be "
                    "extrapolated beyond the data"
                )
        if stop_at_knots is not None and not isinstance(stop_at_knots, bool):
            raise TypeError(f"stop_at_knots must be True, False or None; got {stop_at_knots!r}")
        if params is None:
            params = cde_params(f, X)
        else:
            params = _checked_params(params)
        object.__setattr__(self, "f", f)
        object.__setattr__(self, "control", X)
        object.__setattr__(self, "y0", z0)
        object.__setattr__(self, "tspan", (t0, t1))
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "stop_at_knots", stop_at_knots)
        object.__setattr__(self, "term", term)

    @property
    def z0(self) -> State:
        return self.y0

    def as_ode(self) -> ODEProblem:
        """The ODE dz/dt = f(t, z) · dX/dt on the same span, with the same params."""
        return ODEProblem(self.term.ode_field(), self.y0, self.tspan, self.params)

    def knot_stops(self) -> tuple[list[float], list[float]]:
        """(tstops, d_discontinuities): the knots that steps land on, split by whether the
        path's derivative jumps there (then the knots on the span's ends count too)."""
        smoothness = getattr(self.control, "smoothness", 0)
        stop = self.stop_at_knots if self.stop_at_knots is not None else smoothness < 2
        if not stop:
            return [], []
        t0, t1 = (float(t.detach()) if isinstance(t, torch.Tensor) else float(t) for t in self.tspan)
        lo, hi = min(t0, t1), max(t0, t1)
        knots = self.control.knots.detach().cpu().tolist()
        if smoothness == 0:
            # on the span's ends too: a solve that starts on an interior knot reads the slope
            # after it, one that ends there the slope before it (a knot alone reads the left piece)
            return [], [k for k in knots[1:-1] if lo <= k <= hi]
        return [k for k in knots if lo < k < hi], []


NOISE_TYPES = ("diagonal", "scalar", "additive", "general")
SDE_TYPES = ("ito", "stratonovich")


class SDENoise(NamedTuple):
    """What an SDE adds to its drift: the diffusion, the Brownian motion that drives it, and how
    to read them (`SDEProblem`'s arguments of the same names)."""

    g: Callable
    bm: Any  # a pyode.brownian.AbstractBrownian
    noise: str
    sde_type: str


@dataclass(frozen=True, init=False)
class NoisyODEProblem(ODEProblem):
    """The drift ODE dy/dt = f(t, y) of an SDE together with its noise: what `solve` lowers an
    `SDEProblem` to, and what the SDE solvers (`pyode.solvers.sde`) step. Internal: state
    problems as `SDEProblem`."""

    noise: SDENoise | None = None

    def __init__(
        self,
        f: Callable,
        y0: State,
        tspan: Sequence[TimeLike],
        params: Sequence[torch.Tensor] | None = None,
        *,
        jac: Callable | None = None,
        independent_batch: bool = False,
        integral_parts: int = 0,
        noise: SDENoise | None = None,
    ):
        super().__init__(
            f, y0, tspan, params, jac=jac, independent_batch=independent_batch, integral_parts=integral_parts
        )
        object.__setattr__(self, "noise", noise)


@dataclass(frozen=True, init=False)
class SDEProblem:
    """dy = f(t, y) dt + g(t, y) dW(t): a stochastic differential equation on `tspan` with
    y(tspan[0]) = y0, driven by a Brownian motion W.

    Args:
        f: the drift, called as `f(t, y)`; it returns a tensor shaped like y.
        g: the diffusion, called as `g(t, y)`. With y of shape (*batch, d) it returns
            - noise="diagonal": (*batch, d), each entry multiplying its own Brownian motion
              (W has y's shape); entry i of g may depend on y_i only (Milstein and the Itô
              correction rely on it, as torchsde's do);
            - noise="scalar": (*batch, d, 1), one Brownian motion per batch element (W: (*batch, 1));
            - noise="additive": (*batch, d, m), independent of y (it may depend on t);
            - noise="general": (*batch, d, m), any dependence (W: (*batch, m)).
        y0: the initial state: one float32/float64 tensor of shape (*batch, d), on any device.
        tspan: (t0, t1); t1 < t0 integrates backward in time.
        noise: "diagonal" (the default), "scalar", "additive" or "general", as above.
        sde_type: "ito" (the default) or "stratonovich": which integral `g dW` means. The solvers
            converge to one calculus each (see `pyode.solvers.sde`) and refuse the other.
        params: the tensors `BacksolveAdjoint` and `ReversibleAdjoint` differentiate; by default
            the parameters of f and g (those that are `nn.Module`s), each once.
        bm: the Brownian motion: a `pyode.VirtualBrownianTree`, a `pyode.BrownianInterval`, or any
            callable `bm(s, t)` returning W(t) - W(s) of shape (*batch, noise channels) (a
            torchsde Brownian object works). By default each solve draws a new
            `BrownianInterval` from torch's random generator (`sol.bm` returns it).
    """

    f: Callable
    g: Callable
    y0: torch.Tensor
    tspan: tuple[TimeLike, TimeLike]
    noise: str = "diagonal"
    sde_type: str = "ito"
    params: tuple[torch.Tensor, ...] = ()
    bm: Any = field(default=None, compare=False)

    def __init__(
        self,
        f: Callable,
        g: Callable,
        y0: torch.Tensor,
        tspan: Sequence[TimeLike],
        noise: str = "diagonal",
        sde_type: str = "ito",
        params: Sequence[torch.Tensor] | None = None,
        *,
        bm: Any = None,
    ):
        for name, fn in (("f", f), ("g", g)):
            if not callable(fn):
                raise TypeError(f"{name} must be callable as {name}(t, y); got {type(fn).__name__}")
        if isinstance(y0, tuple):
            raise TypeError("SDEProblem: y0 must be one tensor of shape (*batch, d); tuple states are for ODEs")
        _check_state(y0)
        if y0.dim() < 1:
            raise ValueError("SDEProblem: y0 must have at least one dimension (*batch, d); got a 0-d tensor")
        if noise not in NOISE_TYPES:
            raise ValueError(f"noise must be one of {', '.join(map(repr, NOISE_TYPES))}; got {noise!r}")
        if sde_type not in SDE_TYPES:
            raise ValueError(f"sde_type must be 'ito' or 'stratonovich'; got {sde_type!r}")
        if bm is not None and not callable(bm):
            raise TypeError(f"bm must be a Brownian motion callable as bm(s, t); got {type(bm).__name__}")
        if params is None:
            found: list[torch.Tensor] = []
            for part in (f, g):
                if isinstance(part, torch.nn.Module):
                    found.extend(p for p in part.parameters() if all(p is not q for q in found))
            params = tuple(found)
        else:
            params = _checked_params(params)
        object.__setattr__(self, "f", f)
        object.__setattr__(self, "g", g)
        object.__setattr__(self, "y0", y0)
        object.__setattr__(self, "tspan", _span(tspan))
        object.__setattr__(self, "noise", noise)
        object.__setattr__(self, "sde_type", sde_type)
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "bm", bm)

    def brownian_shape(self) -> tuple[int, ...]:
        """The shape of W: y0's for diagonal noise, (*batch, 1) for scalar noise, and (*batch, m)
        for additive and general noise, with m read from g(t0, y0)'s last dimension."""
        y0 = self.y0
        if self.noise == "diagonal":
            return tuple(y0.shape)
        if self.noise == "scalar":
            return (*y0.shape[:-1], 1)
        t0 = self.tspan[0]
        t = (t0.detach() if isinstance(t0, torch.Tensor) else torch.scalar_tensor(float(t0))).to(y0)
        with torch.no_grad():
            out = self.g(t, y0)
        if not isinstance(out, torch.Tensor) or out.dim() != y0.dim() + 1 or out.shape[:-1] != y0.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"g(t, y) returned {got} for y of shape {tuple(y0.shape)}: with noise={self.noise!r} it returns a "
                f"matrix of shape (*y.shape, m) = {(*y0.shape, 'm')}, m the number of Brownian motions"
            )
        return (*y0.shape[:-1], out.shape[-1])


def cde_params(f: Callable, X: Any) -> tuple[torch.Tensor, ...]:
    """What a CDE's adjoints differentiate by default: the parameters of f (an `nn.Module`), then
    the tensors of the path that require grad (`X.tensors()`, or the buffers of a torchcde path),
    each once."""
    found: list[torch.Tensor] = list(f.parameters()) if isinstance(f, torch.nn.Module) else []
    if callable(getattr(X, "tensors", None)):
        tensors = tuple(X.tensors())
    elif isinstance(X, torch.nn.Module):
        tensors = tuple(X.buffers())
    else:
        tensors = ()
    found.extend(p for p in tensors if p.requires_grad and all(p is not q for q in found))
    return tuple(found)


class _Sum:
    """f_stiff + f_nonstiff, for tensor or tuple states."""

    def __init__(self, first: Callable, second: Callable):
        self.first, self.second = first, second

    def __call__(self, t, y):
        a, b = self.first(t, y), self.second(t, y)
        if isinstance(a, tuple):
            return tuple(x + z for x, z in zip(a, b))
        return a + b


@dataclass
class Solution:
    """The result of `solve`.

    Attributes:
        t: save times, shape (T,), in the time dtype.
        y: states at those times, stacked on dim 0: (T, *y0.shape), or a tuple of such.
        stats: the forward solve's `Stats`.
        adjoint_stats: the backward pass's `Stats`, filled in by `backward()` for the adjoint
            methods (None for `DirectAdjoint`, whose backward is autograd's).
        retcode: a `ReturnCode`.
        prob, solver: what was solved, and how.
        dt_next: the step size the controller proposed after the last step (to continue a solve).
        error_estimate, stiffness_estimate: the regularizers R_E and R_S (0-d tensors) when
            solved with `regularize=...`; None otherwise.
        regularization_time: the time t_s of the local step, with `LocalRegularization`.
        event_time: with `events=`, the time of the terminal event that stopped the solve (a 0-d
            tensor carrying the event time's gradient), or, for a batched condition, one time per
            element (NaN where the element's event did not occur); None if none stopped it.
        event_index: which event (its index in `events`) stopped the solve; per element (-1 for
            none) for a batched condition.
        event_log: every event that occurred, in order: (time, index) pairs, times with gradients.
        bm: for an `SDEProblem`, the Brownian motion that drove the solve (the problem's `bm`, or
            the `pyode.BrownianInterval` drawn for it): pass it as `SDEProblem(..., bm=sol.bm)`
            to solve again on the same sample path.
        sensealg: the sensitivity algorithm the solve ran with (set by `solve`). For
            `AutoAdjoint()` it is the AutoAdjoint resolved for this solve: `sol.sensealg.chosen`
            is the algorithm it picked, `sol.sensealg.reason` says why, and
            `sol.sensealg.estimate` holds the memory estimate behind the choice.
    """

    t: torch.Tensor
    y: State
    stats: Stats
    retcode: ReturnCode
    prob: ODEProblem
    solver: Any
    adjoint_stats: Stats | None = None
    dense: DenseOutput | None = None
    dt_next: float | None = None
    error_estimate: torch.Tensor | None = None
    stiffness_estimate: torch.Tensor | None = None
    regularization_time: float | None = None
    event_time: torch.Tensor | None = None
    event_index: Any = None
    event_log: list = field(default_factory=list)
    sensealg: Any = None
    bm: Any = None
    # Why `sol(t)` carries no gradient although `sol.y` does (set by the sensealgs whose dense
    # output comes from an unrecorded solve); calling it with grad enabled then raises.
    dense_without_gradient: str | None = field(default=None, repr=False)

    def __call__(self, t: TimeLike) -> State:
        """The solution at any time(s) in the span by dense interpolation.

        `t` is a number, a 0-d tensor (returns one state) or a 1-D tensor (returns states stacked
        on dim 0). Needs `dense=True` in `solve` (the default when `saveat` is not given).

        Raises:
            RuntimeError: grad is enabled but the sensealg cannot differentiate dense output (the
                adjoints, and `DirectAdjoint(checkpoint_every=...)`): the result would silently
                carry no gradient. Pass the times as `saveat=`, or call it under `torch.no_grad()`.
        """
        if self.dense is None:
            if isinstance(self.prob, SDEProblem):
                raise ValueError(
                    "an SDE's solution has no dense output (its steps have no interpolant): pass the times as "
                    "solve(..., saveat=...)"
                )
            raise ValueError(
                "this Solution has no dense output; call solve(..., dense=True) to evaluate it between save points"
            )
        if self.dense_without_gradient is not None and torch.is_grad_enabled():
            raise RuntimeError(
                f"sol(t) has no gradient here: {self.dense_without_gradient}. Pass the times as saveat= (their "
                "values then get gradients), use sensealg=DirectAdjoint(), or call sol(t) under torch.no_grad() "
                "if no gradient is needed"
            )
        return self.dense(t)

    def __repr__(self) -> str:
        return (
            f"Solution(retcode={self.retcode.name}, t: {tuple(self.t.shape)}, solver={self.solver!r}, "
            f"nfe={self.stats.nfe}, naccept={self.stats.naccept}, nreject={self.stats.nreject})"
        )
