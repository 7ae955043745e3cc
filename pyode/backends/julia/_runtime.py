"""Starting Julia: the only place pyode imports juliacall.

`import pyode` never starts Julia. The first solve with `backend="julia"` (or `load()`) imports
juliacall, which starts Julia, resolves the Julia packages through juliapkg, and loads
`PyODE.jl` into a fresh module. This file imports neither torch nor the rest of pyode, so
`pyode/__init__.py` can import it before torch (see `import_juliacall`).

Hazards handled here (from juliacall's documentation and issues): juliacall imported after torch can corrupt the heap on
some systems and breaks when a system libstdc++ was loaded first, so we warn when torch came
first and say how to import in the safe order; Julia handles signals only when it runs more
than one thread, which is when PythonCall needs it (see `_default_signal_handling`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# In the source tree these are links to julia/PyODE.jl and the top-level juliapkg.json; in a
# wheel they are copies. Either way they sit three levels below site-packages, where juliapkg
# never looks, so an installed pyode adds nothing to other juliacall users' environments
# until `pyode.julia.install()` is called.
JULIA_SOURCE = HERE / "PyODE.jl"
JULIAPKG_FILE = HERE / "juliapkg.json"

HOW_TO_GET_JULIA = (
    "To use the Julia engine: (1) pip install 'pyode[julia]'; (2) have Julia >= 1.10 on PATH "
    "(https://julialang.org/downloads, or juliaup), or let juliapkg download it; (3) in Python, "
    "run pyode.julia.install() once to install SciMLSensitivity, OrdinaryDiffEq and Lux. "
    "Everything else in pyode runs on the torch engine without Julia."
)

IMPORT_ORDER_MESSAGE = (
    "juliacall is being imported after torch. On some systems that corrupts the heap or fails with "
    "'PythonCall.jl did not start properly' (a libstdc++ clash). Import in the safe order instead: "
    "set PYODE_JULIA=1 before `import pyode` (pyode then imports juliacall before torch), or "
    "`import juliacall` before anything imports torch."
)


class JuliaUnavailable(RuntimeError):
    """The Julia engine cannot start here; the message says why and how to get it."""


class JuliaImportOrderWarning(RuntimeWarning):
    """juliacall was imported after torch (see `IMPORT_ORDER_MESSAGE`)."""


class JuliaLogWarning(RuntimeWarning):
    """A warning Julia logged during a solve or its pullback (SciML's diagnostics, e.g. a
    solver failure's details). Julia's log is captured while the GIL is released and
    re-emitted here, since Julia must not write to Python's streams then."""


_state: dict[str, Any] = {"module": None, "error": None, "models": {}}


def wanted_at_import() -> bool:
    """Whether PYODE_JULIA asks for juliacall to be imported with pyode (before torch)."""
    return os.environ.get("PYODE_JULIA", "").strip().lower() in ("1", "yes", "true", "on")


def import_juliacall() -> Any:
    """Import juliacall (which starts Julia), warning if torch was imported first."""
    if sys.modules.get("juliacall") is not None:
        return sys.modules["juliacall"]
    try:
        found = "juliacall" not in sys.modules and importlib.util.find_spec("juliacall") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise JuliaUnavailable(f"juliacall is not installed. {HOW_TO_GET_JULIA}")
    if "torch" in sys.modules:
        warnings.warn(IMPORT_ORDER_MESSAGE, JuliaImportOrderWarning, stacklevel=3)
    _default_signal_handling()
    try:
        import juliacall
    except ImportError as err:
        raise JuliaUnavailable(f"juliacall is not installed. {HOW_TO_GET_JULIA}") from err
    except Exception as err:  # juliapkg could not find/download Julia or resolve packages, ...
        raise JuliaUnavailable(
            f"juliacall failed to start Julia ({type(err).__name__}: {err}). {HOW_TO_GET_JULIA}"
        ) from err
    return juliacall


def _julia_threads_requested() -> bool:
    """Whether juliacall will start Julia with more than one thread.

    juliacall reads `-X juliacall-threads`, then PYTHON_JULIACALL_THREADS, then
    JULIA_NUM_THREADS (default 1) (PythonCall 0.9.34 pysrc/juliacall/__init__.py:67-85, 176-177).
    The value is a count, "auto", or "N,M" (N default threads, M interactive ones).
    """
    value = sys._xoptions.get("juliacall-threads")
    if value is None or value is True:
        value = os.environ.get("PYTHON_JULIACALL_THREADS")
    if value is None:
        value = os.environ.get("JULIA_NUM_THREADS", "1")
    first = str(value).split(",")[0].strip()
    if first == "auto":
        return (os.cpu_count() or 1) > 1
    try:
        return int(first) > 1
    except ValueError:
        return False  # juliacall rejects it itself, with its own message


def _default_signal_handling() -> None:
    """Let Julia handle signals when it will run more than one thread, unless the user chose.

    With several Julia threads, Julia's GC safepoints deliberately segfault and must be
    handled by Julia (PythonCall docs/src/juliacall.md:212-224; juliacall warns otherwise,
    __init__.py:294-310). That also stops Ctrl-C raising KeyboardInterrupt for the whole
    process, so with one thread (juliacall's default) Python keeps its signals.
    """
    if "juliacall-handle-signals" in sys._xoptions or "PYTHON_JULIACALL_HANDLE_SIGNALS" in os.environ:
        return
    if _julia_threads_requested():
        os.environ["PYTHON_JULIACALL_HANDLE_SIGNALS"] = "yes"


def import_at_startup() -> None:
    """Import juliacall now (from `pyode/__init__.py`, before torch). A failure becomes a
    warning, so the torch engine still works; `backend="julia"` then raises it."""
    try:
        import_juliacall()
    except JuliaUnavailable as err:
        _state["error"] = err
        warnings.warn(f"PYODE_JULIA is set but the Julia engine cannot start: {err}", RuntimeWarning, stacklevel=3)


def load() -> Any:
    """The loaded `PyODE` Julia module, starting Julia on the first call.

    Raises:
        JuliaUnavailable: juliacall is missing, Julia cannot be found or started, or the Julia
            packages are not installed; the message says what to do.
    """
    if _state["module"] is not None:
        return _state["module"]
    if _state["error"] is not None:  # a failed start is not retried (it can cost a network timeout)
        raise JuliaUnavailable(str(_state["error"]))
    try:
        module = _start()
    except JuliaUnavailable as err:
        _state["error"] = err
        raise
    _state["module"] = module
    return module


def _start() -> Any:
    if os.environ.get("PYODE_JULIA", "").strip().lower() in ("0", "no", "false", "off"):
        raise JuliaUnavailable(f"the Julia engine is switched off by PYODE_JULIA={os.environ['PYODE_JULIA']}")
    juliacall = import_juliacall()
    host = juliacall.newmodule("PyODEHost")
    try:
        host.include(str(JULIA_SOURCE))
    except Exception as err:
        text = str(err)
        if "not found in current path" in text or ("Package" in text and "not found" in text):
            raise JuliaUnavailable(
                f"Julia started, but the Julia engine's packages are not installed ({text.splitlines()[0]}). "
                "Run pyode.julia.install() once."
            ) from err
        raise
    module = host.PyODE
    from ... import __version__

    if str(module.version()) != __version__:
        raise JuliaUnavailable(
            f"{JULIA_SOURCE} is version {module.version()} but pyode is {__version__}; reinstall pyode"
        )
    return module


def model_for(spec: Any, module: Any) -> Any:
    """The Julia model for a `pyode.julia.Chain`, built once per architecture."""
    key = tuple((d.in_features, d.out_features, d.activation, d.bias) for d in spec.layers)
    model = _state["models"].get(key)
    if model is None:
        layers = [module.dense(n_in, n_out, act, bias) for n_in, n_out, act, bias in key]
        model = module.build_model(key[0][0], *layers)
        if int(module.nparams(model)) != spec.num_params:
            raise RuntimeError(
                f"the Lux model has {int(module.nparams(model))} parameters but pyode's description of it has "
                f"{spec.num_params}: the two engines disagree on the layout"
            )
        _state["models"][key] = model
    return model


def requirements() -> dict[str, Any]:
    """The Julia engine's juliapkg requirements (the packaged juliapkg.json)."""
    return json.loads(JULIAPKG_FILE.read_text())


def install(resolve: bool = True) -> None:
    """Add the Julia engine's packages to juliapkg's requirements and (by default) resolve them.

    Raises:
        JuliaUnavailable: juliapkg is not installed.
    """
    try:
        import juliapkg
    except ImportError as err:
        raise JuliaUnavailable(f"juliapkg is not installed. {HOW_TO_GET_JULIA}") from err
    spec = requirements()
    juliapkg.require_julia(spec["julia"])
    for name, entry in spec["packages"].items():
        juliapkg.add(name, entry["uuid"], version=entry.get("version"))
    if resolve:
        juliapkg.resolve()
