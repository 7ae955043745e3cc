"""Neural CDEs on irregularly sampled spirals: does the seminorm make the backsolve adjoint cheaper?

Kidger, Chen & Lyons, "'Hey, that's not an ODE': Faster ODE Adjoints via Seminorms" (ICML 2021)
report that leaving the parameter-adjoint channels a_θ out of the error norm of the backward solve
saves 40–62% of its function evaluations at equal accuracy; their neural CDE is Speech Commands
with torchcde and torchdiffeq's dopri5 at rtol 1e-3, atol 1e-6 and tighter. This repeats the
comparison at small scale.

    python examples/ncde_classification.py           # about 4.5 minutes on 2 CPU cores
    python examples/ncde_classification.py --quick   # a few steps on short series (the test, 20 s)

Data: 2-D spirals on a grid of 100 times shared by a batch, 30% of each coordinate's values dropped
at random (NaN), with time and the observation counts as channels (`with_observation_counts`), 5 in
all, through a natural cubic spline. Task "direction": clockwise or anticlockwise (torchcde's
example, 2 classes). Task "turns": direction and number of turns, 1, 1.5, 2 or 2.5 (8 classes),
which needs the angle turned over the whole series.

Model: z0 = Linear(X(t0)), dz = f(z) dX, logits = Linear(z(T)); f an MLP 32 -> 128 (ReLU) ->
32 × 5 (tanh). DP5 forward and backward, BacksolveAdjoint with one of three norms:
- full (pyode): `seminorm=False`, the largest RMS over the groups [z], [a], [a_θ], grouped as the
  default adjoint norm of torchdiffeq 0.1, the paper's baseline (which also held an a_t channel;
  pyode integrates none, and on the linear path it is zero);
- full (per tensor): the largest RMS over [z], [a] and each parameter tensor's adjoint on its own,
  torchdiffeq's default since 0.2 (2021);
- seminorm: `seminorm=True`, [z] and [a] only.
Part 1 trains the same model from the same seed on the same batches once per norm, summing the NFE
over training. Part 2 costs one gradient of the model trained on "turns" through three paths: the
cubic spline with free steps (the default for a C² path), the same with steps landing on every knot
(`stop_at_knots=True`), and linear interpolation, which steps on every knot too (what the authors'
code, FasterNeuralDiffEq, runs: torchcde's LinearInterpolation with grid_points). Part 3 repeats
that for untrained models with ReLU or tanh in f.

Measured on 2 CPU cores (4 min 22 s; other runs, with the same NFE, 4 min 40 s and 4 min 47 s: wall
times vary by up to 30%; the tables reformatted, Part 3's free-step rows left out):

    task       steps norm                accuracy final loss forward NFE backward NFE seminorm saves  time s
    direction     20 full (pyode)          100.0%      0.000       10896        10738             0%    11.9
    direction     20 full (per tensor)     100.0%      0.000       10986        10672            -1%    12.7
    direction     20 seminorm              100.0%      0.000       10662        10786                   17.2
    turns         60 full (pyode)           68.8%      0.817       33672        32526            -2%    37.4
    turns         60 full (per tensor)      63.3%      0.802       33576        41646            20%    43.8
    turns         60 seminorm               62.1%      0.813       33552        33186                   39.6

    part model    path                  rtol   atol forward  bwd: pyode  per tensor seminorm saves: pyode per tensor
    2 trained     cubic, free steps    0.001  1e-05    1062        1060        1084     1066           -1%         2%
    2 trained     cubic, free steps    0.001  1e-06    1122        1156        1564     1144            1%        27%
    2 trained     cubic, free steps   0.0001  1e-07    2604        3226        5098     2788           14%        45%
    2 trained     cubic, on knots      0.001  1e-05    1236        1192        1342     1192            0%        11%
    2 trained     cubic, on knots      0.001  1e-06    1218        1978        3220     1438           27%        55%
    2 trained     cubic, on knots     0.0001  1e-07    2304        4744        6766     4216           11%        38%
    2 trained     linear (paper code)  0.001  1e-05    1390        1388        1550     1388            0%        10%
    2 trained     linear (paper code)  0.001  1e-06    1414        1934        3344     1508           22%        55%
    2 trained     linear (paper code) 0.0001  1e-07    1522        4988        6662     3836           23%        42%
    3 ReLU, init  cubic, on knots      0.001  1e-06     597         596        1346      596            0%        56%
    3 ReLU, init  linear (paper code)  0.001  1e-06     695         694        1444      694            0%        52%
    3 tanh, init  cubic, on knots      0.001  1e-06     603         596         596      596            0%         0%
    3 tanh, init  linear (paper code)  0.001  1e-06     701         694         694      694            0%         0%

Against the paper's own baseline grouping, pyode's full norm, the 40–62% is not reproduced at this
scale: the seminorm saves 0% over training and 0–27% per gradient (varying from batch to batch and
model to model, most with steps on the knots at atol 1e-6 and 1e-7). Against the per-tensor norm
of today's torchdiffeq it is: 55% per gradient at rtol 1e-3, atol 1e-6 when the steps land on
every knot, as in the authors' code, and 20% over training with free steps on the cubic spline.
Where it saves, the cause here is the ReLU: the first layer's parameter adjoints integrate
relu'(Wz + b), which jumps whenever any series in the batch crosses a kink, so their error
estimates force short steps (a norm that records its largest group shows those two tensors setting
them). pyode's full norm averages them into all 24,864 parameter entries, the per-tensor norm does
not, and with tanh no norm pays more than the seminorm. Otherwise the backward steps are bounded by
z itself, which every norm keeps: the seminorm's backward NFE is then about the forward NFE. At
atol 1e-5 (the authors' README) there is little to save (0–11%), at 1e-6 and 1e-7 more. Landing on
the knots does not cap the saving but raises it: a full norm that wants steps a little shorter than
the knot spacing takes two steps per interval. The "direction" loss reaches zero within a few
steps, where a, a_θ ≈ 0 and no norm can save anything. Test accuracies differ by a few points
between runs whose final losses agree: the three trainings follow gradients that differ within the
tolerances, and diverge.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time

import torch
from torch import nn

import pyode
from pyode.cde import linear, natural_cubic_spline, with_observation_counts

DROP = 0.3  # fraction of the values of each coordinate dropped (NaN)
TASKS = {"direction": 2, "turns": 8}  # task: number of classes


# --- data -------------------------------------------------------------------------------------


def spirals(
    task: str, n: int, generator: torch.Generator, length: int = 100
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n noisy spirals observed on `length` times in [0, 1] (one grid for all), 30% of each
    coordinate missing.

    Returns (t, data, labels), data of shape (n, length, 5): time, x, y and the observation
    counts of x and y (divided by length, so that every channel is of order one).
    """
    t = torch.linspace(0.0, 1.0, length)
    label = torch.randint(0, TASKS[task], (n,), generator=generator)
    jitter = torch.rand(n, generator=generator)
    if task == "direction":
        direction, turns = 1 - 2 * label, 2.0 * (0.8 + 0.4 * jitter)  # 2 turns ± 20%
    else:
        direction, turns = 1 - 2 * (label // 4), (1 + 0.5 * (label % 4)) * (0.95 + 0.1 * jitter)  # ± 5%
    start = 2 * math.pi * torch.rand(n, 1, generator=generator)
    angle = start + 2 * math.pi * (direction * turns).unsqueeze(1) * t
    radius = (0.5 + torch.rand(n, 1, generator=generator)) / (1 + 2 * t)
    x = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1)
    x = x + 0.05 * torch.randn(x.shape, generator=generator)
    x = x.masked_fill(torch.rand(x.shape, generator=generator) < DROP, float("nan"))
    data = with_observation_counts(t, x)
    data[..., 3:] /= length
    return t, data, label


