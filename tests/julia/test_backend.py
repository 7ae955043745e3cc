"""`pyode.solve(..., backend="julia")` from Python's side, with a stand-in for the Julia module.

`FakePyODE` answers PyODE.jl's calls the way Julia would (see fake_julia.py), so these tests
cover everything but Julia itself: the checks before Julia starts, the keywords sent, the
zero-copy exchange, the autograd wiring, return codes and statistics. The same solves on real
Julia are in tests_julia/.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import pyode
from pyode.backends.julia import JuliaLogWarning, JuliaUnavailable, _runtime
from pyode.julia import Chain, Dense

from .fake_julia import FakePyODE, JuliaError

ROOT = Path(__file__).resolve().parents[2]
DTYPES = [torch.float32, torch.float64]
# The fake solves with the torch engine itself, evaluating f in Julia's column-major layout
# instead of Chain.forward's; the two orders of summation differ only by rounding.
TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


@pytest.fixture
def fake(monkeypatch):
    module = FakePyODE()
    monkeypatch.setitem(_runtime._state, "module", module)
    monkeypatch.setitem(_runtime._state, "models", {})
    monkeypatch.setitem(_runtime._state, "error", None)
    return module


def ones(*shape):
    return torch.ones(*shape, dtype=torch.float64)


def chain(dtype=torch.float64, activation="tanh", bias=True):
    return Chain(Dense(2, 16, activation, bias), Dense(16, 2, "identity", bias), dtype=dtype)


def both_engines(vf, y0, solver=None, **kw):
    solver = solver or pyode.Tsit5()
    prob = pyode.ODEProblem(vf, y0, (0.0, 1.0))
    return (
        pyode.solve(prob, solver, backend="julia", **kw),
        pyode.solve(prob, solver, **kw),
    )


# ----------------------------------------------------------------------------------------
# The Chain description: a torch module in Lux's parameter order
# ----------------------------------------------------------------------------------------


def test_chain_is_the_mlp_of_its_layers():
    torch.manual_seed(0)
    vf = Chain(Dense(3, 8, "softplus"), Dense(8, 5, "swish", bias=False), Dense(5, 3, "relu"), dtype=torch.float64)
    linears = [torch.nn.Linear(3, 8), torch.nn.Linear(8, 5, bias=False), torch.nn.Linear(5, 3)]
    mlp = torch.nn.Sequential(
        linears[0], torch.nn.Softplus(), linears[1], torch.nn.SiLU(), linears[2], torch.nn.ReLU()
    ).double()
    with torch.no_grad():
        vf.theta.copy_(vf.flatten([(m.weight, m.bias) for m in linears]))
    y = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(vf(torch.tensor(0.0), y), mlp(y), rtol=0, atol=1e-14)
    for (w, b), m in zip(vf.unflatten(vf.theta), linears):
        assert torch.equal(w, m.weight) and (b is None) == (m.bias is None)


def test_chain_parameters_are_in_luxs_column_major_order():
    vf = Chain(Dense(2, 2, bias=True), dtype=torch.float64)
    with torch.no_grad():
        vf.theta.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
    ((W, b),) = vf.unflatten(vf.theta)
    # Lux: weight = reshape(θ[1:4], 2, 2) (column-major), bias = θ[5:6].
    assert W.tolist() == [[1.0, 3.0], [2.0, 4.0]] and b.tolist() == [5.0, 6.0]
    assert vf.num_params == 6 and Dense(2, 2).num_params == 6 and Dense(2, 3, bias=False).num_params == 6


def test_chain_initialisation_is_nn_linear_like_and_seeded():
    torch.manual_seed(3)
    a = Chain(Dense(4, 100), Dense(100, 4))
    torch.manual_seed(3)
    b = Chain(Dense(4, 100), Dense(100, 4))
    assert torch.equal(a.theta, b.theta) and a.theta.dtype == torch.get_default_dtype()
    (w1, b1), (w2, _) = a.unflatten(a.theta)
    assert w1.abs().max() <= 0.5 and b1.abs().max() <= 0.5 and w2.abs().max() <= 0.1
    assert w1.std() > 0.2  # uniform on ±1/2 has std 0.29: not left at zero


@pytest.mark.parametrize(
    ("layers", "error", "words"),
    [
        ((), ValueError, "at least one"),
        ((Dense(2, 3), Dense(4, 2)), ValueError, "layer 1 takes 4 inputs"),
        ((Dense(2, 3),), ValueError, "last layer must give 2"),
        (("Dense(2, 2)",), TypeError, "pyode.julia.Dense"),
    ],
)
def test_chain_refuses(layers, error, words):
    with pytest.raises(error, match=words):
        Chain(*layers)


@pytest.mark.parametrize(
    ("args", "words"),
    [((0, 2), "in_features"), ((2, 2.0), "out_features"), ((2, 2, "gelu"), "activation"), ((True, 2), "in_features")],
)
def test_dense_refuses(args, words):
    with pytest.raises(ValueError, match=words):
        Dense(*args)


# ----------------------------------------------------------------------------------------
# Solves and gradients through the stand-in
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2,), (3, 2), (2, 3, 2)])
@pytest.mark.parametrize(
    "sensealg",
    [pyode.DirectAdjoint(), pyode.BacksolveAdjoint(), pyode.InterpolatingAdjoint(), pyode.GaussAdjoint()],
    ids=lambda s: type(s).__name__,
)
def test_states_and_gradients_match_the_torch_engine(fake, dtype, shape, sensealg):
    torch.manual_seed(1)
    vf = chain(dtype)
    y0 = torch.randn(shape, dtype=dtype, requires_grad=True)
    ts = torch.linspace(0, 1, 6)
    jl, pt = both_engines(vf, y0, saveat=ts, rtol=1e-6, atol=1e-8, sensealg=sensealg)
    assert jl.y.shape == (6, *shape) and jl.y.dtype == dtype and jl.retcode is pyode.ReturnCode.Success
    torch.testing.assert_close(jl.t, pt.t)
    torch.testing.assert_close(jl.y, pt.y, rtol=TOL[dtype], atol=TOL[dtype])
    if isinstance(sensealg, pyode.DirectAdjoint):  # the continuous adjoints' forward may evaluate f once more
        assert jl.stats == pt.stats
    assert (jl.stats.naccept, jl.stats.nreject) == (pt.stats.naccept, pt.stats.nreject)
    weights = torch.randn(jl.y.shape, dtype=dtype)
    g_jl = torch.autograd.grad((jl.y * weights).sum(), (vf.theta, y0))
    g_pt = torch.autograd.grad((pt.y * weights).sum(), (vf.theta, y0), allow_unused=True)
    # the fake differentiates the discrete solve, which the torch engine's DirectAdjoint also
    # does; its other sensealgs are continuous adjoints, equal to the tolerance only.
    tol = TOL[dtype] if isinstance(sensealg, pyode.DirectAdjoint) else 1e-4
    for a, b in zip(g_jl, g_pt):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    if isinstance(sensealg, pyode.DirectAdjoint):
        assert jl.adjoint_stats is None
    else:
        assert jl.adjoint_stats.nfe == 7  # what the stand-in's pullback reports
        with pytest.raises(AttributeError, match="naccept"):
            _ = jl.adjoint_stats.naccept


def test_a_second_backward_adds_its_counts(fake):
    vf = chain()
    sol = pyode.solve(
        pyode.ODEProblem(vf, ones(2), (0, 1)), pyode.Tsit5(), sensealg=pyode.GaussAdjoint(), backend="julia"
    )
    sol.y.sum().backward(retain_graph=True)
    sol.y.sum().backward()
    assert sol.adjoint_stats.nfe == 14


def test_every_step_is_saved_without_saveat(fake):
    jl, pt = both_engines(chain(), ones(2))
    assert fake.calls[-1]["saveat"] is None
    torch.testing.assert_close(jl.t, pt.t)
    assert len(jl.t) == pt.stats.naccept + 1


@pytest.mark.parametrize(
    ("solver", "kw", "expected"),
    [
        (pyode.Tsit5(), {}, {"solver": "Tsit5", "adaptive": True, "dt": None}),
        (pyode.DP8(), {"dt": 0.01}, {"solver": "DP8", "adaptive": True, "dt": 0.01}),
        (pyode.RK4(), {"dt": 0.1}, {"solver": "RK4", "adaptive": False, "dt": 0.1}),
        (pyode.Midpoint(), {"dt": 0.1}, {"solver": "Midpoint", "adaptive": False}),
        (pyode.Euler(), {"dt": 0.1}, {"solver": "Euler", "adaptive": False}),
        (pyode.DP5(), {"adaptive": False, "dt": 0.25}, {"solver": "DP5", "adaptive": False, "dt": 0.25}),
        (pyode.BS3(), {"rtol": 1e-3, "atol": 1e-5}, {"solver": "BS3", "rtol": 1e-3, "atol": 1e-5}),
        (pyode.Tsit5(), {}, {"dtmin": None, "dtmax": None, "tstops": None, "maxiters": 100_000}),
        (pyode.Tsit5(), {"dtmin": 1e-9, "dtmax": 0.5, "max_steps": 77}, {"dtmin": 1e-9, "dtmax": 0.5, "maxiters": 77}),
        (pyode.Tsit5(), {"sensealg": pyode.BacksolveAdjoint()}, {"sensealg": "BacksolveAdjoint", "seminorm": True}),
        (
            pyode.Tsit5(),
            {"sensealg": pyode.InterpolatingAdjoint(seminorm=False, checkpointing=False)},
            {"sensealg": "InterpolatingAdjoint", "seminorm": False, "checkpointing": False},
        ),
        (
            pyode.Tsit5(),
            {"sensealg": pyode.InterpolatingAdjoint()},
            {"sensealg": "InterpolatingAdjoint", "seminorm": True, "checkpointing": True},
        ),
        (pyode.Tsit5(), {"sensealg": pyode.GaussAdjoint()}, {"sensealg": "GaussAdjoint", "seminorm": False}),
        (pyode.Tsit5(), {}, {"sensealg": "DirectAdjoint", "differentiate": True}),
    ],
)
def test_keywords_sent_to_julia(fake, solver, kw, expected):
    vf = chain()
    pyode.solve(pyode.ODEProblem(vf, ones(2), (0.0, 1.0)), solver, backend="julia", **kw)
    call = fake.calls[-1]
    for key, value in expected.items():
        assert call[key] == value, key


def test_tstops_reach_julia_as_float64(fake):
    pyode.solve(pyode.ODEProblem(chain(), ones(2), (0.0, 1.0)), pyode.Tsit5(), tstops=[0.5, 0.25], backend="julia")
    np.testing.assert_array_equal(fake.calls[-1]["tstops"], [0.25, 0.5])


def test_no_pullback_without_grad(fake):
    vf = chain()
    prob = pyode.ODEProblem(vf, ones(2), (0.0, 1.0))
    with torch.no_grad():
        sol = pyode.solve(prob, pyode.Tsit5(), backend="julia")
    assert fake.calls[-1]["differentiate"] is False and not sol.y.requires_grad
    sol = pyode.solve(pyode.ODEProblem(vf, ones(2), (0.0, 1.0), params=[]), pyode.Tsit5(), backend="julia")
    assert fake.calls[-1]["differentiate"] is False


def test_parameters_and_state_reach_julia_without_copies(fake):
    vf = chain()
    y0 = torch.randn(4, 2, dtype=torch.float64)
    pyode.solve(pyode.ODEProblem(vf, y0, (0.0, 1.0)), pyode.Tsit5(), backend="julia")
    call = fake.calls[-1]
    assert np.shares_memory(call["theta"], vf.theta.detach().numpy())
    assert np.shares_memory(call["u0"], y0.numpy())


def test_the_julia_model_is_built_once_per_architecture(fake, monkeypatch):
    built = []
    original = fake.build_model
    monkeypatch.setattr(fake, "build_model", lambda *a: built.append(a) or original(*a))
    for _ in range(3):
        pyode.solve(pyode.ODEProblem(chain(), ones(2), (0, 1)), pyode.Tsit5(), backend="julia")
    pyode.solve(pyode.ODEProblem(chain(activation="relu"), ones(2), (0, 1)), pyode.Tsit5(), backend="julia")
    assert len(built) == 2
    assert built[0] == (2, (2, 16, "tanh", True), (16, 2, "identity", True))


def test_a_layout_disagreement_is_caught(fake, monkeypatch):
    monkeypatch.setattr(fake, "nparams", lambda model: model.nparams + 1)
    with pytest.raises(RuntimeError, match="disagree on the layout"):
        pyode.solve(pyode.ODEProblem(chain(), ones(2), (0, 1)), pyode.Tsit5(), backend="julia")


@pytest.mark.parametrize(("julia_code", "code"), [("MaxIters", "MaxIters"), ("InitialFailure", "Failure")])
def test_failed_solves_raise_or_return_their_code(fake, julia_code, code):
    fake.forced_retcode = julia_code
    prob = pyode.ODEProblem(chain(), ones(2), (0.0, 1.0))
    with pytest.raises(pyode.SolveError, match=f"SciML ReturnCode.{julia_code}") as info:
        with pytest.warns(JuliaLogWarning):  # SciML's report of the failure
            pyode.solve(prob, pyode.Tsit5(), backend="julia")
    assert info.value.retcode is pyode.ReturnCode[code] and info.value.solution is not None
    with pytest.warns(JuliaLogWarning):
        sol = pyode.solve(prob, pyode.Tsit5(), backend="julia", throw=False)
    assert sol.retcode is pyode.ReturnCode[code]


@pytest.mark.parametrize(
    "sensealg", [pyode.DirectAdjoint(), pyode.BacksolveAdjoint(), pyode.GaussAdjoint()], ids=lambda s: type(s).__name__
)
def test_no_gradient_of_a_failed_solve(fake, sensealg):
    # Finding 4: SciMLSensitivity hands back a pullback of a failed solve (it differentiates the
    # partial solution); the stand-in does too, and it must never be called.
    fake.forced_retcode = "MaxIters"
    prob = pyode.ODEProblem(chain(), ones(2), (0.0, 1.0))
    with pytest.warns(JuliaLogWarning, match="max_iters"):
        sol = pyode.solve(prob, pyode.Tsit5(), backend="julia", throw=False, sensealg=sensealg)
    with pytest.raises(pyode.SolveError, match=r"ReturnCode.MaxIters, so it has no gradient") as info:
        sol.y.sum().backward()
    assert info.value.retcode is pyode.ReturnCode.MaxIters
    assert fake.pullback_calls == 0


def test_partial_solution_keeps_its_last_save_with_backsolve(fake):
    # t1 is added for BacksolveAdjoint and dropped again, but only when it was reached.
    prob = pyode.ODEProblem(chain(), ones(2), (0.0, 1.0))
    kw = dict(saveat=torch.linspace(0, 0.9, 10), rtol=1e-12, max_steps=3, throw=False)
    sol = pyode.solve(prob, pyode.Tsit5(), **kw)
    with pytest.warns(JuliaLogWarning):
        jl = pyode.solve(prob, pyode.Tsit5(), backend="julia", sensealg=pyode.BacksolveAdjoint(), **kw)
    assert fake.calls[-1]["saveat"][-1] == 1.0
    assert jl.retcode is pyode.ReturnCode.MaxIters and torch.equal(jl.t, sol.t) and len(jl.t) < 10


def test_partial_solution_when_julia_stops_early(fake):
    prob = pyode.ODEProblem(chain(), ones(2), (0.0, 1.0))
    sol = pyode.solve(prob, pyode.Tsit5(), saveat=torch.linspace(0, 1, 11), rtol=1e-12, max_steps=3, throw=False)
    with pytest.warns(JuliaLogWarning, match="max_iters"):
        jl = pyode.solve(
            prob, pyode.Tsit5(), saveat=torch.linspace(0, 1, 11), rtol=1e-12, max_steps=3, throw=False, backend="julia"
        )
    assert jl.retcode is pyode.ReturnCode.MaxIters and len(jl.t) == len(sol.t) < 11
    assert jl.y.shape[0] == len(jl.t)


# ----------------------------------------------------------------------------------------
# What the Julia engine refuses, before Julia starts
# ----------------------------------------------------------------------------------------


class MyTsit5(pyode.Tsit5):
    pass


REFUSALS = [
    ({"solver": pyode.Reversible(pyode.RK4()), "dt": 0.1}, NotImplementedError, "reversible"),
    ({"solver": pyode.ReversibleHeun(), "dt": 0.1}, NotImplementedError, "reversible"),
    ({"solver": MyTsit5()}, NotImplementedError, "built-in tableaus"),
    ({"solver": pyode.Rodas5P()}, NotImplementedError, "implicit solver Rodas5P()"),
    ({"solver": pyode.AutoSwitch(pyode.Tsit5(), pyode.Kvaerno5())}, NotImplementedError, "implicit solver AutoSwitch"),
    ({"sensealg": pyode.QuadratureAdjoint()}, NotImplementedError, "GaussAdjoint is SciML's quadrature adjoint"),
    ({"sensealg": pyode.ReversibleAdjoint()}, NotImplementedError, "no reversible solvers"),
    ({"sensealg": pyode.DirectAdjoint(checkpoint_every=10)}, NotImplementedError, "checkpoint_every"),
    ({"sensealg": pyode.GaussAdjoint(nodes=3)}, NotImplementedError, "nodes"),
    ({"sensealg": pyode.BacksolveAdjoint(rtol=1e-3)}, NotImplementedError, "rtol=..."),
    ({"sensealg": pyode.InterpolatingAdjoint(solver=pyode.DP5())}, NotImplementedError, "solver=..."),
    ({"internalnorm": pyode.max_norm}, NotImplementedError, "internalnorm"),
    ({"controller": pyode.PIController()}, NotImplementedError, "controller"),
    ({"dense": True}, NotImplementedError, "dense=True"),
    ({"regularize": True}, NotImplementedError, "regularizers"),
    ({"saveat": torch.linspace(0, 1, 3, requires_grad=True)}, NotImplementedError, "times"),
    ({"rtol": torch.tensor([1e-6, 1e-3])}, NotImplementedError, "per-element rtol/atol"),
]


@pytest.mark.parametrize(("kw", "error", "words"), REFUSALS)
def test_refusals_name_what_is_supported(kw, error, words):
    # No fake module: every refusal happens before Julia would start.
    kw = dict(kw)
    solver = kw.pop("solver", pyode.Tsit5())
    prob = pyode.ODEProblem(chain(), ones(2), (0.0, 1.0))
    with pytest.raises(error, match=words) as info:
        pyode.solve(prob, solver, backend="julia", **kw)
    assert "The Julia engine supports solvers Euler" in str(info.value)


@pytest.mark.parametrize(
    ("make", "error", "words"),
    [
        (lambda: pyode.ODEProblem(lambda t, y: -y, ones(2), (0, 1)), TypeError, "pyode.julia.Chain"),
        (lambda: pyode.ODEProblem(chain(), (ones(2), ones(2)), (0, 1)), TypeError, "tuple"),
        (lambda: pyode.ODEProblem(chain(), torch.ones(2, dtype=torch.float32), (0, 1)), TypeError, "one dtype"),
        (lambda: pyode.ODEProblem(chain(), ones(3, 2).t(), (0, 1)), ValueError, "state size 2"),
        (lambda: pyode.ODEProblem(chain(), ones(3), (0, 1)), ValueError, "state size 2"),
        (
            lambda: pyode.ODEProblem(chain(), ones(2), (torch.tensor(0.0, requires_grad=True), 1)),
            NotImplementedError,
            "times",
        ),
        (lambda: pyode.ODEProblem(chain(), ones(2), (0, 1), params=[ones(3)]), ValueError, "params"),
        (lambda: pyode.ODEProblem(chain(), ones(2), (1.0, 0.0)), NotImplementedError, "backward in time"),
    ],
)
def test_problems_the_julia_engine_refuses(make, error, words):
    with pytest.raises(error, match=words):
        pyode.solve(make(), pyode.Tsit5(), backend="julia")


def test_unknown_backend():
    with pytest.raises(ValueError, match='backend must be "torch" or "julia"'):
        pyode.solve(pyode.ODEProblem(chain(), ones(2), (0, 1)), pyode.Tsit5(), backend="jax")


# ----------------------------------------------------------------------------------------
# Starting Julia: missing pieces, version check, install, import order
# ----------------------------------------------------------------------------------------


@pytest.fixture
def fresh_runtime(monkeypatch):
    monkeypatch.setitem(_runtime._state, "module", None)
    monkeypatch.setitem(_runtime._state, "models", {})
    monkeypatch.setitem(_runtime._state, "error", None)


def test_missing_juliacall_says_how_to_get_julia(fresh_runtime, monkeypatch):
    monkeypatch.setitem(sys.modules, "juliacall", None)  # import juliacall -> ImportError
    monkeypatch.delenv("PYODE_JULIA", raising=False)
    prob = pyode.ODEProblem(chain(), ones(2), (0, 1))
    with pytest.raises(JuliaUnavailable, match=r"pip install 'pyode\[julia\]'"):
        pyode.solve(prob, pyode.Tsit5(), backend="julia")
    assert pyode.julia.available() is False
    monkeypatch.delitem(sys.modules, "juliacall")
    with pytest.raises(JuliaUnavailable, match="juliacall is not installed"):  # remembered, not retried
        _runtime.load()


def test_switched_off_by_environment(fresh_runtime, monkeypatch):
    monkeypatch.setenv("PYODE_JULIA", "0")
    with pytest.raises(JuliaUnavailable, match="switched off by PYODE_JULIA=0"):
        _runtime.load()


class FakeJuliacall(types.ModuleType):
    """juliacall as far as `_runtime` uses it: newmodule(...).include(path), then .PyODE."""

    def __init__(self, pyode_module=None, include_error=None):
        super().__init__("juliacall")
        self.pyode_module = pyode_module
        self.include_error = include_error
        self.included = []

    def newmodule(self, name):
        host = types.SimpleNamespace(PyODE=self.pyode_module)

        def include(path):
            self.included.append(path)
            if self.include_error:
                raise self.include_error

        host.include = include
        return host


def test_load_includes_the_packaged_source_and_checks_its_version(fresh_runtime, monkeypatch):
    jc = FakeJuliacall(FakePyODE())
    monkeypatch.setitem(sys.modules, "juliacall", jc)
    assert isinstance(_runtime.load(), FakePyODE)
    assert jc.included == [str(_runtime.JULIA_SOURCE)]
    assert _runtime.load() is _runtime.load()  # started once


def test_a_stale_julia_source_is_refused(fresh_runtime, monkeypatch):
    monkeypatch.setitem(sys.modules, "juliacall", FakeJuliacall(FakePyODE(version="0.0.1")))
    with pytest.raises(JuliaUnavailable, match=r"version 0\.0\.1 but pyode is"):
        _runtime.load()


def test_missing_julia_packages_say_to_install(fresh_runtime, monkeypatch):
    error = RuntimeError("ArgumentError: Package SciMLSensitivity not found in current path.")
    monkeypatch.setitem(sys.modules, "juliacall", FakeJuliacall(include_error=error))
    with pytest.raises(JuliaUnavailable, match=r"pyode.julia.install\(\)"):
        _runtime.load()


def test_install_declares_every_package_to_juliapkg(monkeypatch):
    log = []
    fake_juliapkg = types.SimpleNamespace(
        require_julia=lambda compat: log.append(("julia", compat)),
        add=lambda name, uuid, version=None: log.append(("add", name, uuid, version)),
        resolve=lambda: log.append(("resolve",)),
    )
    monkeypatch.setitem(sys.modules, "juliapkg", fake_juliapkg)
    pyode.julia.install()
    spec = _runtime.requirements()
    assert log[0] == ("julia", spec["julia"]) and log[-1] == ("resolve",)
    added = {entry[1]: entry[2:] for entry in log if entry[0] == "add"}
    assert added == {name: (e["uuid"], e.get("version")) for name, e in spec["packages"].items()}
    log.clear()
    pyode.julia.install(resolve=False)
    assert ("resolve",) not in log


def run_python(code, env_extra, tmp_path):
    """Run code in a fresh interpreter with a fake juliacall on the path that records the order."""
    fake = tmp_path / "juliacall.py"
    fake.write_text(
        textwrap.dedent(
            """
            import os, sys
            if os.environ.get("FAKE_JULIACALL_FAILS"):
                raise RuntimeError("no Julia here")
            TORCH_FIRST = "torch" in sys.modules
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", **env_extra}
    env.pop("PYODE_JULIA", None) if "PYODE_JULIA" not in env_extra else None
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=120
    )


