"""`solve(..., compile=True)` under attack: the compiled step against the eager one on inputs and
usage the happy-path tests (`test_compiled.py`) do not try, and a regression test for each bug
found that way (marked "regression" below).

Like `test_compiled.py`, most tests compile with a counting backend that runs dynamo's captured
graph as is, and `aot_eager` where the traced backward graph matters.
"""

from __future__ import annotations

import collections
import gc
import itertools
import threading
import warnings
import weakref

import pytest
import torch
from torch import nn

import pyode
from pyode.integrate import compiled

from .test_compiled import Counting


class Field(nn.Module):
    def __init__(self, n: int = 2, width: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n, width), nn.Tanh(), nn.Linear(width, n))

    def forward(self, t, y):
        return self.net(y) * torch.cos(t)


@pytest.fixture(autouse=True)
def _fresh_cache():
    compiled.clear_cache()
    yield
    compiled.clear_cache()


@pytest.fixture
def strict():
    """Fail on any "compile=True: ..." warning: the solve must compile, not fall back."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="compile=True")
        yield


F64 = torch.float64
TS = [0.5, 1.0, 1.5, 2.0]
NT = collections.namedtuple("NT", "x v")


def _flat(y) -> torch.Tensor:
    return torch.cat([p.reshape(-1) for p in y]) if isinstance(y, tuple) else y.reshape(-1)


def _grads(loss, inputs):
    return torch.autograd.grad(loss, inputs, allow_unused=True)


def _assert_grads_close(a, b, tol):
    for x, y in zip(a, b):
        assert (x is None) == (y is None)
        if x is not None:
            torch.testing.assert_close(x, y, rtol=tol, atol=tol)


# ---- the compiled step equals the eager one ------------------------------------------------


def _oscillator(f):
    def g(t, s):
        x, v = s
        out = (v, -f.net(x) - x * torch.cos(t))
        return NT(*out) if isinstance(s, NT) else out

    return g


def _case(name, f):
    """(problem builder, solve keywords) for one configuration; the builder returns the problem
    and the tensors to differentiate with respect to."""
    y0 = torch.randn(4, 2, dtype=F64)

    def plain(tspan=(0.0, 2.0), fn=f, y=y0):
        def make():
            yy = y.clone().requires_grad_(True)
            return pyode.ODEProblem(fn, yy, tspan), [yy]

        return make

    def tuple_state(kind):
        def make():
            a = torch.linspace(-1, 1, 6, dtype=F64).reshape(3, 2).requires_grad_(True)
            b = torch.linspace(1, -0.5, 6, dtype=F64).reshape(3, 2).requires_grad_(True)
            return pyode.ODEProblem(_oscillator(f), kind(a, b), (0.0, 2.0)), [a, b]

        return make

    def times_with_grad():
        t0 = torch.tensor(0.1, dtype=F64, requires_grad=True)
        t1 = torch.tensor(1.7, dtype=F64, requires_grad=True)
        ts = torch.tensor([0.5, 1.0, 1.7], dtype=F64, requires_grad=True)
        yy = y0.clone().requires_grad_(True)
        return pyode.ODEProblem(f, yy, (t0, t1)), [yy, t0, t1, ts]

    def no_params(t, y):
        return -y * torch.sin(t)

    pair = lambda *p: tuple(p)  # noqa: E731
    cases = {
        "backward in time": (plain((2.0, 0.0)), dict(saveat=[1.5, 1.0, 0.5, 0.0])),
        "tolerance tensors": (
            plain(),
            dict(saveat=TS, rtol=torch.tensor([1e-6, 1e-3], dtype=F64), atol=torch.full((4, 2), 1e-9, dtype=F64)),
        ),
        "max_norm": (plain(), dict(saveat=TS, internalnorm=pyode.max_norm)),
        "lambda norm": (plain(), dict(saveat=TS, internalnorm=lambda x: x.abs().mean())),
        "non-contiguous y0": (plain(y=torch.randn(2, 4, dtype=F64).T), dict(saveat=TS)),
        "f without parameters": (plain(fn=no_params), dict(saveat=TS)),
        "tuple": (tuple_state(pair), dict(saveat=TS)),
        "namedtuple": (tuple_state(NT), dict(saveat=TS)),
        "tuple seminorm": (tuple_state(pair), dict(saveat=TS, internalnorm=pyode.make_seminorm(keep=1))),
        "namedtuple lambda norm": (
            tuple_state(NT),
            dict(saveat=TS, internalnorm=lambda s: s.x.abs().max() + s.v.abs().mean()),
        ),
        "tuple tolerances": (tuple_state(pair), dict(saveat=TS, rtol=(1e-6, 1e-3))),
        "dense output": (plain(), dict(dense=True, saveat=TS)),
        "times require grad": (times_with_grad, dict(saveat="ts")),
    }
    return cases[name]


CASES = [
    "backward in time",
    "tolerance tensors",
    "max_norm",
    "lambda norm",
    "non-contiguous y0",
    "f without parameters",
    "tuple",
    "namedtuple",
    "tuple seminorm",
    "namedtuple lambda norm",
    "tuple tolerances",
    "dense output",
    "times require grad",
]


@pytest.mark.parametrize("name", CASES)
def test_compiled_equals_eager(name, strict):
    """Values, step counts and gradients (with respect to y0, the parameters and any times)."""
    f = Field().double()
    make, kwargs = _case(name, f)
    results = []
    for compile in (False, {"backend": Counting()}):
        prob, inputs = make()
        kw = dict(kwargs)
        if kw.get("saveat") == "ts":
            kw["saveat"] = inputs[-1]
        sol = pyode.solve(prob, pyode.Tsit5(), compile=compile, **kw)
        ys = _flat(sol.y) if isinstance(sol.y, tuple) else sol.y
        dense = sol(torch.tensor([0.3, 0.9], dtype=F64)) if kw.get("dense") else None
        loss = ys.pow(2).sum() + (_flat(dense).sum() if dense is not None else 0)
        grads = _grads(loss, [*inputs, *f.parameters()])
        results.append((ys.detach(), (sol.stats.nfe, sol.stats.naccept, sol.stats.nreject), grads))
    (y_e, stats_e, g_e), (y_c, stats_c, g_c) = results
    assert stats_c == stats_e
    torch.testing.assert_close(y_c, y_e, rtol=1e-10, atol=1e-10)
    _assert_grads_close(g_c, g_e, 1e-8)


@pytest.mark.parametrize("solver", [pyode.Euler(), pyode.Midpoint(), pyode.RK4()], ids=repr)
def test_the_other_explicit_rk_solvers(solver, strict):
    """(test_compiled.py has DP5, Tsit5, BS3, DP8 and Heun.)"""
    f = Field().double()
    y0 = torch.randn(3, 2, dtype=F64)
    kw = dict(saveat=TS) if solver.adaptive else dict(saveat=TS, dt=0.05)
    eager = pyode.solve(pyode.ODEProblem(f, y0, (0.0, 2.0)), solver, **kw)
    comp = pyode.solve(pyode.ODEProblem(f, y0, (0.0, 2.0)), solver, compile={"backend": Counting()}, **kw)
    assert comp.stats == eager.stats
    torch.testing.assert_close(comp.y, eager.y, rtol=1e-10, atol=1e-10)


def test_float32_and_time_dtype_float32():
    """Regression: the step's times were computed in time_dtype, so float32 times rounded a
    float64 state's stage times (a 1e-4 error on a time-dependent f at t ≈ 1000)."""

    def f(t, y):
        return torch.sin(50 * t) * y

    y0 = torch.randn(3, 2, dtype=F64)
    prob = pyode.ODEProblem(f, y0, (1000.0, 1001.0))
    for time_dtype in (torch.float64, torch.float32):
        kw = dict(dt=0.01, saveat=[1001.0], time_dtype=time_dtype)
        eager = pyode.solve(prob, pyode.RK4(), **kw)
        comp = pyode.solve(prob, pyode.RK4(), compile={"backend": Counting()}, **kw)
        torch.testing.assert_close(comp.y, eager.y, rtol=1e-12, atol=1e-12)
    prob32 = pyode.ODEProblem(f, y0.float(), (1000.0, 1001.0))
    eager = pyode.solve(prob32, pyode.RK4(), dt=0.01, saveat=[1001.0])
    comp = pyode.solve(prob32, pyode.RK4(), dt=0.01, saveat=[1001.0], compile={"backend": Counting()})
    torch.testing.assert_close(comp.y, eager.y, rtol=1e-5, atol=1e-5)


