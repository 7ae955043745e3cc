"""A latent ODE (Rubanova, Chen & Duvenaud 2019, deterministic version) on irregularly sampled
synthetic series: each series has its own random observation times.

    python examples/irregular_timeseries.py     # about a minute on 2 CPU cores

Data: damped oscillations x(t) = a·e^{-γt}·sin(ωt + φ) with random a, γ, ω, φ, each observed at
30 random times in [0, 5], with noise. A GRU reads a series backward in time (values and time
gaps) into a latent z0; a neural ODE evolves z0; a linear map reads x out. One batched solve
covers the union of the batch's observation times, and the loss counts each series at its own
times only. Prints the fit at the observed times and at 10 held-out times per series
(interpolation), with the solver's work.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import pyode


def make_data(n: int, observed: int, held_out: int, generator: torch.Generator):
    total = observed + held_out
    t = torch.sort(torch.rand(n, total, generator=generator) * 5.0, dim=1).values
    a = 0.5 + torch.rand(n, 1, generator=generator)
    gamma = 0.1 + 0.3 * torch.rand(n, 1, generator=generator)
    omega = 1.0 + 2.0 * torch.rand(n, 1, generator=generator)
    phi = 2 * torch.pi * torch.rand(n, 1, generator=generator)
    x = a * torch.exp(-gamma * t) * torch.sin(omega * t + phi)
    x_noisy = x + 0.02 * torch.randn(x.shape, generator=generator)
    # Every (held_out+observed)//held_out-th point is held out, the rest observed.
    mask_held = torch.zeros(n, total, dtype=torch.bool)
    mask_held[:, 1::3][:, :held_out] = True
    return t, x_noisy, x, ~mask_held, mask_held


class LatentODE(nn.Module):
    def __init__(self, latent: int = 6, hidden: int = 32):
        super().__init__()
        self.encoder = nn.GRU(input_size=2, hidden_size=hidden, batch_first=True)
        self.to_z0 = nn.Linear(hidden, latent)
        self.dynamics = nn.Sequential(nn.Linear(latent, hidden), nn.Tanh(), nn.Linear(hidden, latent))
        self.readout = nn.Linear(latent, 1)

    def encode(self, t: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Read observed points backward in time: (value, gap to the next observed time).
        zs = []
        for ti, xi, mi in zip(t, x, mask):
            ti, xi = ti[mi].flip(0), xi[mi].flip(0)
            gaps = torch.cat((torch.zeros(1), ti[:-1] - ti[1:]))
            _, h = self.encoder(torch.stack((xi, gaps), dim=-1).unsqueeze(0))
            zs.append(h[0, 0])
        return self.to_z0(torch.stack(zs))

    def forward(self, t: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, pyode.Solution]:
        """Predictions at every time in `t` (batch, times) and the solve that made them."""
        z0 = self.encode(t, x, mask)
        times, index = torch.unique(t, sorted=True, return_inverse=True)
        times = torch.cat((torch.zeros(1), times)) if times[0] > 0 else times
        index = index + (1 if len(times) > t.unique().numel() else 0)
        prob = pyode.ODEProblem(
            lambda s, z: self.dynamics(z), z0, (0.0, float(times[-1])), params=list(self.dynamics.parameters())
        )
        sol = pyode.solve(prob, pyode.Tsit5(), saveat=times, rtol=1e-4, atol=1e-6)
        xs = self.readout(sol.y).squeeze(-1)  # (times, batch)
        return xs.gather(0, index.T).T, sol  # each series at its own times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default="irregular_timeseries.png", help="where to save the plot ('' for none)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    train = make_data(256, 30, 10, generator)
    test = make_data(64, 30, 10, generator)
    model = LatentODE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    print(
        f"latent ODE on {len(train[0])} irregular series (30 observed + 10 held-out times each), {args.iters} iterations"
    )
    start, forward_nfe = time.perf_counter(), 0
    for it in range(1, args.iters + 1):
        batch = torch.randint(0, len(train[0]), (args.batch_size,))
        t, x, _, observed, _ = (a[batch] for a in train)
        pred, sol = model(t, x, observed)
        loss = (pred - x)[observed].pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        forward_nfe += sol.stats.nfe
        if it % 50 == 0:
            print(
                f"iteration {it:>4}: observed MSE {loss.item():.4f}, NFE per solve {forward_nfe / it:.1f}", flush=True
            )
    train_time = time.perf_counter() - start
    with torch.no_grad():
        t, x, clean, observed, held = test
        pred, sol = model(t, x, observed)
    print(
        f"test series: MSE at observed times {(pred - clean)[observed].pow(2).mean().item():.4f}, "
        f"at held-out times {(pred - clean)[held].pow(2).mean().item():.4f} "
        f"(signal variance {clean.var().item():.4f}); prediction NFE {sol.stats.nfe}; training {train_time:.1f} s"
    )
    if args.plot:
        save_plot(model, test, args.plot)


def save_plot(model: LatentODE, test, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed; skipping the plot")
        return
    t, x, clean, observed, held = (a[:3] for a in test)
    grid = torch.linspace(0.0, 5.0, 200)
    with torch.no_grad():
        z0 = model.encode(t, x, observed)
        prob = pyode.ODEProblem(lambda s, z: model.dynamics(z), z0, (0.0, 5.0))
        curves = model.readout(pyode.solve(prob, pyode.Tsit5(), saveat=grid, rtol=1e-4, atol=1e-6).y).squeeze(-1)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3), sharey=True)
    for i, ax in enumerate(axes):
        ax.plot(grid, curves[:, i], label="latent ODE")
        ax.plot(t[i][observed[i]], x[i][observed[i]], "o", ms=3, label="observed")
        ax.plot(t[i][held[i]], clean[i][held[i]], "x", label="held out")
        ax.set_xlabel("t")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