def make_batches(task: str, count: int, batch: int, generator: torch.Generator, length: int) -> list:
    """`count` batches of (natural cubic spline, labels), each with its own draw of series."""
    batches = []
    for _ in range(count):
        t, data, label = spirals(task, batch, generator, length)
        batches.append((natural_cubic_spline(t, data), label))
    return batches


# --- model ------------------------------------------------------------------------------------


class VectorField(nn.Module):
    """f(z): hidden -> (hidden, channels), an MLP with a tanh output (torchcde's example)."""

    def __init__(self, hidden: int, channels: int, width: int, activation: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.hidden, self.channels = hidden, channels
        self.net = nn.Sequential(nn.Linear(hidden, width), activation(), nn.Linear(width, hidden * channels), nn.Tanh())

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(*z.shape[:-1], self.hidden, self.channels)


class CDEClassifier(nn.Module):
    """z0 = Linear(X(t0)); dz = f(z) dX; logits = Linear(z(T))."""

    def __init__(self, channels: int, hidden: int, width: int, classes: int, activation: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.initial = nn.Linear(channels, hidden)
        self.field = VectorField(hidden, channels, width, activation)
        self.readout = nn.Linear(hidden, classes)

    def forward(self, X, cde: pyode.nn.NeuralCDE) -> tuple[torch.Tensor, pyode.Solution]:
        z0 = self.initial(X.evaluate(X.knots[0]))
        sol = cde(X, z0, saveat=X.knots[-1:])  # only z(T) is read: one backward solve over [t0, T]
        return self.readout(sol.y[-1]), sol


# --- the norms of the backward solve ----------------------------------------------------------


def per_tensor_norm(field: nn.Module):
    """torchdiffeq's default adjoint norm since 0.2, less its a_t channel: the largest RMS over z,
    a and the adjoint of each parameter tensor on its own (a bias is not averaged into a weight)."""
    sizes = [p.numel() for p in field.parameters()]

    def norm(x: tuple) -> torch.Tensor:
        z, a, a_theta = x
        assert a_theta.numel() == sum(sizes), "the adjoint's parameters are not the vector field's"
        return torch.stack([pyode.rms_norm(part) for part in (z, a, *a_theta.split(sizes))]).max()

    return norm


NORMS = {
    "full (pyode)": lambda field: pyode.BacksolveAdjoint(seminorm=False),
    "full (per tensor)": lambda field: pyode.BacksolveAdjoint(seminorm=False, internalnorm=per_tensor_norm(field)),
    "seminorm": lambda field: pyode.BacksolveAdjoint(seminorm=True),
}


def neural_cde(field: nn.Module, norm: str, rtol: float, atol: float, stop_at_knots: bool | None = None):
    """The CDE solve of the model: DP5 both ways, BacksolveAdjoint with the named norm."""
    return pyode.nn.NeuralCDE(field, pyode.DP5(), NORMS[norm](field), rtol=rtol, atol=atol, stop_at_knots=stop_at_knots)


# --- part 1: training -------------------------------------------------------------------------


def train(task: str, norm: str, train_batches: list, test_batches: list, args) -> tuple[dict, CDEClassifier]:
    torch.manual_seed(args.seed)
    model = CDEClassifier(5, args.hidden, args.width, TASKS[task])
    cde = neural_cde(model.field, norm, args.rtol, args.atol)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    row = {"forward": 0, "backward": 0}
    start = time.perf_counter()
    for X, label in train_batches:
        logits, sol = model(X, cde)
        loss = nn.functional.cross_entropy(logits, label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        row["forward"] += sol.stats.nfe
        row["backward"] += sol.adjoint_stats.nfe
    row["seconds"] = time.perf_counter() - start
    row["loss"] = loss.item()
    with torch.no_grad():
        correct = sum(int((model(X, cde)[0].argmax(-1) == label).sum()) for X, label in test_batches)
    row["accuracy"] = correct / sum(len(label) for _, label in test_batches)
    return row, model


def saving(seminorm: int, other: int) -> str:
    """How many fewer backward NFE the seminorm took than another norm, in percent."""
    return f"{round(100 * (1 - seminorm / other))}%"


def part1(args) -> CDEClassifier:
    P = sum(p.numel() for p in VectorField(args.hidden, 5, args.width).parameters())
    state = args.batch * args.hidden
    print(
        f"\nPart 1: training, Adam on batches of {args.batch} (fresh series each step), DP5 at rtol {args.rtol:g}, "
        f"atol {args.atol:g}; test accuracy on {args.test} held-out series.\nThe vector field has "
        f"{P} parameters against {state} state entries (batch × hidden), so the backward solve carries "
        f"2 × {state} + {P} channels, {P / state:.0f} parameter channels per state entry."
    )
    print(
        f"{'task':<10} {'steps':>5} {'norm':<19} {'accuracy':>8} {'final loss':>10} {'forward NFE':>11} "
        f"{'backward NFE':>12} {'seminorm saves':>14} {'time s':>7}"
    )
    kept = None
    for task in TASKS:
        generator = torch.Generator().manual_seed(args.seed)
        train_batches = make_batches(task, args.iters[task], args.batch, generator, args.length)
        test_batches = make_batches(task, max(1, args.test // 128), min(args.test, 128), generator, args.length)
        rows = {}
        for norm in NORMS:
            rows[norm], model = train(task, norm, train_batches, test_batches, args)
            if norm == "seminorm":
                kept = model  # the last task's, costed in part 2
        for norm, row in rows.items():
            saves = "" if norm == "seminorm" else saving(rows["seminorm"]["backward"], row["backward"])
            print(
                f"{task:<10} {args.iters[task]:>5} {norm:<19} {row['accuracy']:>8.1%} {row['loss']:>10.3f} "
                f"{row['forward']:>11} {row['backward']:>12} {saves:>14} {row['seconds']:>7.1f}",
                flush=True,
            )
    print("(seminorm saves: how many fewer backward NFE the seminorm run took than that row's)")
    return kept


# --- parts 2 and 3: one gradient at fixed parameters ----------------------------------------

PATHS = {  # name: (interpolation, stop_at_knots)
    "cubic, free steps": (natural_cubic_spline, None),  # the default for a C² spline
    "cubic, on knots": (natural_cubic_spline, True),
    "linear (paper code)": (linear, None),  # dX/dt jumps at every knot: steps land on each and restart
}


def gradient_costs(model: CDEClassifier, series: list, path: str, rtol: float, atol: float) -> tuple[int, dict]:
    """Forward NFE and each norm's backward NFE of one gradient, summed over `series`."""
    interpolate, stop_at_knots = PATHS[path]
    backward = {}
    for norm in NORMS:
        cde = neural_cde(model.field, norm, rtol, atol, stop_at_knots)
        forward = backward[norm] = 0
        for t, data, label in series:
            logits, sol = model(interpolate(t, data), cde)
            model.zero_grad()
            nn.functional.cross_entropy(logits, label).backward()
            forward += sol.stats.nfe
            backward[norm] += sol.adjoint_stats.nfe
    return forward, backward


def print_costs(rows: list) -> None:
    print(
        f"{'model':<13} {'path':<19} {'rtol':>6} {'atol':>6} {'forward':>7} "
        + " ".join(f"{'bwd ' + norm:>23}" for norm in NORMS)
        + f" {'saves vs pyode':>14} {'vs per tensor':>14}"
    )
    for name, path, rtol, atol, forward, backward in rows:
        semi = backward["seminorm"]
        print(
            f"{name:<13} {path:<19} {rtol:>6g} {atol:>6g} {forward:>7} "
            + " ".join(f"{backward[norm]:>23}" for norm in NORMS)
            + f" {saving(semi, backward['full (pyode)']):>14} {saving(semi, backward['full (per tensor)']):>14}",
            flush=True,
        )


def part2(model: CDEClassifier, args) -> None:
    generator = torch.Generator().manual_seed(args.seed + 1)
    series = [spirals("turns", args.batch, generator, args.length) for _ in range(args.cost_batches)]
    print(
        f"\nPart 2: one gradient of the ReLU model trained on 'turns' with the seminorm, on each of the "
        f"{args.cost_batches} fixed batch(es) of {args.batch} (NFE summed), through three paths at {len(args.tolerances)} tolerance(s)"
    )
    print_costs(
        [
            ("trained ReLU", path, rtol, atol, *gradient_costs(model, series, path, rtol, atol))
            for path in PATHS
            for rtol, atol in args.tolerances
        ]
    )


def part3(args) -> None:
    """The same at initialization, with ReLU or tanh as the hidden activation."""
    generator = torch.Generator().manual_seed(args.seed + 1)
    series = [spirals("turns", args.batch, generator, args.length)]
    print(
        f"\nPart 3: the same for freshly initialized models whose hidden activation is ReLU or tanh, on the first "
        f"batch, at rtol {args.rtol:g}, atol {args.atol:g}"
    )
    rows = []
    for name, activation in (("initial ReLU", nn.ReLU), ("initial tanh", nn.Tanh)):
        torch.manual_seed(args.seed)
        model = CDEClassifier(5, args.hidden, args.width, TASKS["turns"], activation)
        for path in PATHS:
            rows.append((name, path, args.rtol, args.atol, *gradient_costs(model, series, path, args.rtol, args.atol)))
    print_costs(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a few steps on small batches of short series (about 20 s)"
    )
    parser.add_argument(
        "--iters", type=int, default=None, help="Adam steps per run (default 20 on 'direction', 60 on 'turns')"
    )
    parser.add_argument("--batch", type=int, default=None, help="series per batch (default 32; 8 with --quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rtol", type=float, default=1e-3, help="training tolerance (the paper's code: 1e-3)")
    parser.add_argument("--atol", type=float, default=1e-6, help="training tolerance (the paper's code: 1e-6)")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-2)
    args = parser.parse_args()
    if args.iters is None:
        args.iters = {"direction": 3, "turns": 3} if args.quick else {"direction": 20, "turns": 60}
    else:
        args.iters = dict.fromkeys(TASKS, args.iters)
    args.batch = args.batch or (8 if args.quick else 32)
    args.test = 32 if args.quick else 256
    args.length = 50 if args.quick else 100  # observation times per series
    args.cost_batches = 1 if args.quick else 2
    args.tolerances = [(1e-3, 1e-6)] if args.quick else [(1e-3, 1e-5), (1e-3, 1e-6), (1e-4, 1e-7)]
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)  # small batches: one thread is faster than two contending for the cores
    print("$ python " + " ".join(sys.argv))
    print(f"pyode {pyode.__version__}, torch {torch.__version__}, Python {platform.python_version()}, float64")
    start = time.perf_counter()
    model = part1(args)
    part2(model, args)
    part3(args)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
