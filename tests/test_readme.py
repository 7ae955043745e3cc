"""The README's Python snippets run as written, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

from pyode.backends.julia import _runtime

from .julia.fake_julia import FakePyODE

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_snippets_run(monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 3
    # The Julia engine's snippet runs against the stand-in for the Julia module (no Julia here).
    monkeypatch.setitem(_runtime._state, "module", FakePyODE())
    monkeypatch.setitem(_runtime._state, "models", {})
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert namespace["sol"].error_estimate is not None  # the last torch snippet regularizes
    assert namespace["vf"].theta.grad is not None and namespace["jsol"].adjoint_stats.nfe > 0
