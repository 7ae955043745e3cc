"""The same solves on a CUDA device as on the CPU. Runs where a GPU is present (`-m cuda`)."""

from __future__ import annotations

import pytest
import torch

import pyode

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; CI machines have none"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("solver", [pyode.Tsit5(), pyode.DP5(), pyode.DP8(), pyode.BS3()], ids=repr)
def test_cuda_matches_cpu(solver, dtype):
    w = torch.randn(3, 3, dtype=dtype) * 0.5

    def f(t, y):
        return torch.tanh(y @ w.to(y.device)) * torch.cos(t)

    y0 = torch.randn(4, 3, dtype=dtype)
    ts = torch.linspace(0, 2, 9, dtype=torch.float64)
    cpu = pyode.solve(pyode.ODEProblem(f, y0, (0.0, 2.0)), solver, saveat=ts, rtol=1e-6, atol=1e-8)
    gpu = pyode.solve(pyode.ODEProblem(f, y0.cuda(), (0.0, 2.0)), solver, saveat=ts.cuda(), rtol=1e-6, atol=1e-8)
    assert gpu.y.device.type == "cuda" and gpu.y.dtype == dtype
    assert gpu.stats == cpu.stats  # the same steps: only round-off differs
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(gpu.y.cpu(), cpu.y, rtol=tol, atol=tol)


def test_cuda_gradients_and_dense_output():
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double().cuda()
    y0 = torch.randn(8, 2, dtype=torch.float64, device="cuda")
    sol = pyode.solve(pyode.ODEProblem(lambda t, y: net(y), y0, (0.0, 1.0)), pyode.Tsit5())
    sol.y.pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.device.type == "cuda" for p in net.parameters())
    assert sol(0.5).device.type == "cuda"
    ys = pyode.odeint(lambda t, y: net(y), y0, torch.linspace(0, 1, 3, device="cuda", dtype=torch.float64))
    assert ys.shape == (3, 8, 2) and ys.device.type == "cuda"
