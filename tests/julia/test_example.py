"""examples/julia_backend.py: says how to get Julia where there is none; trains on the torch engine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "julia_backend.py"


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYODE_JULIA": "0"}  # never start Julia here, even where juliacall is installed
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *args], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT
    )


def test_without_julia_it_prints_how_to_get_it():
    out = run()
    assert out.returncode == 0, out.stderr
    assert "The Julia engine is not available here" in out.stdout
    assert "pip install 'pyode[julia]'" in out.stdout and "pyode.julia.install()" in out.stdout


def test_the_same_model_trains_on_the_torch_engine():
    out = run("--engine", "torch", "--epochs", "2", "--iters-per-epoch", "3")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1].startswith("torch: final window loss")
    losses = [float(line.split()[2]) for line in lines if line.split()[:1] == ["torch"] and line.split()[1].isdigit()]
    assert len(losses) == 2 and all(0 < x < 1 for x in losses)
