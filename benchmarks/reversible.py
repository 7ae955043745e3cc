"""Reversible solvers against the other ways to bound memory, on Chandrasekhar's white dwarf
equation (the experiment of McCallum & Foster, at small scale):

    x' = v,   v' = -(2/t) v - (x² - C)^{3/2},   (x, v)(t0) = (x0, 0),   C = 0.001,

solved on [0.1, 3] from 64 starting heights x0 in [0.9, 1.1]. A neural ODE (inputs t, x, v)
is fitted to the true trajectories at 50 save points, with 1000 fixed RK4 steps per solve.
Each method trains the same model from the same start for a few iterations in a process of its
own, so peak resident memory is its own.

    python benchmarks/reversible.py              # about 3 minutes on 2 cores
    python benchmarks/reversible.py --iters 20
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from torch import nn

import pyode

C = 0.001
T0, T1 = 0.1, 3.0
STEPS = 1000
SAVES = 50


def white_dwarf(t, y):
    x, v = y[..., 0], y[..., 1]
    return torch.stack((v, -2 / t * v - (x * x - C).clamp_min(0) ** 1.5), dim=-1)


class Field(nn.Module):
    def __init__(self, width: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(3, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 2)
        )

    def forward(self, t, y):
        return self.net(torch.cat((t.expand(y.shape[0], 1), y), dim=-1))


def data(dtype=torch.float64):
    x0 = torch.linspace(0.9, 1.1, 64, dtype=dtype)
    y0 = torch.stack((x0, torch.zeros_like(x0)), dim=-1)
    ts = torch.linspace(T0, T1, SAVES + 1, dtype=dtype)[1:]
    truth = pyode.solve(pyode.ODEProblem(white_dwarf, y0, (T0, T1)), pyode.DP8(), saveat=ts, rtol=1e-10, atol=1e-12).y
    return y0, ts, truth


METHODS = [
    "reversible",
    "direct",
    "checkpoint-2",
    "checkpoint-4",
    "checkpoint-8",
    "checkpoint-16",
    "torchdiffeq-adjoint",
]


def train(method: str, iters: int) -> dict:
    torch.manual_seed(0)
    y0, ts, truth = data()
    field = Field().double()
    optimizer = torch.optim.Adam(field.parameters(), lr=3e-3)
    dt = (T1 - T0) / STEPS
    prob = pyode.ODEProblem(field, y0, (T0, T1))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, loss = [], float("nan")
    for _ in range(iters):
        start = time.perf_counter()
        if method == "reversible":
            ys = pyode.solve(
                prob, pyode.Reversible(pyode.RK4()), dt=dt, saveat=ts, sensealg=pyode.ReversibleAdjoint()
            ).y
        elif method == "direct":
            ys = pyode.solve(prob, pyode.RK4(), dt=dt, saveat=ts).y
        elif method.startswith("checkpoint-"):
            every = STEPS // int(method.split("-")[1])
            ys = pyode.solve(
                prob, pyode.RK4(), dt=dt, saveat=ts, sensealg=pyode.DirectAdjoint(checkpoint_every=every)
            ).y
        elif method == "torchdiffeq-adjoint":
            import torchdiffeq

            t_all = torch.cat((torch.tensor([T0], dtype=ts.dtype), ts))
            ys = torchdiffeq.odeint_adjoint(field, y0, t_all, method="rk4", options=dict(step_size=dt))[1:]
        else:
            raise ValueError(method)
        loss_t = (ys - truth).pow(2).mean()
        optimizer.zero_grad()
        loss_t.backward()
        optimizer.step()
        loss = loss_t.item()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    return {"method": method, "loss": loss, "seconds": sorted(times)[len(times) // 2], "peak_mb": peak / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=4)
    parser.add_argument("--methods", nargs="*", default=METHODS, choices=METHODS)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # run one method in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(train(args.one, args.iters)))
        return
    methods = [m for m in args.methods if m != "torchdiffeq-adjoint" or _has_torchdiffeq()]
    print(
        f"white dwarf, C = {C}, t in [{T0}, {T1}], {STEPS} RK4 steps per solve, 64 trajectories, {SAVES} save points;"
    )
    print(f"{args.iters} Adam iterations per method, each method in a fresh process (peak RSS above the start)")
    print(f"{'method':<22} {'loss after':>11} {'s / iter':>9} {'peak MB':>8}")
    for method in methods:
        out = subprocess.run(
            [sys.executable, __file__, "--one", method, "--iters", str(args.iters)],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{method:<22} {r['loss']:>11.3e} {r['seconds']:>9.3f} {r['peak_mb']:>8.1f}", flush=True)


def _has_torchdiffeq() -> bool:
    try:
        import torchdiffeq  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