def test_autocast_bf16_forward_equals_eager():
    f = Field().float()
    y0 = torch.randn(4, 2)
    prob = pyode.ODEProblem(f, y0, (0.0, 1.0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager = pyode.solve(prob, pyode.DP5(), saveat=TS[:2], rtol=1e-3, atol=1e-5)
        comp = pyode.solve(prob, pyode.DP5(), saveat=TS[:2], rtol=1e-3, atol=1e-5, compile={"backend": "aot_eager"})
    plain = pyode.solve(prob, pyode.DP5(), saveat=TS[:2], rtol=1e-3, atol=1e-5)
    assert comp.stats == eager.stats
    torch.testing.assert_close(comp.y, eager.y, rtol=1e-5, atol=1e-5)
    assert (comp.y - plain.y).abs().max() > 1e-4  # autocast was on inside the compiled step too


def test_blow_ups_max_steps_and_dtmin_end_as_eagerly():
    f = Field().double()
    y0 = torch.randn(4, 2, dtype=F64)

    def nan_after_half(t, y):
        return f(t, y) * torch.where(t > 0.5, torch.nan, 1.0)

    def quadratic(t, y):
        return 10 * y**2

    runs = [
        (pyode.ODEProblem(nan_after_half, y0, (0.0, 2.0)), pyode.RK4(), dict(dt=0.1)),
        (pyode.ODEProblem(quadratic, torch.ones(3, dtype=F64), (0.0, 2.0)), pyode.DP5(), {}),
        (pyode.ODEProblem(f, y0, (0.0, 2.0)), pyode.DP5(), dict(max_steps=3)),
        (pyode.ODEProblem(quadratic, torch.ones(3, dtype=F64), (0.0, 2.0)), pyode.DP5(), dict(dtmin=1e-3)),
    ]
    options = {"backend": Counting()}
    for (prob, solver, kw), throw in itertools.product(runs, (False, True)):
        outcomes = []
        for compile in (False, options):
            try:
                sol = pyode.solve(prob, solver, compile=compile, throw=throw, **kw)
                outcomes.append((sol.retcode, sol.stats, round(float(sol.t[-1]), 12)))
            except pyode.SolveError as error:
                outcomes.append((type(error).__name__, str(error)))
        assert outcomes[0] == outcomes[1]
        assert throw or not outcomes[0][0].successful


# ---- errors of f's own --------------------------------------------------------------------


class Boom(Exception):
    pass


def test_f_raising_its_own_error_propagates_and_keeps_compiling():
    """Regression: an exception raised by f inside the compiled step (dynamo reports it as an
    "observed exception") was taken for a failure to compile: a misleading warning, and every
    later solve of the problem stepped eagerly."""
    armed, calls = [True], [0]

    def f(t, y):
        if armed[0]:
            calls[0] += 1
            if calls[0] > 2:  # after the eager k1 and the initial step's evaluation
                raise Boom("f's own error")
        return -y * torch.cos(t)

    prob = pyode.ODEProblem(f, torch.randn(3, 2, dtype=F64), (0.0, 1.0))
    backend = Counting()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="compile=True")
        with pytest.raises(Boom, match="f's own error") as raised:
            pyode.solve(prob, pyode.DP5(), compile={"backend": backend})
        assert raised.value.__context__ is None  # not chained to dynamo's error
        armed[0] = False
        sol = pyode.solve(prob, pyode.DP5(), saveat=TS[:2], compile={"backend": backend})
    assert backend.graphs >= 1  # compiled, not fallen back
    torch.testing.assert_close(sol.y, pyode.solve(prob, pyode.DP5(), saveat=TS[:2]).y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (lambda y: y[..., :1], ValueError, r"returned shape \(3, 1\)"),
        (lambda y: y.float(), TypeError, "returned dtype torch.float32"),
        (lambda y: (y, y), TypeError, "must return a tensor shaped like y"),
    ],
    ids=["shape", "dtype", "tuple"],
)
def test_f_returning_a_wrong_output_inside_the_step_fails_as_eagerly(bad, error, match):
    calls = [0]

    def f(t, y):
        calls[0] += 1
        return bad(y) if calls[0] > 2 else -y

    prob = pyode.ODEProblem(f, torch.randn(3, 2, dtype=F64), (0.0, 1.0))
    with pytest.raises(error, match=match):
        pyode.solve(prob, pyode.DP5())
    calls[0] = 0
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="compile=True")
        with pytest.raises(error, match=match):
            pyode.solve(prob, pyode.DP5(), compile={"backend": Counting()})