def test_import_pyode_does_not_start_julia(tmp_path):
    out = run_python("import sys, pyode; print('juliacall' in sys.modules)", {}, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_pyode_julia_1_imports_juliacall_before_torch(tmp_path):
    out = run_python("import sys, pyode, juliacall; print(juliacall.TORCH_FIRST)", {"PYODE_JULIA": "1"}, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_a_failed_start_at_import_leaves_the_torch_engine_working(tmp_path):
    code = """
        import warnings, torch
        import pyode
        vf = pyode.julia.Chain(pyode.julia.Dense(2, 2))
        sol = pyode.solve(pyode.ODEProblem(vf, torch.ones(2), (0, 1)), pyode.Tsit5())
        try:
            pyode.solve(pyode.ODEProblem(vf, torch.ones(2), (0, 1)), pyode.Tsit5(), backend="julia")
        except pyode.backends.julia.JuliaUnavailable as e:
            print("unavailable:", "no Julia here" in str(e))
    """
    out = run_python(code, {"PYODE_JULIA": "1", "FAKE_JULIACALL_FAILS": "1"}, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "unavailable: True"
    assert "PYODE_JULIA is set but the Julia engine cannot start" in out.stderr


def test_juliacall_after_torch_warns(tmp_path):
    code = """
        import warnings, torch, pyode
        from pyode.backends.julia import _runtime, JuliaImportOrderWarning
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _runtime.import_juliacall()
        print([w.category.__name__ for w in caught])
    """
    out = run_python(code, {}, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "JuliaImportOrderWarning" in out.stdout


def test_neural_ode_module_on_the_julia_engine(fake):
    vf = chain()
    model = pyode.nn.NeuralODE(vf, saveat=torch.linspace(0, 1, 4), sensealg=pyode.GaussAdjoint(), backend="julia")
    sol = model(torch.randn(5, 2, dtype=torch.float64))
    assert fake.calls[-1]["sensealg"] == "GaussAdjoint" and sol.y.shape == (4, 5, 2)
    sol.y.pow(2).mean().backward()
    assert vf.theta.grad is not None and vf.theta.grad.abs().sum() > 0
    assert sol.adjoint_stats.nfe == 7


def test_local_regularization_on_the_julia_engine(fake):
    # y(t_s) comes from Julia (t_s is added to the save times sent); the local step runs the Chain in torch.
    vf = chain()
    prob = pyode.ODEProblem(vf, torch.randn(3, 2, dtype=torch.float64), (0.0, 1.0))
    ts = torch.linspace(0, 1, 5)
    kw = dict(saveat=ts, sensealg=pyode.GaussAdjoint(), regularize=pyode.LocalRegularization())
    torch.manual_seed(4)
    jl = pyode.solve(prob, pyode.Tsit5(), backend="julia", **kw)
    torch.manual_seed(4)
    pt = pyode.solve(prob, pyode.Tsit5(), **kw)
    sent = fake.calls[-1]["saveat"]
    assert len(sent) == 6 and jl.regularization_time in sent.tolist()
    assert jl.y.shape == (5, 3, 2) and torch.equal(jl.t, pt.t)
    # y(t_s) differs by rounding between the two evaluation orders (~1e-15); R_E divides a
    # cancellation of O(1) stages by atol + rtol·|y| ≈ 1e-6, so rounding shows near 1e-14 there.
    torch.testing.assert_close(jl.error_estimate, pt.error_estimate, rtol=0, atol=1e-12)
    torch.testing.assert_close(jl.stiffness_estimate, pt.stiffness_estimate, rtol=1e-9, atol=0)
    (jl.y.sum() + jl.error_estimate + jl.stiffness_estimate).backward()
    assert vf.theta.grad is not None and torch.isfinite(vf.theta.grad).all()


# ----------------------------------------------------------------------------------------
# What SciMLSensitivity answers wrongly, repaired or refused before it gets there (issue 11).
# The stand-in answers these requests as SciMLSensitivity does (see fake_julia.py), so each
# test fails against a Python side that forwards them unchanged.
# ----------------------------------------------------------------------------------------


def gradients(sol, vf, y0, weights):
    return torch.autograd.grad((sol.y * weights).sum(), (vf.theta, y0), allow_unused=True)


@pytest.mark.parametrize(
    ("solver", "kw", "checkpointing"),
    [
        (pyode.Euler(), {"dt": 0.05}, False),
        (pyode.Midpoint(), {"dt": 0.05}, False),
        (pyode.RK4(), {"dt": 0.05}, False),
        (pyode.DP5(), {"dt": 0.05, "adaptive": False}, False),
        (pyode.Heun(), {}, True),
        (pyode.Tsit5(), {}, True),
    ],
    ids=["Euler", "Midpoint", "RK4", "DP5-fixed", "Heun", "Tsit5"],
)
def test_interpolating_adjoint_checkpoints_only_adaptive_solves(fake, solver, kw, checkpointing):
    # Finding 1: SciMLSensitivity re-solves checkpoint intervals with reltol/abstol only, so a
    # fixed-step solve is sent without checkpointing: the same gradient, more memory.
    torch.manual_seed(2)
    vf = chain()
    y0 = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    kw = dict(kw, saveat=torch.linspace(0, 1, 5))
    jl, pt = both_engines(vf, y0, solver, sensealg=pyode.InterpolatingAdjoint(), **kw)
    assert fake.calls[-1]["checkpointing"] is checkpointing
    if checkpointing:
        return
    weights = torch.randn(jl.y.shape, dtype=torch.float64)
    pt = pyode.solve(pyode.ODEProblem(vf, y0, (0.0, 1.0)), solver, sensealg=pyode.DirectAdjoint(), **kw)
    # The stand-in differentiates the fixed-step solve exactly, as DirectAdjoint does: rounding only.
    for a, b in zip(gradients(jl, vf, y0, weights), gradients(pt, vf, y0, weights)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_the_stand_in_models_the_checkpoint_re_solve(fake, monkeypatch):
    # What the repair above avoids: the request reaching SciMLSensitivity unchanged.
    from pyode.backends.julia import _solve

    def unchanged(*args, **kwargs):
        request = build_request(*args, **kwargs)
        request.kwargs["checkpointing"] = True
        return request

    build_request = _solve.build_request
    monkeypatch.setattr(_solve, "build_request", unchanged)
    prob = pyode.ODEProblem(chain(), ones(2), (0.0, 1.0))
    sol = pyode.solve(prob, pyode.Euler(), dt=0.1, sensealg=pyode.InterpolatingAdjoint(), backend="julia")
    with pytest.raises(JuliaError, match="Fixed timestep methods require a choice of dt"):
        sol.y.sum().backward()


@pytest.mark.parametrize("dtype", DTYPES)
def test_backsolve_saves_t1_and_drops_it_again(fake, dtype):
    # Finding 2: SciMLSensitivity's BacksolveAdjoint starts the reverse solve at t1 from the last
    # saved state, which is y(t1) only if t1 is saved.
    torch.manual_seed(3)
    vf = chain(dtype)
    y0 = torch.randn(3, 2, dtype=dtype, requires_grad=True)
    ts = torch.linspace(0, 0.8, 5)
    jl, pt = both_engines(vf, y0, saveat=ts, sensealg=pyode.BacksolveAdjoint())
    sent = fake.calls[-1]["saveat"]
    assert sent[-1] == 1.0 and len(sent) == 6
    torch.testing.assert_close(jl.t, ts.double())
    assert jl.y.shape == (5, 3, 2)
    torch.testing.assert_close(jl.y, pt.y, rtol=TOL[dtype], atol=TOL[dtype])
    weights = torch.randn(jl.y.shape, dtype=dtype)
    pt = pyode.solve(pyode.ODEProblem(vf, y0, (0.0, 1.0)), pyode.Tsit5(), saveat=ts, sensealg=pyode.DirectAdjoint())
    for a, b in zip(gradients(jl, vf, y0, weights), gradients(pt, vf, y0, weights)):
        torch.testing.assert_close(a, b, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize(
    "sensealg", [pyode.InterpolatingAdjoint(), pyode.GaussAdjoint()], ids=lambda s: type(s).__name__
)
def test_float32_states_interpolated_in_float64_come_back_float32(fake, sensealg):
    # Finding 3: with save times these adjoints interpolate in the Float64 time type.
    torch.manual_seed(4)
    vf = chain(torch.float32)
    y0 = torch.randn(3, 2, dtype=torch.float32, requires_grad=True)
    jl, pt = both_engines(vf, y0, saveat=torch.linspace(0, 1, 4), sensealg=sensealg)
    assert jl.y.dtype == torch.float32
    torch.testing.assert_close(jl.y, pt.y, rtol=TOL[torch.float32], atol=TOL[torch.float32])
    g_theta, g_y0 = torch.autograd.grad(jl.y.sum(), (vf.theta, y0))
    assert g_theta.dtype == g_y0.dtype == torch.float32


@pytest.mark.parametrize("code", ["MaxIters", "DtLessThanMin", "Unstable"])
def test_a_failed_reverse_pass_raises_on_backward(fake, code):
    # Finding 5: SciMLSensitivity drops the reverse solve's return code; PyODE.jl reads a
    # failure from the solver's log and the backward pass raises it.
    fake.reverse_retcode = code
    vf = chain()
    sol = pyode.solve(
        pyode.ODEProblem(vf, ones(2), (0.0, 1.0)), pyode.Tsit5(), sensealg=pyode.BacksolveAdjoint(), backend="julia"
    )
    with pytest.warns(JuliaLogWarning, match="Verbosity toggle"):
        with pytest.raises(
            pyode.SolveError, match=rf"backward pass of the Julia solve failed with ReturnCode.{code}"
        ) as info:
            sol.y.sum().backward()
    assert info.value.retcode is pyode.ReturnCode[code] and info.value.solution is sol
    assert vf.theta.grad is None
    assert sol.adjoint_stats.nfe == 7  # the evaluations are still counted


def test_julia_log_messages_become_python_warnings(fake):
    fake.forced_retcode = "MaxIters"
    prob = pyode.ODEProblem(chain(), ones(2), (0.0, 1.0))
    with pytest.warns(JuliaLogWarning, match=r"^Julia: Verbosity toggle: max_iters"):
        pyode.solve(prob, pyode.Tsit5(), backend="julia", throw=False)


# ----------------------------------------------------------------------------------------
# Finding 7: signals, double backward, the GIL, sol(t)
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "xoptions", "expected"),
    [
        ({}, {}, None),
        ({"JULIA_NUM_THREADS": "1"}, {}, None),
        ({"PYTHON_JULIACALL_THREADS": "4"}, {}, "yes"),
        ({"JULIA_NUM_THREADS": "2,1"}, {}, "yes"),
        ({"JULIA_NUM_THREADS": "auto"}, {}, "yes" if (os.cpu_count() or 1) > 1 else None),
        ({"PYTHON_JULIACALL_THREADS": "1", "JULIA_NUM_THREADS": "8"}, {}, None),
        ({}, {"juliacall-threads": "3"}, "yes"),
        ({"PYTHON_JULIACALL_THREADS": "4", "PYTHON_JULIACALL_HANDLE_SIGNALS": "no"}, {}, "no"),
        ({"PYTHON_JULIACALL_THREADS": "4"}, {"juliacall-handle-signals": "no"}, None),
    ],
)
def test_julia_handles_signals_only_with_threads(tmp_path, monkeypatch, env, xoptions, expected):
    # With one Julia thread Python keeps its signals (Ctrl-C); with more, PythonCall needs Julia's.
    (tmp_path / "juliacall.py").write_text(
        "import os\nHANDLE_SIGNALS = os.environ.get('PYTHON_JULIACALL_HANDLE_SIGNALS')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "juliacall", None)
    monkeypatch.delitem(sys.modules, "juliacall")
    for name in ("PYTHON_JULIACALL_THREADS", "JULIA_NUM_THREADS", "PYTHON_JULIACALL_HANDLE_SIGNALS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name, value in xoptions.items():
        monkeypatch.setitem(sys._xoptions, name, value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pyode.backends.julia.JuliaImportOrderWarning)
        juliacall = _runtime.import_juliacall()
    assert juliacall.HANDLE_SIGNALS == expected


def test_backward_is_once_differentiable(fake):
    vf = chain()
    y0 = ones(2).requires_grad_(True)
    sol = pyode.solve(
        pyode.ODEProblem(vf, y0, (0.0, 1.0)), pyode.Tsit5(), sensealg=pyode.GaussAdjoint(), backend="julia"
    )
    (g,) = torch.autograd.grad(sol.y.pow(2).sum(), vf.theta, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        g.sum().backward()


def test_julia_calls_release_the_gil(fake):
    vf = chain()
    sol = pyode.solve(
        pyode.ODEProblem(vf, ones(2), (0.0, 1.0)), pyode.Tsit5(), sensealg=pyode.GaussAdjoint(), backend="julia"
    )
    sol.y.sum().backward()
    assert fake.gil == [("solve_forward", "nogil"), ("pullback", "nogil")]


def test_sol_t_is_refused_by_name_on_the_julia_engine(fake):
    sol = pyode.solve(pyode.ODEProblem(chain(), ones(2), (0.0, 1.0)), pyode.Tsit5(), backend="julia")
    with pytest.raises(ValueError, match=r"sol\(t\) is not available on the Julia engine.*saveat="):
        sol(0.5)


def test_local_regularization_without_saveat_on_the_julia_engine(fake):
    vf = chain()
    prob = pyode.ODEProblem(vf, torch.randn(3, 2, dtype=torch.float64), (0.0, 1.0))
    sol = pyode.solve(
        prob, pyode.Tsit5(), sensealg=pyode.GaussAdjoint(), regularize=pyode.LocalRegularization(), backend="julia"
    )
    assert torch.isfinite(sol.error_estimate) and torch.isfinite(sol.stiffness_estimate)
    (sol.y.sum() + sol.error_estimate + sol.stiffness_estimate).backward()
    assert torch.isfinite(vf.theta.grad).all()
