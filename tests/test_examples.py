"""Every example runs to the end on a tiny budget (its figures are measured by running it in
full; this only guards against an example breaking, as the digits classifier did once when the
regularizers stopped working under no_grad)."""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

RUNS = {
    "spiral": ["--epochs", "1", "--iters-per-epoch", "2", "--plot", "", "--compare"],
    "digits_classifier": ["--epochs", "1", "--plot", ""],
    "hamiltonian": ["--iters", "2", "--plot", ""],
    "irregular_timeseries": ["--iters", "2", "--plot", ""],
    "ncde_classification": ["--quick"],
    "latent_sde": ["--quick"],
}
NEEDS = {"digits_classifier": "sklearn"}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_example_runs(name, tmp_path):
    module = NEEDS.get(name)
    if module is not None and importlib.util.find_spec(module) is None:
        pytest.skip(f"examples/{name}.py needs {module} (pip install -e '.[examples]')")
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / f"{name}.py"), *RUNS[name]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_stiff_kinetics_quick(tmp_path):
    """The stiff-kinetics example's quick mode: Rodas5P fits Robertson's rates, Tsit5 runs out of
    steps on the same problem, and both neural ODEs train and are costed (about 20 s)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "stiff_kinetics.py"), "--quick"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "Tsit5()  MaxIters" in out and "Rodas5P() Success" in out, out[-3000:]
    assert "plain" in out and "R_S" in out, out[-3000:]
