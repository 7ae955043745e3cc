"""Whether the Julia engine can run here. Runtime tests of the Julia engine: real juliacall, real Julia. Run them in their own process,
before anything imports torch (juliacall must come first):

    python -m pytest tests_julia

Without Julia every test here is skipped with the reason. See docs/julia.md for the
first run on a machine with Julia.
"""

from __future__ import annotations

import os
import shutil
import sys


def _julia_available() -> tuple[bool, str]:
    """(True, "") when juliacall starts Julia here; otherwise (False, why).

    Only a missing Julia skips. Once juliacall has started Julia, a PyODE.jl that fails to load
    fails every test (each calls `load()`), since that is the error these tests exist to catch.
    With PYODE_TEST_JULIA=1 nothing skips: a juliacall that cannot start is an error too.
    """
    setting = os.environ.get("PYODE_TEST_JULIA")
    if setting == "0":
        return False, "PYODE_TEST_JULIA=0"
    on_path = shutil.which("julia") or os.environ.get("PYTHON_JULIAPKG_EXE") or os.environ.get("PYTHON_JULIACALL_EXE")
    if setting != "1" and not on_path:
        return False, "no Julia runtime on PATH or in PYTHON_JULIAPKG_EXE (juliapkg cannot download one here)"
    if "torch" in sys.modules:  # a pytest plugin (torchtyping, with torchode) may import it first
        print(
            "tests_julia: torch was imported before juliacall (by a pytest plugin?); "
            "if Julia fails to start, run `python -m pytest -p no:torchtyping tests_julia`",
            file=sys.stderr,
        )
    try:
        import juliacall  # noqa: F401  (before torch: the import-order hazard)
    except Exception as err:  # not installed, juliapkg resolve failed, libstdc++ clash, ...
        if setting == "1":
            raise
        return False, f"juliacall failed to start: {type(err).__name__}: {err}"
    return True, ""


JULIA_OK, WHY_NOT = _julia_available()
