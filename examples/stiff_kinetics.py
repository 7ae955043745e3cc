"""Stiff kinetics: fit Robertson's rate constants with an implicit solver, and keep a neural ODE
trained on stiff data cheap to solve with the stiffness regularizer.

Part 1 recovers Robertson's k = (0.04, 3e7, 1e4), nine decades apart, from concentrations with 1%
multiplicative noise at log-spaced times in [1e-5, 1e5], fitting log k with Rodas5P and L-BFGS.
It first compares the gradient methods at the initial guess, then shows that Tsit5 cannot even
solve the problem within a step budget. Part 2 trains a small neural ODE on a fast–slow system
(a damped oscillator driving a variable that relaxes 100 times faster) with Tsit5, with and
without the stiffness regularizer R_S, and measures what each learned model costs to solve.

    python examples/stiff_kinetics.py           # about 4 minutes on 2 CPU cores
    python examples/stiff_kinetics.py --quick   # a few iterations, shorter spans (the test)
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import pyode

TRUE_K = (0.04, 3e7, 1e4)


class Robertson(nn.Module):
    """y1' = -k1 y1 + k3 y2 y3, y2' = k1 y1 - k3 y2 y3 - k2 y2², y3' = k2 y2², with k = exp(log_k)."""

    def __init__(self, log_k: torch.Tensor):
        super().__init__()
        self.log_k = nn.Parameter(log_k.clone())

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        k1, k2, k3 = self.log_k.exp().unbind()
        y1, y2, y3 = y.unbind(-1)
        return torch.stack([-k1 * y1 + k3 * y2 * y3, k1 * y1 - k3 * y2 * y3 - k2 * y2**2, k2 * y2**2], -1)


def fit_rates(args) -> None:
    t1 = 1e3 if args.quick else 1e5
    ts = torch.logspace(-5, torch.log10(torch.tensor(t1)).item(), 12 if args.quick else 30)
    y0 = torch.tensor([1.0, 0.0, 0.0])
    true_log_k = torch.tensor(TRUE_K).log()
    torch.manual_seed(args.seed)
    with torch.no_grad():
        clean = pyode.solve(
            pyode.ODEProblem(Robertson(true_log_k), y0, (0.0, t1)), pyode.Rodas5P(), saveat=ts, rtol=1e-10, atol=1e-16
        ).y
    data = clean * torch.exp(0.01 * torch.randn_like(clean))
    seen = data > 1e-8  # below this detection limit a concentration is not measured (y3 at the start)
    model = Robertson(true_log_k + torch.tensor([1.0, -1.0, 1.0]))  # each k off by a factor e
    rtol, atol = 1e-6, 1e-12

    def loss_with(sensealg, max_steps=100_000):
        sol = pyode.solve(
            pyode.ODEProblem(model, y0, (0.0, t1)),
            pyode.Rodas5P(),
            saveat=ts,
            rtol=rtol,
            atol=atol,
            sensealg=sensealg,
            max_steps=max_steps,
        )
        return ((sol.y - data) / data)[seen].pow(2).mean(), sol

    print(f"\nPart 1: Robertson's rates from {int(seen.sum())} noisy concentrations over [1e-5, {t1:g}]")
    print(f"{'gradient at the initial guess':<30} {'d loss / d log k':<32} {'time s':>7} {'backward steps':>14}")
    methods = [("DirectAdjoint", pyode.DirectAdjoint())]
    if not args.quick:  # the adjoints' backward solves take seconds each
        methods += [("InterpolatingAdjoint", pyode.InterpolatingAdjoint()), ("GaussAdjoint", pyode.GaussAdjoint())]
    for name, sensealg in methods:
        model.zero_grad()
        start = time.perf_counter()
        try:
            loss, sol = loss_with(sensealg, max_steps=5_000)
            loss.backward()
        except pyode.SolveError as err:  # GaussAdjoint integrates y backward: its decaying modes blow up
            print(f"{name:<30} fails: ReturnCode.{err.retcode.name} at t = {err.t:.6g} in its backward solve")
            continue
        steps = sol.adjoint_stats.naccept if sol.adjoint_stats else "(autograd)"
        grad = ", ".join(f"{g:+.5f}" for g in model.log_k.grad.tolist())
        print(f"{name:<30} {grad:<32} {time.perf_counter() - start:>7.2f} {steps:>14}")

    # Training: Rodas5P with DirectAdjoint (exact gradients of the discrete solve, the fastest here).
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=args.lbfgs_iters, line_search_fn="strong_wolfe")
    evaluations, nfe = 0, 0

    def closure():
        nonlocal evaluations, nfe
        optimizer.zero_grad()
        loss, sol = loss_with(pyode.DirectAdjoint())
        loss.backward()
        evaluations, nfe = evaluations + 1, nfe + sol.stats.nfe
        return loss

    start = time.perf_counter()
    optimizer.step(closure)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        loss = loss_with(None)[0]
    fitted = model.log_k.detach().exp()
    print(
        f"\nL-BFGS with Rodas5P + DirectAdjoint: {evaluations} loss+gradient evaluations, {nfe} forward NFE, "
        f"{seconds:.1f} s; final loss {float(loss):.2e} (the noise alone: 1e-4)"
    )
    print(f"{'rate':<5} {'true':>9} {'initial':>9} {'fitted':>9} {'error':>7}")
    for i, k in enumerate(TRUE_K):
        initial = (true_log_k[i] + (1.0, -1.0, 1.0)[i]).exp()
        print(
            f"k{i + 1:<4} {k:>9.3g} {float(initial):>9.3g} {float(fitted[i]):>9.4g} {float(fitted[i]) / k - 1:>+7.2%}"
        )

    print(f"\nThe same solve with an explicit method (Tsit5, at most {args.tsit5_steps} steps), and with Rodas5P:")
    print(f"{'solver':<8} {'outcome':<30} {'reached t':>10} {'NFE':>7} {'time s':>7}")
    for solver in (pyode.Tsit5(), pyode.Rodas5P()):
        start = time.perf_counter()
        with torch.no_grad():
            sol = pyode.solve(
                pyode.ODEProblem(Robertson(true_log_k), y0, (0.0, t1)),
                solver,
                rtol=rtol,
                atol=atol,
                max_steps=args.tsit5_steps,
                throw=False,
            )
        print(
            f"{solver!r:<8} {sol.retcode.name:<30} {float(sol.t[-1]):>10.3g} {sol.stats.nfe:>7} "
            f"{time.perf_counter() - start:>7.2f}"
        )


