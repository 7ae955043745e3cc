"""The Julia engine's Julia code, checked without Julia: syntax, every package name it uses,
its juliapkg.json, and agreement with the Python side on names, keywords and version.

No Julia runtime can be installed where pyode is developed, so these checks turn what was
read from the packages' source (at the versions named below) into regressions. The runtime tests are
in tests_julia/.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import pyode
from pyode.backends.julia import _marshal, _request, _runtime
from pyode.integrate import make_options

from . import jlsyntax
from .fake_julia import FakePyODE

ROOT = Path(__file__).resolve().parents[2]
JULIA_FILES = sorted((ROOT / "julia").rglob("*.jl"))
PYODE_JL = ROOT / "julia" / "PyODE.jl"

# Every name PyODE.jl may take from a package, with where it was read (file:line in each
# package's source at these releases: SciMLSensitivity 7.112.3, OrdinaryDiffEq monorepo at
# OrdinaryDiffEqCore 4.15.0, SciMLBase 3.49.2, Lux 1.31.4, ComponentArrays 0.15.45,
# ChainRulesCore 1.26).
ALLOWED: dict[str, set[str]] = {
    # ignore_derivatives(f) and the AbstractZero tangent type: ChainRulesCore's public API.
    "ChainRulesCore": {"ChainRulesCore", "ignore_derivatives", "AbstractZero"},
    # src/ComponentArrays.jl: export ComponentArray, ..., getaxes, getdata.
    "ComponentArrays": {"ComponentArray", "getaxes", "getdata"},
    # The standard library's logger interface (Julia manual, Logging: AbstractLogger with
    # handle_message, shouldlog, min_enabled_level, catch_exceptions; with_logger; Warn).
    "Logging": {
        "Logging",
        "AbstractLogger",
        "handle_message",
        "shouldlog",
        "min_enabled_level",
        "catch_exceptions",
        "with_logger",
        "Warn",
    },
    # src/Lux.jl: export Chain, Dense; LuxCore.setup re-exported; NNlib activations re-exported.
    "Lux": {"Lux", "Chain", "Dense", "setup", "relu", "sigmoid", "softplus", "swish"},
    # lib/OrdinaryDiffEqHighOrderRK/src/OrdinaryDiffEqHighOrderRK.jl:36 `export ..., DP8, ...`.
    "OrdinaryDiffEqHighOrderRK": {"DP8"},
    # lib/OrdinaryDiffEqLowOrderRK/src/OrdinaryDiffEqLowOrderRK.jl:45-47.
    "OrdinaryDiffEqLowOrderRK": {"Euler", "Midpoint", "Heun", "RK4", "BS3", "DP5"},
    # lib/OrdinaryDiffEqTsit5/src/OrdinaryDiffEqTsit5.jl:135 `export Tsit5, AutoTsit5`.
    "OrdinaryDiffEqTsit5": {"Tsit5"},
    # get_EEst replaces integrator.EEst (controllers.jl:171-173, `public`, not exported).
    "OrdinaryDiffEqCore": {"OrdinaryDiffEqCore", "get_EEst"},
    "Random": {"Random", "Xoshiro"},
    # src/SciMLBase.jl:2106-2140 exports solve, ODEProblem, ODEFunction; successful_retcode is @public.
    "SciMLBase": {"SciMLBase", "solve", "ODEProblem", "ODEFunction", "ReturnCode", "successful_retcode"},
    # src/SciMLSensitivity.jl:101-111 exports.
    "SciMLSensitivity": {
        "BacksolveAdjoint",
        "InterpolatingAdjoint",
        "GaussAdjoint",
        "QuadratureAdjoint",
        "ReverseDiffAdjoint",
        "ZygoteVJP",
    },
    "Zygote": {"Zygote", "pullback"},
    # Standard libraries the Julia test file uses.
    "LinearAlgebra": {"LinearAlgebra", "exp"},
}
STDLIB_FOR_TESTS = {"Test", "LinearAlgebra"}

# uuids read from each package's Project.toml (the `uuid` field at the releases named above).
UUIDS = {
    "ChainRulesCore": "d360d2e6-b24c-11e9-a2a3-2a2ae2dbcce4",
    "ComponentArrays": "b0b7db55-cfe3-40fc-9ded-d10e2dbeff66",
    # a standard library; its uuid from SciMLLogging 2.0.3's Project.toml [deps]
    "Logging": "56ddb016-857b-54e1-b83d-db4d58db5568",
    "Lux": "b2108857-7c20-44ae-9111-449ecde12c47",
    "OrdinaryDiffEqCore": "bbf590c4-e513-4bbe-9b18-05decba2e5d8",
    "OrdinaryDiffEqHighOrderRK": "d28bc4f8-55e1-4f49-af69-84c1a99f0f58",
    "OrdinaryDiffEqLowOrderRK": "1344f307-1e59-4825-a18e-ace9aa3fa4c6",
    "OrdinaryDiffEqTsit5": "b1df2697-797e-41e3-8120-5422d3b24e4a",
    "Random": "9a3f8284-a2c9-5f02-9a11-845980a1fd5c",
    "SciMLBase": "0bca4576-84f4-4d90-8ffe-ffa030f20462",
    "SciMLSensitivity": "1ed8b502-d754-442c-8d5d-10ac956f44a1",
    "Zygote": "e88e6eb3-aa80-5325-afca-941959d7151f",
}
UUID_FORM = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def tree(path: Path):
    return jlsyntax.parse(path.read_bytes())


def test_there_are_julia_files():
    assert PYODE_JL in JULIA_FILES and len(JULIA_FILES) >= 2


@pytest.mark.parametrize("path", JULIA_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_julia_file_parses_cleanly(path):
    assert jlsyntax.syntax_problems(path.read_bytes(), str(path)) == []


@pytest.mark.parametrize(
    "broken",
    [b"y = [1, 2\n", b"function f(x)\n  x + 1\n", b"module M\nusing A: b,\nend\n", b"f(x) = (x + 1\n"],
)
def test_the_syntax_check_catches_errors(broken):
    assert jlsyntax.syntax_problems(broken) != []


@pytest.mark.parametrize("path", JULIA_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_imported_name_is_allowed(path):
    for module, names in jlsyntax.imports(tree(path)):
        assert module in ALLOWED or module in STDLIB_FOR_TESTS, f"{path.name}: package {module} not in the allow-list"
        if names is None:
            # A bare `using X` hides which names are used; only the tests' stdlibs may do it.
            assert module in STDLIB_FOR_TESTS, f"{path.name}: `using {module}` must list its names"
            continue
        unknown = set(names) - ALLOWED[module]
        assert not unknown, f"{path.name}: {module} does not provide {sorted(unknown)} (per the allow-list)"


@pytest.mark.parametrize("path", JULIA_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_qualified_name_is_allowed(path):
    root = tree(path)
    used = jlsyntax.qualified_names(root, set(ALLOWED))
    unknown = {(m, n) for m, n in used if n not in ALLOWED[m]}
    assert not unknown, f"{path.name}: names not in the allow-list: {sorted(unknown)}"


def test_allow_list_check_flags_a_wrong_name():
    root = jlsyntax.parse(b"module M\nusing Lux: Lux\nx = Lux.NotAThing\nend\n")
    assert ("Lux", "NotAThing") in jlsyntax.qualified_names(root, set(ALLOWED))


@pytest.mark.parametrize("path", JULIA_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_integrator_EEst(path):
    # OrdinaryDiffEqCore >= 4 removed the field; get_EEst(integrator) replaces it.
    assert "EEst" not in jlsyntax.field_accesses(tree(path))
    assert ".EEst" not in path.read_text()


def test_pyode_names_used_by_the_julia_tests_exist():
    defined = jlsyntax.module_definitions(tree(PYODE_JL))
    assert {"solve_forward", "build_model", "dense", "SemiNorm", "Model", "SOLVERS", "version"} <= defined
    test_file = ROOT / "julia" / "test" / "runtests.jl"
    used = {n for m, n in jlsyntax.qualified_names(tree(test_file), {"PyODE"})}
    assert used and used <= defined, f"runtests.jl uses undefined PyODE names: {sorted(used - defined)}"


def test_python_calls_only_what_PyODE_jl_defines():
    defined = jlsyntax.module_definitions(tree(PYODE_JL))
    source = Path(_runtime.__file__).read_text() + (Path(_runtime.__file__).parent / "_solve.py").read_text()
    called = set(re.findall(r"\bmodule\.([A-Za-z_]\w*)(?:\._jl_call_nogil)?\(", source))
    assert called == {"version", "dense", "build_model", "nparams", "solve_forward"}
    assert called <= defined


def test_python_keywords_match_solve_forward():
    keywords = jlsyntax.keyword_parameters(tree(PYODE_JL), "solve_forward")
    vf = pyode.julia.Chain(pyode.julia.Dense(2, 2))
    prob = pyode.ODEProblem(vf, torch.zeros(2), (0.0, 1.0))
    opts = make_options(prob, pyode.Tsit5())
    built = _request.build_request(prob, pyode.Tsit5(), opts, None, given={}, regularize=False)
    sent = set(built.kwargs) | {"differentiate"}
    assert sent == keywords, (
        f"Python sends {sorted(sent - keywords)} that Julia lacks; Julia has {sorted(keywords - sent)}"
    )


@pytest.mark.parametrize(
    ("const", "python"),
    [
        ("SOLVERS", set(_request.SOLVERS)),
        ("SENSEALGS", set(_request.SENSEALGS)),
        ("ACTIVATIONS", set(pyode.julia.ACTIVATIONS)),
        ("SEMINORM_LAYOUTS", {"BacksolveAdjoint", "InterpolatingAdjoint"}),
    ],
)
def test_one_table_of_names_on_both_sides(const, python):
    assert set(jlsyntax.dict_keys(tree(PYODE_JL), const)) == python


def test_failures_read_from_the_julia_log_are_return_codes_python_knows():
    toggles = {key: value.strip('"') for key, value in jlsyntax.dict_items(tree(PYODE_JL), "FAILURE_TOGGLES")}
    # check_error's failures (DiffEqBase check_error.jl:76-115), by their SciMLLogging toggle.
    assert {"max_iters", "dt_min_unstable", "dt_epsilon", "instability", "dt_NaN"} <= set(toggles)
    # ConvergenceFailure (implicit solvers only) becomes ReturnCode.Failure, keeping its name.
    assert set(toggles.values()) - set(_marshal.RETCODES) <= {"ConvergenceFailure"}


def test_the_stand_in_returns_what_PyODE_jl_returns():
    # The tests of the Python side run against fake_julia.py; it must answer in PyODE.jl's shape.
    fake = FakePyODE()
    vf = pyode.julia.Chain(pyode.julia.Dense(2, 2), dtype=torch.float64)
    model = fake.build_model(2, fake.dense(2, 2, "identity", True))
    theta, u0 = vf.theta.detach().numpy(), np.ones(2)
    kw = dict(solver="Tsit5", sensealg="GaussAdjoint", seminorm=False, checkpointing=False, rtol=1e-6, atol=1e-8)
    kw.update(dt=None, adaptive=True, dtmin=None, dtmax=None, maxiters=100, tstops=None, differentiate=True)
    result = fake.solve_forward(model, theta, u0, 0.0, 1.0, None, **kw)
    assert len(result) == jlsyntax.return_arity(tree(PYODE_JL), "solve_forward(") == 8
    pulled = result[6](np.ones(np.asarray(result[0]).size))
    assert len(pulled) == jlsyntax.return_arity(tree(PYODE_JL), "(pb::Pullback") == 5


def test_tests_julia_compares_fixed_steps_only_for_fixed_step_solvers():
    # tests_julia/ compares fixed-step solves to rounding; Heun is adaptive in pyode (issue 11,
    # finding 6). Read without importing: that module may start Julia.
    source = (ROOT / "tests_julia" / "test_julia_engine.py").read_text()
    node = next(
        n
        for n in ast.parse(source).body
        if isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "FIXED" for t in n.targets)
    )
    fixed = set(ast.literal_eval(node.value))
    assert fixed == {name for name in _request.SOLVERS if not getattr(pyode, name)().adaptive}


def test_julia_version_tag_is_pyode_version():
    match = re.search(r'const VERSION_TAG = "([^"]+)"', PYODE_JL.read_text())
    assert match and match.group(1) == pyode.__version__


def juliapkg_json():
    return json.loads((ROOT / "juliapkg.json").read_text())


def test_juliapkg_json_lists_every_package_with_its_uuid():
    spec = juliapkg_json()
    assert spec["julia"] == "^1.10.3"  # juliacall 0.9.37's own requirement; the packages need 1.10
    packages = spec["packages"]
    used = {m for m, _ in jlsyntax.imports(tree(PYODE_JL))}
    assert used <= set(packages), f"used but not in juliapkg.json: {sorted(used - set(packages))}"
    for name, entry in packages.items():
        assert UUID_FORM.match(entry["uuid"]), name
        assert entry["uuid"] == UUIDS[name], name
        assert set(entry) <= {"uuid", "version"}, name


def test_juliapkg_compat_bounds_parse():
    compat = pytest.importorskip("juliapkg.compat", reason="juliapkg (pyode[julia]) parses Julia compat bounds")
    for name, entry in juliapkg_json()["packages"].items():
        if "version" in entry:
            assert str(compat.Compat.parse(entry["version"])), name
    assert str(compat.Compat.parse(juliapkg_json()["julia"]))


def test_the_package_ships_the_same_julia_files():
    # pyode/backends/julia/{PyODE.jl,juliapkg.json} link to the top-level files (a wheel copies them).
    assert _runtime.JULIA_SOURCE.read_bytes() == PYODE_JL.read_bytes()
    assert _runtime.JULIAPKG_FILE.read_bytes() == (ROOT / "juliapkg.json").read_bytes()
    assert _runtime.requirements() == juliapkg_json()