# ---- the cache ----------------------------------------------------------------------------


class Weighted:
    def __init__(self, w: float):
        self.w = w

    def norm(self, x):
        return (x.abs() * self.w).max()


@pytest.mark.parametrize(
    "make_norm",
    [
        lambda w: Weighted(w).norm,
        lambda w: lambda x, w=w: (x.abs() * w).max(),
        lambda w: lambda x, *, w=w: (x.abs() * w).max(),
    ],
    ids=["bound method", "default argument", "keyword default"],
)
def test_norms_sharing_a_cache_key_each_get_their_own(make_norm):
    """Regression: the compiled step held the first problem's norm as a constant, and norms that
    differ only in a bound method's instance or a default argument have the same cache key:
    the second solve silently measured errors with the first norm (7 steps instead of 14)."""
    f = Field().double()
    prob = pyode.ODEProblem(f, torch.randn(4, 2, dtype=F64), (0.0, 2.0))
    backend = Counting()
    for w in (1.0, 100.0, 1.0):
        eager = pyode.solve(prob, pyode.DP5(), internalnorm=make_norm(w))
        comp = pyode.solve(prob, pyode.DP5(), internalnorm=make_norm(w), compile={"backend": backend})
        assert comp.stats == eager.stats
    assert backend.graphs == 2  # one per norm; the third solve reuses the first graph


