"""examples/bouncing_ball.py: fitting e and h to bounce times through a sequence of events, and
the event-time gradients against finite differences and the closed form."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "bouncing_ball.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bouncing_ball_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example() -> ModuleType:
    return _load()


def test_fit_and_gradient_check(example: ModuleType, tmp_path: Path) -> None:
    plot = tmp_path / "bouncing_ball.png"
    out = example.main(["--iterations", "12", "--seed", "0", "--plot", str(plot)])

    # The gradient at the starting parameters: pyode's event-time gradients are exact, so they
    # agree with the closed form to rounding (1e-12 seen) and with central finite differences to
    # the latter's own error (5e-10 seen).
    assert out["rel_closed_form"] < 1e-6
    assert out["rel_fd"] < 1e-6

    losses = out["losses"]
    assert losses[-1] < 1e-3 * losses[0]
    # At the optimum the residuals are the noise: rms near σ = 1 ms (1.09 ms seen), not above.
    assert losses[-1] < (2e-3) ** 2

    # Tolerance from the noise: least squares on 6 times with σ = 1e-3 s has standard errors
    # σ·√diag((JᵀJ)⁻¹) = 2.4e-4 for e and 2.1e-3 for h (computed by the example from the
    # closed-form Jacobian). Allow 4 standard errors: a seed that misses by more has probability
    # below 1e-4 per parameter. This seed's estimate is -0.42 and -0.09 standard errors off.
    se_e, se_h = out["standard_errors"]
    assert se_e == pytest.approx(2.4e-4, rel=0.05) and se_h == pytest.approx(2.1e-3, rel=0.05)
    assert abs(out["e"] - example.E_TRUE) < 4 * se_e
    assert abs(out["h"] - example.H_TRUE) < 4 * se_h
    # And the fit through the events reaches the closed-form least-squares optimum itself, which
    # does not depend on the noise: L-BFGS converges there in about ten iterations.
    e_cf, h_cf = out["closed_form_fit"]
    assert out["e"] == pytest.approx(e_cf, abs=1e-6)
    assert out["h"] == pytest.approx(h_cf, abs=1e-5)

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not plot.exists()
    else:
        assert plot.stat().st_size > 0


def test_event_times_match_closed_form(example: ModuleType) -> None:
    e = torch.tensor(0.7, dtype=torch.float64)
    h = torch.tensor(1.5, dtype=torch.float64)
    with torch.no_grad():
        pred = example.predicted_times(e, h, 6, 30.0)
    torch.testing.assert_close(pred, example.closed_form_times(e, h, 6), rtol=0, atol=1e-11)


def test_too_few_bounces_is_a_clear_error(example: ModuleType) -> None:
    e = torch.tensor(0.8, dtype=torch.float64)
    h = torch.tensor(2.0, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"only 2 bounce\(s\) before t = 2 .* but 6 are observed"):
        example.predicted_times(e, h, 6, 2.0)
