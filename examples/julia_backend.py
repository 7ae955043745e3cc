"""Fit the cubic spiral with the Julia engine: OrdinaryDiffEq + SciMLSensitivity + Lux.

The vector field is a `pyode.julia.Chain`: a torch module the torch engine runs as it is, and
a description from which the Julia engine builds the same Lux model with the same flat
parameters. The training loop is an ordinary torch loop either way; only `backend=` changes.

    python examples/julia_backend.py                  # the Julia engine (needs Julia)
    python examples/julia_backend.py --engine torch   # the same model on the torch engine
    python examples/julia_backend.py --engine both    # both, side by side

Without Julia, the Julia engine prints how to get it and exits.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["julia", "torch", "both"], default="julia")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--iters-per-epoch", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--batch-time", type=int, default=10)
    parser.add_argument("--sensealg", default="GaussAdjoint", help="DirectAdjoint, BacksolveAdjoint, ...")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def train(pyode, torch, engine: str, args: argparse.Namespace, truth, ts) -> dict:
    torch.manual_seed(args.seed)
    field = pyode.julia.Chain(pyode.julia.Dense(2, 50, "tanh"), pyode.julia.Dense(50, 2), dtype=torch.float64)
    optimizer = torch.optim.Adam(field.parameters(), lr=3e-3)
    window = ts[: args.batch_time]
    sensealg = getattr(pyode, args.sensealg)()
    print(f"{engine:>6} {'epoch':>5} {'loss':>9} {'NFE fwd':>8} {'NFE bwd':>8} {'time (s)':>8}")
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        t0, losses, nfe, nfe_back = time.perf_counter(), [], 0, 0
        for _ in range(args.iters_per_epoch):
            starts = torch.randint(0, len(ts) - args.batch_time, (args.batch_size,))
            batch = torch.stack([truth[starts + i] for i in range(args.batch_time)])
            prob = pyode.ODEProblem(field, truth[starts], (float(window[0]), float(window[-1])))
            sol = pyode.solve(
                prob, pyode.Tsit5(), saveat=window, rtol=1e-6, atol=1e-8, sensealg=sensealg, backend=engine
            )
            loss = (sol.y - batch).abs().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            nfe += sol.stats.nfe
            nfe_back += sol.adjoint_stats.nfe if sol.adjoint_stats is not None else 0
        n = args.iters_per_epoch
        print(
            f"{engine:>6} {epoch:>5} {sum(losses) / n:>9.4f} {nfe / n:>8.1f} {nfe_back / n:>8.1f} "
            f"{time.perf_counter() - t0:>8.2f}",
            flush=True,
        )
    return {"loss": sum(losses) / len(losses), "time": time.perf_counter() - start}


def main() -> None:
    args = parse_args()
    if args.engine != "torch":
        # juliacall must be imported before torch: pyode does that when PYODE_JULIA=1 at import.
        os.environ.setdefault("PYODE_JULIA", "1")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a failed Julia start is reported below
        import pyode  # first: with PYODE_JULIA=1 it imports juliacall, then torch
    import torch

    from pyode.backends.julia import HOW_TO_GET_JULIA, JuliaUnavailable

    engines = ["julia", "torch"] if args.engine == "both" else [args.engine]
    if "julia" in engines:
        try:
            pyode.backends.julia.load()
        except JuliaUnavailable as err:
            print(f"The Julia engine is not available here: {err}".replace(HOW_TO_GET_JULIA, "").strip())
            print(HOW_TO_GET_JULIA)
            print("The same model runs on the torch engine: python examples/julia_backend.py --engine torch")
            sys.exit(0)

    A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=torch.float64)
    ts = torch.linspace(0.0, 25.0, 1000, dtype=torch.float64)
    z0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
    truth = pyode.solve(
        pyode.ODEProblem(lambda t, z: (z**3) @ A, z0, (0.0, 25.0)), pyode.Tsit5(), saveat=ts, rtol=1e-9, atol=1e-10
    ).y
    results = {engine: train(pyode, torch, engine, args, truth, ts) for engine in engines}
    for engine, r in results.items():
        print(f"{engine}: final window loss {r['loss']:.4f}, training {r['time']:.1f} s")


if __name__ == "__main__":
    main()