def test_new_norm_and_layout_objects_do_not_recompile():
    """The flat norm of a tuple state is a new closure over a new layout on every solve."""
    f = Field().double()
    backend = Counting()
    for _ in range(3):
        y0 = (torch.randn(3, 2, dtype=F64), torch.randn(3, 2, dtype=F64))
        prob = pyode.ODEProblem(_oscillator(f), y0, (0.0, 1.0))
        pyode.solve(prob, pyode.DP5(), internalnorm=pyode.make_seminorm(keep=1), compile={"backend": backend})
        pyode.solve(prob, pyode.DP5(), internalnorm=lambda s: s[0].abs().max(), compile={"backend": backend})
    assert backend.graphs == 2


def test_module_changes_are_seen():
    """train/eval (dropout), an optimizer step, a replaced submodule, a changed buffer."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.drop = nn.Dropout(0.5)
            self.register_buffer("scale", torch.tensor(1.0))

        def forward(self, t, y):
            return self.scale * self.drop(self.lin(y))

    net = Net().double()
    prob = pyode.ODEProblem(net, torch.randn(5, 2, dtype=F64), (0.0, 1.0))
    backend = Counting()

    def both():
        torch.manual_seed(3)
        eager = pyode.solve(prob, pyode.RK4(), dt=0.1, saveat=TS[:2])
        torch.manual_seed(3)
        comp = pyode.solve(prob, pyode.RK4(), dt=0.1, saveat=TS[:2], compile={"backend": backend})
        torch.testing.assert_close(comp.y, eager.y, rtol=1e-12, atol=1e-12)
        return comp.y.detach()

    net.eval()
    evaluated = both()
    net.train()
    assert not torch.allclose(both(), evaluated)  # dropout on
    net.eval()
    both()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    pyode.solve(prob, pyode.RK4(), dt=0.1, compile={"backend": backend}).y.sum().backward()
    opt.step()
    both()
    net.lin = nn.Linear(2, 2).double()
    both()
    net.scale.fill_(-2.0)
    both()
    assert backend.graphs <= 3  # train and eval; a replaced submodule of the same shape reuses the graph


def test_more_problems_than_the_cache_holds(monkeypatch):
    monkeypatch.setattr(compiled, "_CACHE_SIZE", 3)
    f = Field().double()
    backend = Counting()
    first = []
    for n in range(1, compiled._CACHE_SIZE + 3):
        prob = pyode.ODEProblem(f, torch.randn(n, 2, dtype=F64), (0.0, 0.5))
        comp = pyode.solve(prob, pyode.BS3(), saveat=[0.5], rtol=1e-3, compile={"backend": backend})
        if n == 1:
            first.append(weakref.ref(next(iter(compiled._cache.values())).fn))
        if n % 2:
            torch.testing.assert_close(comp.y, pyode.solve(prob, pyode.BS3(), saveat=[0.5], rtol=1e-3).y)
    assert len(compiled._cache) == compiled._CACHE_SIZE
    gc.collect()
    assert first[0]() is None  # an evicted step is freed
    prob = pyode.ODEProblem(f, torch.randn(1, 2, dtype=F64), (0.0, 0.5))
    comp = pyode.solve(prob, pyode.BS3(), saveat=[0.5], rtol=1e-3, compile={"backend": backend})
    torch.testing.assert_close(comp.y, pyode.solve(prob, pyode.BS3(), saveat=[0.5], rtol=1e-3).y)


def test_past_torch_recompile_limit_it_warns_and_stays_correct():
    """A module attribute that changes between solves is a guard: past torch's limit of 8
    recompilations of one step the problem steps eagerly, with one warning, still correct."""

    class Scaled(nn.Module):
        def __init__(self, s):
            super().__init__()
            self.s = s
            self.lin = nn.Linear(2, 2)

        def forward(self, t, y):
            return self.s * self.lin(y)

    y0 = torch.randn(3, 2, dtype=F64)
    backend = Counting()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(10):
            prob = pyode.ODEProblem(Scaled(0.1 * i).double(), y0, (0.0, 1.0))
            eager = pyode.solve(prob, pyode.RK4(), dt=0.25)
            comp = pyode.solve(prob, pyode.RK4(), dt=0.25, compile={"backend": backend})
            torch.testing.assert_close(comp.y, eager.y, rtol=1e-12, atol=1e-12)
    fallbacks = [w for w in caught if "could not be compiled" in str(w.message)]
    assert len(fallbacks) == 1 and "RecompileLimit" in str(fallbacks[0].message)
    assert backend.graphs == torch._dynamo.config.recompile_limit


def test_training_loop_does_not_grow_memory():
    model = pyode.nn.NeuralODE(Field(width=8).double(), (0.0, 1.0), saveat=TS[:2], compile={"backend": Counting()})
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(8, 2, dtype=F64)

    def train(n):
        for _ in range(n):
            opt.zero_grad()
            model(x).y.pow(2).mean().backward()
            opt.step()
        gc.collect()
        return len(gc.get_objects())

    train(3)
    before = train(5)
    after = train(30)
    assert after - before < 50
    assert len(compiled._cache) == 1


# ---- gradients ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sensealg",
    [
        pyode.DirectAdjoint(),
        pyode.DirectAdjoint(checkpoint_every=2),
        pyode.BacksolveAdjoint(seminorm=True),
        pyode.InterpolatingAdjoint(),
        pyode.GaussAdjoint(),
        pyode.QuadratureAdjoint(),
        pyode.AutoAdjoint(),
    ],
    ids=repr,
)
def test_sensealgs_with_time_gradients(sensealg):
    """Gradients with respect to y0, the parameters, t1 and the save times, and the backward
    solve's counts, as eagerly. (ReversibleAdjoint's reversible solvers step eagerly.)"""
    f = Field().double()
    y0 = torch.randn(3, 2, dtype=F64)
    results = []
    for compile in (False, {"backend": Counting()}):
        yy = y0.clone().requires_grad_(True)
        t1 = torch.tensor(1.5, dtype=F64, requires_grad=True)
        ts = torch.tensor([0.5, 1.0, 1.5], dtype=F64, requires_grad=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # InterpolatingAdjoint's backward steps eagerly
            sol = pyode.solve(
                pyode.ODEProblem(f, yy, (0.0, t1)),
                pyode.Tsit5(),
                saveat=ts,
                sensealg=sensealg,
                compile=compile,
                rtol=1e-8,
                atol=1e-10,
            )
            grads = _grads(sol.y.pow(2).sum(), [yy, t1, ts, *f.parameters()])
        a = sol.adjoint_stats
        results.append((grads, sol.stats, a and (a.nfe, a.naccept, a.nreject)))
    (g_e, stats_e, adj_e), (g_c, stats_c, adj_c) = results
    assert stats_c == stats_e
    assert adj_c == adj_e
    _assert_grads_close(g_c, g_e, 1e-8)


def test_double_backward_raises_rather_than_returning_wrong_numbers():
    """AOT autograd (inductor's backward) cannot differentiate its backward graph: torch's error
    says so. What must not happen is a silently wrong (say zero) second derivative."""
    f = Field().double()
    y0 = torch.randn(3, 2, dtype=F64)

    def hessian_term(compile):
        yy = y0.clone().requires_grad_(True)
        sol = pyode.solve(pyode.ODEProblem(f, yy, (0.0, 1.0)), pyode.DP5(), saveat=TS[:2], compile=compile)
        (g,) = torch.autograd.grad(sol.y.pow(2).sum(), yy, create_graph=True)
        return g, torch.autograd.grad(g.pow(2).sum(), yy)[0]

    _, h_e = hessian_term(False)
    _, h_c = hessian_term({"backend": Counting()})  # dynamo's graph, differentiated by autograd
    torch.testing.assert_close(h_c, h_e, rtol=1e-9, atol=1e-9)
    with pytest.raises(RuntimeError, match="double backward"):
        hessian_term({"backend": "aot_eager"})


def test_grad_modes(strict):
    f = Field().double()
    y0 = torch.randn(3, 2, dtype=F64)
    prob = pyode.ODEProblem(f, y0, (0.0, 1.0))
    backend = Counting()
    eager = pyode.solve(prob, pyode.DP5(), saveat=TS[:2]).y.detach()

    def comp():
        return pyode.solve(prob, pyode.DP5(), saveat=TS[:2], compile={"backend": backend}).y

    def every_mode():
        with torch.no_grad():
            assert not comp().requires_grad
            with torch.enable_grad():
                y = comp()
                assert y.requires_grad
                torch.testing.assert_close(y.detach(), eager, rtol=1e-12, atol=1e-12)
        with torch.inference_mode():
            torch.testing.assert_close(comp(), eager, rtol=1e-12, atol=1e-12)
        y = comp()
        assert y.requires_grad
        torch.testing.assert_close(y.detach(), eager, rtol=1e-12, atol=1e-12)

    every_mode()
    graphs = backend.graphs
    every_mode()
    assert backend.graphs == graphs  # each mode's graph compiled once


# ---- threads ------------------------------------------------------------------------------


def _in_threads(work, n):
    barrier = threading.Barrier(n)
    errors = []

    def run(i):
        try:
            barrier.wait()
            work(i)
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_threads_solving_at_once():
    fields = [Field(width=8 + 4 * i).double() for i in range(3)]
    y0s = [torch.randn(3, 2, dtype=F64) for _ in range(3)]
    expected = [
        pyode.solve(pyode.ODEProblem(f, y, (0.0, 1.0)), pyode.DP5(), saveat=TS[:2]).y for f, y in zip(fields, y0s)
    ]
    options = {"backend": Counting()}  # one cache entry for all three (the same class and shapes)

    def work(i):
        for _ in range(2):
            prob = pyode.ODEProblem(fields[i], y0s[i], (0.0, 1.0))
            sol = pyode.solve(prob, pyode.DP5(), saveat=TS[:2], compile=options)
            torch.testing.assert_close(sol.y, expected[i], rtol=1e-12, atol=1e-12)

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="compile=True")
        _in_threads(work, 3)


def test_threads_running_adjoints_at_once_keep_compiling():
    """Regression: the adjoints' steps set `trace_autograd_ops`, one setting for all threads.
    One thread's step reset it in the middle of another's, and the entry it shared with the
    other threads was switched off as "could not be compiled"."""
    fields = [Field(width=8).double() for _ in range(4)]
    y0 = torch.randn(3, 2, dtype=F64)

    def grads(i, compile):
        prob = pyode.ODEProblem(fields[i], y0, (0.0, 1.0))
        sol = pyode.solve(prob, pyode.DP5(), saveat=TS[:2], sensealg=pyode.BacksolveAdjoint(), compile=compile)
        return _grads(sol.y.sum(), list(fields[i].parameters()))

    expected = [grads(i, False) for i in range(4)]

    options = {"backend": Counting()}  # one cache entry for all four

    def work(i):
        _assert_grads_close(grads(i, options), expected[i], 1e-8)

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="compile=True")
        _in_threads(work, 4)
    assert all(entry.fn is not None for entry in compiled._cache.values())


# ---- compile= itself ----------------------------------------------------------------------


def _recording_compile(monkeypatch):
    """torch.compile that checks its keywords as torch does, records them, and compiles with
    the counting backend (so that inductor's keywords are checked without inductor's compile)."""
    real = torch.compile
    seen = []

    def fake(fn, **kwargs):
        seen.append(kwargs)
        real(fn, **kwargs)  # torch's checks of the keywords; nothing is compiled before a call
        return real(fn, fullgraph=True, backend=Counting())

    monkeypatch.setattr(torch, "compile", fake)
    return seen


@pytest.mark.parametrize(
    "value, error, match",
    [
        (0, TypeError, "compile must be True, False or a dict"),
        ("inductor", TypeError, "compile must be True, False or a dict"),
        ([("backend", "eager")], TypeError, "compile must be True, False or a dict"),
        (("inductor",), TypeError, "compile must be True, False or a dict"),
        ((("fullgraph", False),), ValueError, "compile: unknown torch.compile option"),
        ({"backend": "inductr"}, ValueError, "compile: unknown backend 'inductr'"),
        ({"backend": 3}, TypeError, "compile: backend must be a name"),
        ({"mode": "fastest"}, ValueError, "compile: unknown mode 'fastest'"),
        ({"mode": "max-autotune", "options": {"cpp_wrapper": True}}, ValueError, "compile: give mode or options"),
        ({"options": {"no_such_option": 1}}, ValueError, r"compile: unknown inductor option\(s\) \['no_such_option'\]"),
        ({"options": 3}, TypeError, "compile: options must be a dict"),
        ({"dynamic": "yes"}, TypeError, "compile: dynamic must be True, False or None"),
    ],
)
def test_bad_compile_values_raise_by_name(value, error, match):
    """Regression (all but the first three): a tuple skipped the checks, and torch.compile's own
    rejections (a misspelt backend or mode, mode with options) were taken for an environment
    that cannot compile: a warning, then eager steps."""
    prob = pyode.ODEProblem(lambda t, y: -y, torch.ones(2, dtype=F64), (0.0, 1.0))
    with pytest.raises(error, match=match):
        pyode.solve(prob, pyode.DP5(), compile=value)


@pytest.mark.parametrize("value", [True, None, {"backend": "eager", "dynamic": None}, {"mode": "default"}])
def test_good_compile_values(value, monkeypatch, strict):
    seen = _recording_compile(monkeypatch)  # (inductor's keywords checked, not compiled)
    prob = pyode.ODEProblem(lambda t, y: -y, torch.ones(2, dtype=F64), (0.0, 1.0))
    pyode.solve(prob, pyode.DP5(), compile=value)
    assert len(seen) == (value is not False and value is not None)


def test_a_mode_compiles_on_the_cpu(monkeypatch, strict):
    """Regression: on the CPU the step added options={"cpp_wrapper": True} to a given mode, which
    torch.compile refuses (mode or options): every solve with a mode stepped eagerly."""
    seen = _recording_compile(monkeypatch)
    prob = pyode.ODEProblem(lambda t, y: -y, torch.ones(2, dtype=F64), (0.0, 1.0))
    pyode.solve(prob, pyode.DP5(), compile={"mode": "max-autotune-no-cudagraphs"})
    pyode.solve(prob, pyode.Tsit5(), compile=True)
    assert seen[0]["mode"] == "max-autotune-no-cudagraphs" and seen[0].get("options") is None
    assert seen[1]["options"] == {"cpp_wrapper": True}


def test_the_callers_options_dict_is_not_modified(monkeypatch, strict):
    """Regression: torch.compile pops `guard_filter_fn` from `options`, which was the caller's
    dict: the caller's dict lost it, and so did the next problem's compile."""
    seen = _recording_compile(monkeypatch)
    options = {"guard_filter_fn": lambda entries: [True] * len(entries)}
    for n in (1, 2):
        prob = pyode.ODEProblem(lambda t, y: -y, torch.ones(n, dtype=F64), (0.0, 1.0))
        pyode.solve(prob, pyode.DP5(), compile={"options": options})
    assert list(options) == ["guard_filter_fn"]
    assert len(seen) == 2


@pytest.mark.slow
def test_inductor_threads_modes_and_the_callers_norm():
    """Inductor itself: two threads, a mode, a bound-method norm."""
    fields = [Field(width=8).double() for _ in range(2)]
    y0 = torch.randn(3, 2, dtype=F64)
    norms = [Weighted(1.0).norm, Weighted(50.0).norm]

    def both(i, compile):
        prob = pyode.ODEProblem(fields[i], y0, (0.0, 1.0))
        sol = pyode.solve(prob, pyode.DP5(), saveat=TS[:2], internalnorm=norms[i], compile=compile)
        return sol.stats, _grads(sol.y.sum(), list(fields[i].parameters()))

    expected = [both(i, False) for i in range(2)]

    def work(i):
        stats, grads = both(i, {"mode": "default"} if i else True)
        assert stats == expected[i][0]
        _assert_grads_close(grads, expected[i][1], 1e-10)

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="compile=True")
        _in_threads(work, 2)
