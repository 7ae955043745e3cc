"""pyode.nn.NeuralODE."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pyode
from pyode.nn import NeuralODE


class Field(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2))

    def forward(self, t, y):
        return self.net(y)


def test_forward_shapes_and_parameters():
    field = Field()
    model = NeuralODE(field, (0.0, 1.0), saveat=torch.linspace(0, 1, 5))
    assert list(model.parameters()) == list(field.parameters())
    sol = model(torch.randn(8, 2))
    assert isinstance(sol, pyode.Solution) and sol.y.shape == (5, 8, 2)
    sol.y.pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())


def test_state_dict_round_trip():
    model = NeuralODE(Field(), (0.0, 1.0), saveat=[0.5, 1.0])
    other = NeuralODE(Field(), (0.0, 1.0), saveat=[0.5, 1.0])
    other.load_state_dict(model.state_dict())
    y0 = torch.randn(3, 2)
    torch.testing.assert_close(model(y0).y, other(y0).y)


@pytest.mark.parametrize(
    "sensealg", [None, pyode.BacksolveAdjoint(), pyode.QuadratureAdjoint(), pyode.GaussAdjoint()], ids=repr
)
def test_training_reduces_the_loss(sensealg):
    torch.manual_seed(0)
    model = NeuralODE(Field().double(), (0.0, 1.0), saveat=[1.0], sensealg=sensealg, rtol=1e-6)
    y0 = torch.randn(16, 2, dtype=torch.float64)
    target = y0.flip(-1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = (model(y0).y[-1] - target).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_steer_varies_the_end_time_in_training_only():
    model = NeuralODE(Field(), (0.0, 1.0), steer=0.5)
    y0 = torch.randn(2, 2)
    ends = {model(y0).t[-1].item() for _ in range(5)}
    assert len(ends) == 5 and all(0.5 < t < 1.5 for t in ends)
    model.eval()
    assert {model(y0).t[-1].item() for _ in range(3)} == {1.0}
    with pytest.raises(ValueError, match="needs saveat=None"):
        NeuralODE(Field(), (0.0, 1.0), steer=0.5, saveat=[0.5, 1.0])
    with pytest.raises(ValueError, match="steer must be"):
        NeuralODE(Field(), (0.0, 1.0), steer=1.0)


def test_regularize_and_solve_keywords_pass_through():
    model = NeuralODE(Field().double(), (0.0, 1.0), regularize=True, max_steps=1000)
    sol = model(torch.randn(4, 2, dtype=torch.float64))
    (sol.error_estimate + sol.stiffness_estimate).backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(TypeError, match=r"vector_field must be an nn\.Module"):
        NeuralODE(lambda t, y: y)


def test_saveat_buffer_follows_the_module():
    model = NeuralODE(Field(), (0.0, 1.0), saveat=torch.linspace(0, 1, 3)).double()
    assert model.saveat.dtype == torch.float64
    assert "tspan=(0.0, 1.0)" in repr(model)


def test_distributed_data_parallel(tmp_path):
    """One-process DDP over gloo (loopback only): forward returns the Solution, gradients are
    all-reduced into the parameters."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        model = NeuralODE(Field().double(), (0.0, 1.0), saveat=[1.0])
        ddp = nn.parallel.DistributedDataParallel(model)
        sol = ddp(torch.randn(4, 2, dtype=torch.float64))
        sol.y.pow(2).mean().backward()
        assert all(p.grad is not None for p in model.parameters())
    finally:
        dist.destroy_process_group()


def test_neural_ode_with_local_regularization_and_an_adjoint():
    torch.manual_seed(0)
    field = Field()
    model = NeuralODE(field, saveat=[0.5, 1.0], sensealg=pyode.GaussAdjoint(), regularize=pyode.LocalRegularization())
    sol = model(torch.randn(4, 2))
    (sol.y.pow(2).mean() + sol.error_estimate + sol.stiffness_estimate).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in field.parameters())
    assert sol.y.shape == (2, 4, 2) and 0 < sol.regularization_time < 1