def fast_slow(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """x' = y, y' = -x - 0.2 y (a damped oscillator); z' = -100 (z - x²) relaxes 100 times faster."""
    x, y, z = s.unbind(-1)
    return torch.stack([y, -x - 0.2 * y, -100.0 * (z - x**2)], -1)


class Field(nn.Module):
    """A tanh MLP plus a linear term (zero at first), which lets a fast linear decay be learned quickly."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(3, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 3)
        )
        self.linear = nn.Linear(3, 3, bias=False)
        nn.init.zeros_(self.linear.weight)

    def forward(self, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self.net(s) + self.linear(s)


def initial_states(seed: int, count: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    xy = torch.randn(count, 2, generator=gen)
    return torch.cat([xy, xy[:, :1] ** 2 + 0.5 * torch.randn(count, 1, generator=gen)], 1)  # z off its slow manifold


def costs(field: nn.Module, s0: torch.Tensor, truth: torch.Tensor, ts: torch.Tensor) -> dict:
    """What a trained model costs to solve on held-out initial states, and how stiff it is."""
    out = {}
    with torch.no_grad():
        for solver, rtol in ((pyode.Tsit5(), 1e-3), (pyode.Tsit5(), 1e-6), (pyode.Rodas5P(), 1e-6)):
            start = time.perf_counter()
            sol = pyode.solve(
                pyode.ODEProblem(field, s0, (ts[0], ts[-1])), solver, saveat=ts, rtol=rtol, atol=rtol / 100
            )
            out[repr(solver), rtol] = sol.stats, (time.perf_counter() - start) * 1e3
        out["mse"] = float((sol.y - truth).pow(2).mean())
    jac = torch.func.vmap(torch.func.jacrev(lambda s: field(0.0, s)))(truth.reshape(-1, 3).detach())
    out["rho"] = float(torch.linalg.eigvals(jac.detach()).abs().max())
    # Tsit5 is stable for |hλ| ≤ 3.5: no fewer steps than the span·ρ/3.5 of the stiffest state seen.
    out["floor"] = float(ts[-1] - ts[0]) * out["rho"] / 3.5
    return out


def train_neural_odes(args) -> None:
    ts = torch.cat([torch.tensor([0.0, 0.01, 0.02, 0.04, 0.07]), torch.linspace(0.1, 3.0, 20)])  # dense while z relaxes
    train0, test0 = initial_states(0, 32), initial_states(1, 32)
    with torch.no_grad():
        train, test = (
            pyode.solve(
                pyode.ODEProblem(fast_slow, s0, (0.0, 3.0)), pyode.Rodas5P(), saveat=ts, rtol=1e-8, atol=1e-10
            ).y
            for s0 in (train0, test0)
        )
    print(
        f"\nPart 2: neural ODEs fitted to 32 trajectories of a fast–slow system (stiffness 100) on [0, 3], "
        f"{args.iters} Adam steps of Tsit5 solves at rtol 1e-4; figures on 32 held-out trajectories"
    )
    print(
        f"{'model':<13} {'train s':>7} {'train NFE':>9} {'test MSE':>8} {'max ρ(J)':>8} {'Tsit5 1e-3: steps':>17} "
        f"{'floor':>5} {'stability-bound':>15} {'NFE 1e-6: Tsit5':>15} {'Rodas5P':>7} {'ms: Tsit5':>9} {'Rodas5P':>7}"
    )
    for name, weight in (("plain", 0.0), (f"R_S × {args.stiffness_weight:g}", args.stiffness_weight)):
        torch.manual_seed(args.seed)
        field = Field()
        optimizer = torch.optim.Adam(field.parameters(), lr=3e-2)
        regularize = pyode.Regularization(error=None, stiffness="sum") if weight else False
        start, nfe = time.perf_counter(), 0
        for _ in range(args.iters):
            sol = pyode.solve(
                pyode.ODEProblem(field, train0, (0.0, 3.0)),
                pyode.Tsit5(),
                saveat=ts,
                rtol=1e-4,
                atol=1e-6,
                regularize=regularize,
            )
            loss = (sol.y - train).pow(2).mean()
            if weight:
                loss = loss + weight * sol.stiffness_estimate
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            nfe += sol.stats.nfe
        seconds = time.perf_counter() - start
        c = costs(field, test0, test, ts)
        (t3, _), (t6, t6_ms), (r6, r6_ms) = c["Tsit5()", 1e-3], c["Tsit5()", 1e-6], c["Rodas5P()", 1e-6]
        bound = "yes" if t3.naccept < 1.5 * c["floor"] else "no"
        print(
            f"{name:<13} {seconds:>7.1f} {nfe:>9} {c['mse']:>8.4f} {c['rho']:>8.1f} {t3.naccept:>17} "
            f"{c['floor']:>5.0f} {bound:>15} {t6.nfe:>15} {r6.nfe:>7} {t6_ms:>9.1f} {r6_ms:>7.1f}"
        )
    print("(floor: the fewest steps Tsit5's stability allows, span·ρ/3.5; stability-bound: steps < 1.5·floor)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few iterations on shorter spans (about 30 s)")
    parser.add_argument("--lbfgs-iters", type=int, default=None, help="L-BFGS iterations in part 1 (default 25)")
    parser.add_argument("--tsit5-steps", type=int, default=None, help="Tsit5's step budget (default 20 000)")
    parser.add_argument("--iters", type=int, default=None, help="Adam steps per neural ODE in part 2 (default 800)")
    parser.add_argument("--stiffness-weight", type=float, default=1e-4, help="weight of R_S in part 2's loss")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.lbfgs_iters = args.lbfgs_iters or (3 if args.quick else 25)
    args.tsit5_steps = args.tsit5_steps or (2_000 if args.quick else 20_000)
    args.iters = args.iters or (10 if args.quick else 800)
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)  # small states: one thread is faster than two contending for the cores
    print(f"pyode {pyode.__version__}, float64")
    fit_rates(args)
    train_neural_odes(args)


if __name__ == "__main__":
    main()
