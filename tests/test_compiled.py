"""`solve(..., compile=True)`: the compiled step gives the eager step's solution, steps and
gradients; it compiles once per problem (time and step size are inputs, not constants); and
where it cannot compile it warns and steps eagerly.

Most tests compile with a counting backend that runs dynamo's captured graph as is: it checks
what `fullgraph=True` captured and how often, in milliseconds. `aot_eager` adds the traced
backward graph that inductor compiles; one slow test runs inductor itself.
"""

from __future__ import annotations

import time
import warnings

import pytest
import torch
from torch import nn

import pyode
from pyode.integrate import compiled


class Counting:
    """A torch.compile backend that runs the captured graph and counts the captures."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


class Field(nn.Module):
    def __init__(self, n: int = 2, width: int = 16, time_dependent: bool = True):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n, width), nn.Tanh(), nn.Linear(width, n))
        self.time_dependent = time_dependent

    def forward(self, t, y):
        out = self.net(y)
        return out * torch.cos(t) if self.time_dependent else out


@pytest.fixture(autouse=True)
def _fresh_cache():
    compiled.clear_cache()
    yield
    compiled.clear_cache()


def _solve_and_grad(f, y0, solver, sensealg=None, compile=False, **kwargs):
    f.zero_grad(set_to_none=True)
    y0 = y0.clone().requires_grad_(True)
    ts = torch.linspace(0.0, 2.0, 6, dtype=y0.dtype)
    sol = pyode.solve(
        pyode.ODEProblem(f, y0, (0.0, 2.0)), solver, saveat=ts, compile=compile, sensealg=sensealg, **kwargs
    )
    sol.y.pow(2).sum().backward()
    return sol, y0.grad, [p.grad for p in f.parameters()]


# Rounding only: the compiled step sums the same products in another order. In float64 the
# step counts are then identical (step sizes differ by rounding of the error ratio, ~1e-8
# relative where its estimate cancels heavily) and the solutions agree to ~1e-11. In float32 the error
# estimate (a difference of stage combinations ~1e4 times smaller than the stages at rtol 1e-4)
# keeps only ~3 digits, so a step may be accepted at another size: the solutions then agree to
# the tolerance, not to rounding, and the step counts may differ by a step.
RTOL = {torch.float64: 1e-6, torch.float32: 1e-4}
TOL = {torch.float64: 1e-11, torch.float32: 2e-3}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "solver", [pyode.DP5(), pyode.Tsit5(), pyode.BS3(), pyode.DP8(), pyode.Heun()], ids=lambda s: repr(s)
)
def test_compiled_equals_eager(solver, dtype):
    f = Field().to(dtype)
    y0 = torch.randn(4, 2, dtype=dtype)
    kw = dict(rtol=RTOL[dtype], atol=RTOL[dtype] / 100)
    eager, gy_e, gp_e = _solve_and_grad(f, y0, solver, **kw)
    backend = Counting()
    comp, gy_c, gp_c = _solve_and_grad(f, y0, solver, compile={"backend": backend}, **kw)
    assert backend.graphs == 1  # one graph, reused by every step
    if dtype == torch.float64:
        assert (comp.stats.nfe, comp.stats.naccept, comp.stats.nreject) == (
            eager.stats.nfe,
            eager.stats.naccept,
            eager.stats.nreject,
        )
    else:
        assert abs(comp.stats.naccept - eager.stats.naccept) <= 1
    tol = TOL[dtype]
    torch.testing.assert_close(comp.y, eager.y, rtol=tol, atol=tol)
    torch.testing.assert_close(gy_c, gy_e, rtol=tol, atol=tol)
    for a, b in zip(gp_c, gp_e):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_fixed_steps_and_tuple_state():
    f = Field(time_dependent=False).double()

    def g(t, y):
        x, v = y
        return v, -f.net(x) * 0.0 - x

    y0 = (torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64))
    prob = pyode.ODEProblem(g, y0, (0.0, 1.0))
    eager = pyode.solve(prob, pyode.RK4(), dt=0.1, saveat=[0.5, 1.0])
    backend = Counting()
    comp = pyode.solve(prob, pyode.RK4(), dt=0.1, saveat=[0.5, 1.0], compile={"backend": backend})
    assert backend.graphs == 1
    for a, b in zip(comp.y, eager.y):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


def test_no_recompilation_across_steps_solves_and_spans():
    f = Field().double()
    backend = Counting()
    for t1 in (1.0, 2.5, 7.0):
        y0 = torch.randn(5, 2, dtype=torch.float64)
        sol = pyode.solve(pyode.ODEProblem(f, y0, (0.0, t1)), pyode.Tsit5(), compile={"backend": backend})
        sol.y[-1].sum().backward()
        assert sol.stats.naccept > 3
    assert backend.graphs == 1
    with torch.no_grad():  # a graph without autograd: one more, once
        for _ in range(2):
            pyode.solve(
                pyode.ODEProblem(f, torch.randn(5, 2, dtype=torch.float64), (0.0, 3.0)),
                pyode.Tsit5(),
                compile={"backend": backend},
            )
    assert backend.graphs == 2
    # Another shape is another problem: compiled once more.
    pyode.solve(
        pyode.ODEProblem(f, torch.randn(7, 2, dtype=torch.float64), (0.0, 1.0)),
        pyode.Tsit5(),
        compile={"backend": backend},
    )
    assert backend.graphs == 3


def test_new_module_instances_and_closures_reuse_the_cache():
    """A training loop that rebuilds its lambda every iteration compiles once."""
    net = Field().double()
    backend = Counting()
    for _ in range(3):
        prob = pyode.ODEProblem(lambda t, y: net(t, y), torch.randn(2, 2, dtype=torch.float64), (0.0, 1.0))
        pyode.solve(prob, pyode.DP5(), compile={"backend": backend})
    assert backend.graphs == 1


@pytest.mark.parametrize(
    "sensealg",
    [
        pyode.BacksolveAdjoint(),
        pyode.GaussAdjoint(),
        pyode.QuadratureAdjoint(),
        pyode.DirectAdjoint(checkpoint_every=3),
    ],
    ids=repr,
)
def test_adjoints_backward_solves_compile(sensealg):
    f = Field().double()
    y0 = torch.randn(4, 2, dtype=torch.float64)
    kw = dict(rtol=1e-8, atol=1e-10)
    eager, gy_e, gp_e = _solve_and_grad(f, y0, pyode.Tsit5(), sensealg=sensealg, **kw)
    backend = Counting()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="compile=True")  # compiles without falling back
        first = None
        for _ in range(2):
            comp, gy_c, gp_c = _solve_and_grad(
                f, y0, pyode.Tsit5(), sensealg=sensealg, compile={"backend": backend}, **kw
            )
            first = backend.graphs if first is None else first
    # The forward step (no grad), the backward's field, the checkpoint replays: compiled by the
    # first iteration, and not again by the second.
    assert 1 <= first <= 3
    assert backend.graphs == first
    if eager.adjoint_stats is not None:
        # The backward's evaluations are counted although the graph cannot count them.
        assert comp.adjoint_stats.nfe == eager.adjoint_stats.nfe
        assert comp.adjoint_stats.naccept == eager.adjoint_stats.naccept
    torch.testing.assert_close(gy_c, gy_e, rtol=1e-11, atol=1e-11)
    for a, b in zip(gp_c, gp_e):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


def test_aot_backward_graph_gives_the_same_gradients():
    f = Field().double()
    y0 = torch.randn(4, 2, dtype=torch.float64)
    _, gy_e, gp_e = _solve_and_grad(f, y0, pyode.DP5())
    _, gy_c, gp_c = _solve_and_grad(f, y0, pyode.DP5(), compile={"backend": "aot_eager"})
    torch.testing.assert_close(gy_c, gy_e, rtol=1e-11, atol=1e-11)
    for a, b in zip(gp_c, gp_e):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


def test_untraceable_f_warns_once_and_steps_eagerly():
    f = Field().double()

    def g(t, y):
        if y.abs().max().item() > 1e6:  # a data-dependent branch on the host: not one graph
            raise RuntimeError("diverged")
        return f(t, y)

    y0 = torch.randn(3, 2, dtype=torch.float64)
    eager = pyode.solve(pyode.ODEProblem(g, y0, (0.0, 1.0)), pyode.DP5())
    options = {"backend": Counting()}
    with pytest.warns(RuntimeWarning, match="could not be compiled"):
        comp = pyode.solve(pyode.ODEProblem(g, y0, (0.0, 1.0)), pyode.DP5(), compile=options)
    torch.testing.assert_close(comp.y, eager.y, rtol=0, atol=0)
    assert comp.stats.nfe == eager.stats.nfe
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="compile=True")  # remembered: no second warning
        pyode.solve(pyode.ODEProblem(g, y0, (0.0, 1.0)), pyode.DP5(), compile=options)


def test_what_is_not_compiled_warns_and_stays_correct():
    f = Field().double()
    y0 = torch.randn(3, 2, dtype=torch.float64)
    prob = pyode.ODEProblem(f, y0, (0.0, 1.0))
    with pytest.warns(RuntimeWarning, match="compiles explicit Runge"):
        sol = pyode.solve(prob, pyode.ReversibleHeun(), dt=0.1, compile={"backend": Counting()})
    torch.testing.assert_close(sol.y, pyode.solve(prob, pyode.ReversibleHeun(), dt=0.1).y)
    event = pyode.Event(lambda t, y: y[..., 0].sum() - 10.0)
    with pytest.warns(RuntimeWarning, match="events step eagerly"):
        pyode.solve(prob, pyode.DP5(), events=event, compile={"backend": Counting()})


def test_discontinuities_and_regularizers_agree_with_eager():
    f = Field().double()
    y0 = torch.randn(3, 2, dtype=torch.float64)

    def jump(t, y):
        return f(t, y) + (t > 0.5).to(y.dtype)

    prob = pyode.ODEProblem(jump, y0, (0.0, 1.0))
    eager = pyode.solve(prob, pyode.DP5(), d_discontinuities=[0.5], saveat=[0.5, 1.0])
    comp = pyode.solve(prob, pyode.DP5(), d_discontinuities=[0.5], saveat=[0.5, 1.0], compile={"backend": Counting()})
    assert comp.stats.nfe == eager.stats.nfe
    torch.testing.assert_close(comp.y, eager.y, rtol=1e-12, atol=1e-12)

    prob = pyode.ODEProblem(f, y0, (0.0, 1.0))
    eager = pyode.solve(prob, pyode.DP5(), regularize=True)
    comp = pyode.solve(prob, pyode.DP5(), regularize=True, compile={"backend": Counting()})
    torch.testing.assert_close(comp.error_estimate, eager.error_estimate, rtol=1e-10, atol=0)
    torch.testing.assert_close(comp.stiffness_estimate, eager.stiffness_estimate, rtol=1e-10, atol=0)
    (grad,) = torch.autograd.grad(comp.error_estimate, [f.net[0].weight])
    (grad_eager,) = torch.autograd.grad(eager.error_estimate, [f.net[0].weight])
    torch.testing.assert_close(grad, grad_eager, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "value, error, match",
    [
        ("yes", TypeError, "compile must be True, False or a dict"),
        (1, TypeError, "compile must be True, False or a dict"),
        ({"fullgraph": False}, ValueError, "unknown torch.compile option"),
    ],
)
def test_bad_compile_argument(value, error, match):
    prob = pyode.ODEProblem(lambda t, y: -y, torch.ones(2), (0.0, 1.0))
    with pytest.raises(error, match=match):
        pyode.solve(prob, pyode.DP5(), compile=value)


def test_julia_backend_refuses_compile():
    prob = pyode.ODEProblem(lambda t, y: -y, torch.ones(2), (0.0, 1.0))
    with pytest.raises(ValueError, match="compile"):
        pyode.solve(prob, pyode.DP5(), compile=True, backend="julia")


def test_neural_ode_passes_compile_through():
    backend = Counting()
    model = pyode.nn.NeuralODE(Field().double(), (0.0, 1.0), compile={"backend": backend})
    y = model(torch.randn(3, 2, dtype=torch.float64)).y
    y.sum().backward()
    assert backend.graphs == 1


def test_inference_mode():
    f = Field().double()
    y0 = torch.randn(3, 2, dtype=torch.float64)
    eager = pyode.solve(pyode.ODEProblem(f, y0, (0.0, 1.0)), pyode.DP5())
    with torch.inference_mode():
        comp = pyode.solve(pyode.ODEProblem(f, y0, (0.0, 1.0)), pyode.DP5(), compile={"backend": Counting()})
    torch.testing.assert_close(comp.y, eager.y.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_inductor_compiles_and_agrees():
    """The real thing: inductor's kernels (C++ on CPU) against the eager solve."""
    f = Field(width=32).double()
    y0 = torch.randn(8, 2, dtype=torch.float64)
    _, gy_e, gp_e = _solve_and_grad(f, y0, pyode.DP5())
    start = time.perf_counter()
    _, gy_c, gp_c = _solve_and_grad(f, y0, pyode.DP5(), compile=True)
    cold = time.perf_counter() - start
    torch.testing.assert_close(gy_c, gy_e, rtol=1e-10, atol=1e-10)
    for a, b in zip(gp_c, gp_e):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    print(f"cold compile + first solve: {cold:.1f} s")


def test_networks_of_other_sizes_get_their_own_entries():
    """A sweep over widths compiles each width once, and more widths than torch's recompile
    limit for one entry (8) still all compile (nothing steps eagerly, nothing warns)."""
    backend = Counting()
    y0 = torch.randn(3, 2, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="compile=True")
        for _ in range(2):
            for width in range(4, 14):
                f = Field(width=width).double()
                pyode.solve(pyode.ODEProblem(f, y0, (0.0, 1.0)), pyode.DP5(), compile={"backend": backend})
    assert backend.graphs == 10
