"""Neural SDEs: pyode against torchsde on the same model and the same Brownian path, in one run.

    python benchmarks/sde.py             # about 10 minutes on 2 shared cores (5 of them memory runs)
    python benchmarks/sde.py --quick     # tiny sizes, a smoke test (about 20 s)

One training step (forward + backward of the mean square of y(1)) of a neural SDE with diagonal
noise on [0, 1], float32, state 32, batch 256, at 100, 300 and 1000 fixed steps (dt = 1/steps).
Drift: an MLP 32 -> 64 -> 64 -> 32 (tanh). Diffusion: 32 independent MLPs 1 -> 16 -> 1 (tanh,
then a sigmoid scaled to (0, 0.5)), entry i reading y_i only, as diagonal noise requires for
Milstein and the Itô correction (torchsde's latent SDE example builds its diffusion the same way).

Cases (pyode / torchsde):
- Euler–Maruyama, Itô, backprop through the solver: `EulerMaruyama()` + `DirectAdjoint()` /
  `sdeint(method="euler")`;
- Milstein, Itô, backprop through the solver: `Milstein()` + `DirectAdjoint()` / `sdeint(method="milstein")`;
- reversible Heun, Stratonovich, its exact adjoint: `ReversibleHeun()` + `ReversibleAdjoint()` /
  `sdeint_adjoint(method="reversible_heun", adjoint_method="adjoint_reversible_heun")`;
- the stochastic adjoint, Stratonovich, Euler–Heun both ways: `EulerHeun()` +
  `BacksolveAdjoint(solver=EulerHeun())` / `sdeint_adjoint(method="euler_heun", adjoint_method="euler_heun")`.

Both libraries read the same path: each solve gets a new `torchsde.BrownianInterval` built from the
same seed (so neither reads increments the other cached). NFE are the calls of the drift and of
the diffusion network, counted by the networks themselves (the same figure for both libraries), in
the forward solve and in the backward pass (a VJP through a network counts as one call of it).
torchsde evaluates f and g once more before solving (a shape check) and, where the float64 sum
of the steps falls an ulp short of 1, takes one more step of length ~1e-16; pyode lands on 1.
Time: median over repeats of forward + backward, the two libraries alternating. Memory: the peak
resident memory of a forked child over its own baseline (after a 2-step warm-up),
`resource.getrusage(...).ru_maxrss`, so it includes the backward pass and everything either
library keeps on the side; it is accurate to a few MB. "grad vs torchsde": the relative difference
between the two libraries' parameter gradients on the same path.

Measured on 2 shared cores (the table in the run's output; times vary by ±30% from run to run):
the same NFE (up to torchsde's extra evaluations above) and gradients equal to 1e-5 or better;
times within noise of each other, torchsde / pyode between 0.69 and 1.15 (Milstein at 1000 steps
with 5 repeats: 0.88); peak memory of backprop through the solver linear in the steps (Euler–Maruyama
98, 320, 1056 MB; Milstein 213, 660, 2182 MB at 100, 300, 1000 steps), of the reversible adjoint
flat (7, 10, 12 MB) and of the stochastic adjoint flat (9, 11, 15 MB), in both libraries alike.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

import torch
import torchsde
from torch import nn

import pyode


class Drift(nn.Module):
    """f(t, y): an MLP on the state, counting its calls."""

    def __init__(self, state: int, width: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(state, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, state)
        )
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        return self.net(y)


class Diffusion(nn.Module):
    """g(t, y) for diagonal noise: one MLP 1 -> width -> 1 per coordinate, g_i reading y_i only."""

    def __init__(self, state: int, width: int):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(state, width))
        self.b1 = nn.Parameter(torch.randn(state, width) * 0.5)
        self.w2 = nn.Parameter(torch.randn(state, width) / width**0.5)
        self.b2 = nn.Parameter(torch.zeros(state))
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        hidden = torch.tanh(y.unsqueeze(-1) * self.w1 + self.b1)  # (batch, state, width)
        return 0.5 * torch.sigmoid((hidden * self.w2).sum(-1) + self.b2)


class TorchsdeSDE(nn.Module):
    """The same networks as a torchsde SDE."""

    noise_type = "diagonal"

    def __init__(self, drift: Drift, diffusion: Diffusion, sde_type: str):
        super().__init__()
        self.drift, self.diffusion, self.sde_type = drift, diffusion, sde_type

    def f(self, t, y):
        return self.drift(t, y)

    def g(self, t, y):
        return self.diffusion(t, y)


CASES = {
    # name: (calculus, pyode solver, pyode sensealg, torchsde function, torchsde keywords)
    "Euler–Maruyama, direct": ("ito", pyode.EulerMaruyama(), pyode.DirectAdjoint(), "sdeint", {"method": "euler"}),
    "Milstein, direct": ("ito", pyode.Milstein(), pyode.DirectAdjoint(), "sdeint", {"method": "milstein"}),
    "reversible Heun, reversible adjoint": (
        "stratonovich",
        pyode.ReversibleHeun(),
        pyode.ReversibleAdjoint(),
        "sdeint_adjoint",
        {"method": "reversible_heun", "adjoint_method": "adjoint_reversible_heun"},
    ),
    "Euler–Heun, stochastic adjoint": (
        "stratonovich",
        pyode.EulerHeun(),
        pyode.BacksolveAdjoint(solver=pyode.EulerHeun()),
        "sdeint_adjoint",
        {"method": "euler_heun", "adjoint_method": "euler_heun"},
    ),
}
LIBRARIES = ("pyode", "torchsde")


class Setup:
    """The networks, the initial state and the Brownian path's seed, the same for every run."""

    def __init__(self, args):
        torch.manual_seed(0)
        self.drift = Drift(args.state, args.width)
        self.diffusion = Diffusion(args.state, args.diffusion_width)
        self.y0 = torch.randn(args.batch, args.state) * 0.5
        self.params = [*self.drift.parameters(), *self.diffusion.parameters()]

    def brownian(self) -> torchsde.BrownianInterval:
        return torchsde.BrownianInterval(0.0, 1.0, size=tuple(self.y0.shape), dtype=self.y0.dtype, entropy=1234)

    def step(self, case: str, library: str, steps: int) -> dict:
        """One forward + backward; returns the time, the counted NFE and the gradient."""
        calculus, solver, sensealg, function, keywords = CASES[case]
        for p in self.params:
            p.grad = None
        self.drift.calls = self.diffusion.calls = 0
        bm = self.brownian()
        start = time.perf_counter()
        if library == "pyode":
            prob = pyode.SDEProblem(self.drift, self.diffusion, self.y0, (0.0, 1.0), "diagonal", calculus, bm=bm)
            sol = pyode.solve(prob, solver, saveat=[1.0], dt=1.0 / steps, adaptive=False, sensealg=sensealg)
            y1 = sol.y[-1]
        else:
            sde = TorchsdeSDE(self.drift, self.diffusion, calculus)
            ts = torch.tensor([0.0, 1.0], dtype=torch.float64)  # times in float64, as pyode's (see above)
            y1 = getattr(torchsde, function)(sde, self.y0, ts, bm=bm, dt=1.0 / steps, **keywords)[-1]
        forward = (self.drift.calls, self.diffusion.calls)
        y1.pow(2).mean().backward()
        seconds = time.perf_counter() - start
        backward = (self.drift.calls - forward[0], self.diffusion.calls - forward[1])
        grad = torch.cat([p.grad.reshape(-1) for p in self.params])
        return {"seconds": seconds, "forward": forward, "backward": backward, "grad": grad}


