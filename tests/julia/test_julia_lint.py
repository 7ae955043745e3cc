"""fatou (a Julia linter written in Rust; it never runs Julia) on the Julia sources.

At its default rules, ignoring any user or project `fatou.toml`, and with the Julia version
floor from juliapkg.json, so version-compatibility errors (syntax newer than Julia 1.10, such
as `public`) are caught too. Any report fails the test; tree-sitter's syntax check in
test_julia_sources.py stays as a second, independent parser.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def julia_floor() -> str:
    """The lowest Julia juliapkg.json allows ("^1.10.3" -> "1.10.3")."""
    return json.loads((ROOT / "juliapkg.json").read_text())["julia"].lstrip("^~=")


def fatou(*paths: str) -> list[dict]:
    exe = shutil.which("fatou", path=str(Path(sys.executable).parent)) or shutil.which("fatou")
    if exe is None:
        pytest.fail("fatou is not installed; `pip install -e '.[test]'` installs it (no Julia needed)")
    out = subprocess.run(
        [exe, "--no-config", "--color", "never", "lint", "--output", "json", "--julia-version", julia_floor(), *paths],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    try:
        return json.loads(out.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"fatou failed (exit {out.returncode}): {out.stderr or out.stdout}")


def describe(report: dict) -> str:
    path = ROOT / report["path"]
    line = path.read_bytes()[: report["range"]["start"]].count(b"\n") + 1 if path.is_file() else "?"
    return f"{report['path']}:{line}: {report['severity']}[{report['rule']}] {report['message']['body']}"


def test_fatou_reports_nothing_in_the_julia_sources():
    reports = fatou("julia")
    assert reports == [], "fatou reports:\n" + "\n".join(describe(r) for r in reports)


def test_fatou_catches_what_it_should(tmp_path):
    # Guards the test above against a fatou that checks nothing (wrong path, changed output).
    planted = tmp_path / "planted.jl"
    planted.write_text("module M\nfunction f(x)\n    y = 2\n    return x\nend\npublic f\nend\n")
    rules = {r["rule"] for r in fatou(str(planted))}
    assert {"unused-binding", "julia-version-compat"} <= rules
