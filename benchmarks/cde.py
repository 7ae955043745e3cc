"""Neural CDEs: pyode against torchcde on the same model, data and path, in one run.

    python benchmarks/cde.py                     # about 3 minutes on 2 cores
    python benchmarks/cde.py --repeats 5 --paths hermite

One training step (forward + backward) of a neural CDE classifier-sized model (batch 128, 100
irregular observations of 3 channels with 30% missing values, hidden 32, an MLP vector field of
~25k parameters), float32, rtol 1e-3, atol 1e-5 (torchcde's example uses these magnitudes).
Both libraries get the same path coefficients and the same stops: the Hermite path steps on
its knots (torchcde gets `options=dict(step_t=knots)`), the natural cubic spline does not
stop (torchcde's default). For each gradient method: forward and backward evaluations of the
vector field (counted by the field itself, so the same figure for both libraries), median time
of forward + backward, and the relative error of the gradient against pyode's DirectAdjoint
with DP8 at rtol 1e-9 in float64. Ratios are torchcde's time over pyode's, measured side by
side in this run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torchcde

import pyode
import pyode.compat.torchcde as ptc


class Field(torch.nn.Module):
    """The vector field f(t, z): (batch, hidden) -> (batch, hidden, channels), counting calls."""

    def __init__(self, hidden: int, channels: int, width: int):
        super().__init__()
        self.hidden, self.channels = hidden, channels
        self.net = torch.nn.Sequential(
            torch.nn.Linear(hidden, width),
            torch.nn.Softplus(),
            torch.nn.Linear(width, width),
            torch.nn.Softplus(),
            torch.nn.Linear(width, hidden * channels),
            torch.nn.Tanh(),
        )
        self.calls = 0

    def forward(self, t, z):
        self.calls += 1
        return self.net(z).view(*z.shape[:-1], self.hidden, self.channels)


def make_data(batch: int, length: int, missing: float, generator: torch.Generator):
    """Spirals with noise, sampled on a shared irregular grid, with values missing at random."""
    t = torch.sort(torch.rand(length, generator=generator) * 10).values
    t[0] = 0.0
    phase = torch.rand(batch, 1, generator=generator) * 6.28
    direction = torch.where(torch.rand(batch, 1, generator=generator) < 0.5, -1.0, 1.0)
    radius = 1 + 0.2 * t
    xs = radius * torch.cos(direction * t + phase)
    ys = radius * torch.sin(direction * t + phase)
    x = torch.stack([xs, ys], -1) + 0.05 * torch.randn(batch, length, 2, generator=generator)
    drop = torch.rand(batch, length, 2, generator=generator) < missing
    drop[:, 0] = False
    x = torch.where(drop, torch.nan, x)
    data = torch.cat([t.expand(batch, length).unsqueeze(-1), x], -1)  # time as channel 0
    return t, data


COEFFS = {
    "hermite": (ptc.hermite_cubic_coefficients_with_backward_differences, True),
    "natural": (ptc.natural_cubic_coeffs, False),
}

METHODS = {
    # name: (pyode sensealg or None, torchcde kwargs or None)
    "autograd through the solver": (pyode.DirectAdjoint(), {"adjoint": False}),
    "backsolve adjoint, full norm": (pyode.BacksolveAdjoint(seminorm=False), {"adjoint": True}),
    "backsolve adjoint, seminorm": (
        pyode.BacksolveAdjoint(seminorm=True),
        {"adjoint": True, "adjoint_options": {"norm": "seminorm"}},
    ),
    "interpolating adjoint, seminorm": (pyode.InterpolatingAdjoint(seminorm=True), None),
    "GaussAdjoint": (pyode.GaussAdjoint(), None),
}


def step_pyode(field, coeffs, t, z0, sensealg, stops, rtol, atol):
    field.zero_grad(set_to_none=True)
    field.calls = 0
    X = ptc.CubicSpline(coeffs, t)
    prob = pyode.CDEProblem(field, X, z0, stop_at_knots=stops)
    sol = pyode.solve(prob, pyode.DP5(), rtol=rtol, atol=atol, saveat=[float(t[-1])], sensealg=sensealg)
    forward = field.calls
    sol.y[-1].pow(2).mean().backward()
    return forward, field.calls - forward


def step_torchcde(field, coeffs, t, z0, kwargs, stops, rtol, atol):
    field.zero_grad(set_to_none=True)
    field.calls = 0
    X = torchcde.CubicSpline(coeffs, t)
    options = {"step_t": t} if stops else {}
    z = torchcde.cdeint(X, field, z0, t[[0, -1]], method="dopri5", rtol=rtol, atol=atol, options=options, **kwargs)
    forward = field.calls
    z[..., -1, :].pow(2).mean().backward()
    return forward, field.calls - forward


def gradient(field):
    return torch.cat([p.grad.reshape(-1).double() for p in field.parameters()])


def reference(field, coeffs, t, z0, stops):
    exact = Field(field.hidden, field.channels, field.net[0].out_features).double()
    exact.load_state_dict(field.state_dict())
    X = ptc.CubicSpline(coeffs.double(), t.double())
    prob = pyode.CDEProblem(exact, X, z0.double(), stop_at_knots=True)
    sol = pyode.solve(prob, pyode.DP8(), rtol=1e-9, atol=1e-11, saveat=[float(t[-1])])
    sol.y[-1].pow(2).mean().backward()
    return gradient(exact)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--length", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--rtol", type=float, default=1e-3)
    parser.add_argument("--atol", type=float, default=1e-5)
    parser.add_argument("--paths", nargs="+", default=list(COEFFS), choices=list(COEFFS))
    args = parser.parse_args()
    print(f"$ python {' '.join(sys.argv)}")
    print(
        f"torch {torch.__version__}, torchcde {getattr(torchcde, '__version__', '?')}, threads {torch.get_num_threads()}"
    )
    generator = torch.Generator().manual_seed(0)
    t, data = make_data(args.batch, args.length, 0.3, generator)
    torch.manual_seed(0)
    field = Field(args.hidden, 3, args.width)
    z0 = torch.randn(args.batch, args.hidden, generator=generator) * 0.1
    params = sum(p.numel() for p in field.parameters())
    print(f"batch {args.batch}, length {args.length}, hidden {args.hidden}, {params} parameters, rtol {args.rtol}\n")
    header = "| path | method | library | fwd NFE | bwd NFE | time (s) | grad rel. error | torchcde / pyode time |"
    print(header)
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for path in args.paths:
        make, stops = COEFFS[path]
        coeffs = make(data, t)
        ref = reference(field, coeffs, t, z0, stops)
        for name, (sensealg, tc_kwargs) in METHODS.items():
            timings = {}
            for library in ("pyode", "torchcde"):
                if library == "torchcde" and tc_kwargs is None:
                    continue
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    if library == "pyode":
                        fwd, bwd = step_pyode(field, coeffs, t, z0, sensealg, stops, args.rtol, args.atol)
                    else:
                        fwd, bwd = step_torchcde(field, coeffs, t, z0, tc_kwargs, stops, args.rtol, args.atol)
                    times.append(time.perf_counter() - start)
                error = ((gradient(field) - ref).norm() / ref.norm()).item()
                timings[library] = statistics.median(times)
                ratio = f"{timings['torchcde'] / timings['pyode']:.2f}" if library == "torchcde" else ""
                print(
                    f"| {path} | {name} | {library} | {fwd} | {bwd} | {timings[library]:.3f} | {error:.1e} | {ratio} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