def peak_memory(setup: Setup, case: str, library: str, steps: int) -> float:
    """The peak resident memory of one step in a forked child, over the child's own baseline, in MB.

    A forked child starts where this process is (imports done, no second start-up to wait for) and
    has a high-water mark of its own. Call it before this process has run any step: a child would
    otherwise reuse memory the parent freed but kept, and not count it.
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        status = 1
        try:
            os.close(read)
            setup.step(case, library, 2)  # warm-up: lazy initializations belong to the baseline
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            setup.step(case, library, steps)
            after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            os.write(write, f"{(after - before) / 1024}".encode())  # ru_maxrss is in KiB on Linux
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not text:
        raise RuntimeError(f"the memory run of {case}, {library}, {steps} steps failed (wait status {status})")
    return float(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (a smoke test)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, nargs="+", default=None, help="default 100 300 1000 (--quick: 10 20)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--state", type=int, default=32)
    parser.add_argument("--width", type=int, default=64, help="the drift's hidden width")
    parser.add_argument("--diffusion-width", type=int, default=16, help="the hidden width of each coordinate's g_i")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on shared cores)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurements")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.batch, args.state, args.width, args.diffusion_width, args.repeats = 16, 4, 8, 4, 1
    args.steps = args.steps or ([10, 20] if args.quick else [100, 300, 1000])

    print(f"$ python {' '.join(sys.argv)}")
    print(
        f"pyode {pyode.__version__}, torch {torch.__version__}, torchsde {torchsde.__version__}, "
        f"threads {torch.get_num_threads()}, float32"
    )
    setup = Setup(args)
    print(
        f"batch {args.batch}, state {args.state}, drift width {args.width}, diffusion width {args.diffusion_width} "
        f"per coordinate, {sum(p.numel() for p in setup.params)} parameters, median of {args.repeats}\n"
    )
    print(
        "| case | steps | library | drift NFE fwd + bwd | diffusion NFE fwd + bwd | time (s) | torchsde / pyode time "
        "| peak RSS over baseline (MB) | grad vs torchsde |"
    )
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    start = time.perf_counter()
    memory = {}
    if not args.no_memory:  # first, while this process has run no step (see peak_memory)
        for case in args.cases:
            for steps in args.steps:
                for library in LIBRARIES:
                    memory[case, steps, library] = f"{peak_memory(setup, case, library, steps):.0f}"
    for case in args.cases:
        for steps in args.steps:
            for library in LIBRARIES:
                setup.step(case, library, min(steps, 10))  # warm-up
            times = {library: [] for library in LIBRARIES}
            runs = {}
            for _ in range(args.repeats):
                for library in LIBRARIES:
                    runs[library] = setup.step(case, library, steps)
                    times[library].append(runs[library]["seconds"])
            pyode_grad, torchsde_grad = runs["pyode"]["grad"], runs["torchsde"]["grad"]
            difference = ((pyode_grad - torchsde_grad).norm() / torchsde_grad.norm()).item()
            median = {library: statistics.median(times[library]) for library in LIBRARIES}
            for library in LIBRARIES:
                run = runs[library]
                ratio, diff = (
                    (f"{median['torchsde'] / median['pyode']:.2f}", f"{difference:.1e}")
                    if library == "pyode"
                    else ("", "")
                )
                print(
                    f"| {case} | {steps} | {library} | {run['forward'][0]} + {run['backward'][0]} "
                    f"| {run['forward'][1]} + {run['backward'][1]} | {median[library]:.3f} | {ratio} | {memory.get((case, steps, library), '')} | {diff} |",
                    flush=True,
                )
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
