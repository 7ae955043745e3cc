"""ReversibleAdjoint: the discrete gradient of DirectAdjoint, at memory independent of steps."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import pyode

from ..problems import REVERSIBLE


class Field(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()

    def forward(self, t, y):
        return self.net(y) * torch.cos(t)


def _gradients(field, solver, sensealg, **kwargs):
    field.zero_grad()
    y0 = torch.tensor([[0.3, -0.2], [1.0, 0.5], [-0.7, 0.1]], dtype=torch.float64, requires_grad=True)
    sol = pyode.solve(
        pyode.ODEProblem(field, y0, (0.0, 2.0)), solver, saveat=[0.0, 0.5, 1.3, 2.0], sensealg=sensealg, **kwargs
    )
    (sol.y**2).sum().backward()
    return sol, torch.cat([y0.grad.reshape(-1)] + [p.grad.reshape(-1) for p in field.parameters()])


@pytest.mark.parametrize(
    "solver, steps", [(s, "fixed") for s in REVERSIBLE] + [(s, "adaptive") for s in REVERSIBLE if s.adaptive], ids=repr
)
def test_equals_direct_backprop_through_the_same_solver(solver, steps):
    kwargs = dict(dt=0.01, adaptive=False) if steps == "fixed" else dict(rtol=1e-5)
    field = Field()
    direct_sol, direct = _gradients(field, solver, pyode.DirectAdjoint(), **kwargs)
    sol, reversible = _gradients(field, solver, pyode.ReversibleAdjoint(), **kwargs)
    torch.testing.assert_close(sol.y, direct_sol.y, rtol=0, atol=0)
    assert ((reversible - direct).abs().max() / direct.abs().max()).item() < 1e-9
    assert sol.adjoint_stats.naccept == sol.stats.naccept


def test_is_the_default_for_reversible_solvers():
    field = Field()
    y0 = torch.ones(2, dtype=torch.float64)
    sol = pyode.solve(pyode.ODEProblem(field, y0, (0.0, 1.0)), pyode.ReversibleHeun(), dt=0.1, adaptive=False)
    sol.y.sum().backward()
    assert sol.adjoint_stats is not None and sol.adjoint_stats.naccept == 10


def test_needs_a_reversible_solver():
    prob = pyode.ODEProblem(lambda t, y: -y, torch.ones(2), (0.0, 1.0))
    with pytest.raises(TypeError, match=r"ReversibleAdjoint needs a reversible solver .*got Tsit5\(\)"):
        pyode.solve(prob, pyode.Tsit5(), sensealg=pyode.ReversibleAdjoint())
    # It replays the forward steps exactly: backward solver, tolerances and norm are not its options.
    for option in ("solver", "rtol", "atol", "internalnorm"):
        with pytest.raises(TypeError, match=option):
            pyode.ReversibleAdjoint(**{option: None})


_MEMORY_SCRIPT = """
import json, resource, sys, torch, pyode
steps, method = int(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64)).double()
y0 = torch.randn(512, 64, dtype=torch.float64, requires_grad=True)
sensealg = pyode.ReversibleAdjoint() if method == "reversible" else pyode.DirectAdjoint()
prob = pyode.ODEProblem(lambda t, y: net(y), y0, (0.0, 1.0), params=list(net.parameters()))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
sol = pyode.solve(prob, pyode.Reversible(pyode.RK4()), dt=1.0 / steps, saveat=[1.0], sensealg=sensealg)
sol.y.pow(2).sum().backward()
print(json.dumps({"peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base}))
"""


def _peak_kb(steps: int, method: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(steps), method], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_kb"]


def test_peak_memory_does_not_grow_with_steps():
    """Peak resident memory of forward+backward, each run in a fresh process. The state is
    512 x 64 float64 (256 kB): direct backprop keeps ~9 such tensors per step (2 RK4 steps of 4
    stages), reversible backprop one step's graph."""
    reversible_20, reversible_200 = _peak_kb(20, "reversible"), _peak_kb(200, "reversible")
    direct_20, direct_200 = _peak_kb(20, "direct"), _peak_kb(200, "direct")
    assert direct_200 > 5 * direct_20  # the comparison measures what it should
    assert reversible_200 < 1.5 * max(reversible_20, 1)
    assert reversible_200 < direct_200 / 10


@pytest.mark.parametrize("sensealg", [pyode.DirectAdjoint(), pyode.ReversibleAdjoint()], ids=repr)
def test_save_time_gradients(sensealg):
    # y' = -w y: dL/dt_k = f(t_k, y_k) for each save time (t0 is a plain number here).
    w = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    ts = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64, requires_grad=True)
    prob = pyode.ODEProblem(lambda t, y: -w * y, torch.ones(1, dtype=torch.float64), (0.0, 1.0), params=[w])
    sol = pyode.solve(prob, pyode.ReversibleHeun(), dt=0.01, adaptive=False, saveat=ts, sensealg=sensealg)
    sol.y.sum().backward()
    torch.testing.assert_close(ts.grad, -0.5 * sol.y.detach().reshape(-1), rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "sensealg, match",
    [
        (pyode.GaussAdjoint(), r"dense output of its backward solve.*GaussAdjoint\(solver=Tsit5\(\)\)"),
        (pyode.QuadratureAdjoint(), "dense output of its backward solve"),
        (pyode.InterpolatingAdjoint(), "dense output of its forward solve.*Runge–Kutta solver"),
    ],
)
def test_adjoints_that_need_dense_output_say_so(sensealg, match):
    w = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    prob = pyode.ODEProblem(lambda t, y: -w * y, torch.ones(1, dtype=torch.float64), (0.0, 1.0), params=[w])
    with pytest.raises(TypeError, match=match):
        pyode.solve(prob, pyode.ReversibleHeun(), dt=0.1, adaptive=False, sensealg=sensealg)
    # With a dense backward solver the quadrature adjoints work from a reversible forward solve.
    if not isinstance(sensealg, pyode.InterpolatingAdjoint):
        sol = pyode.solve(
            prob,
            pyode.ReversibleHeun(),
            dt=0.01,
            adaptive=False,
            saveat=[1.0],
            sensealg=type(sensealg)(solver=pyode.Tsit5()),
        )
        sol.y.sum().backward()
        assert w.grad is not None
