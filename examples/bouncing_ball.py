"""Learn a bouncing ball's coefficient of restitution e and drop height h from its bounce times,
differentiating through a sequence of events.

    python examples/bouncing_ball.py           # a few seconds on 2 CPU cores
    python examples/bouncing_ball.py --plot    # also save docs/figures/bouncing_ball.png

The ball falls from height h under gravity g (known); each time it reaches the ground an event
reverses its velocity and scales it by e, and the solve goes on. The observations are the first
six bounce times (closed form t₁ = √(2h/g), t_{k+1} = t_k + 2eᵏ√(2gh)/g, plus Gaussian noise).
The predicted times are `sol.event_log`'s, of one pyode solve that a second, terminal event stops
at the top of the flight after the sixth bounce, so the span adapts to the current e and h. Their
gradients come from the implicit function theorem at each event (see `pyode.Event`).

Prints the gradient at the starting parameters (e = 0.6, h = 1.2) against central finite
differences and the closed form; a table of the fit (L-BFGS; or Adam with --optimizer adam, which
crawls along the narrow valley in which e and h trade off against each other: after 400 iterations
it is still some standard errors from the optimum that L-BFGS reaches in ten); and the fitted e and
h against the truth and the closed-form least-squares estimate from the same observations (the
maximum-likelihood estimate under the Gaussian noise). The fit through the events reaches that
estimate; what separates both from the truth is the noise, as the estimate's standard errors show.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

import pyode

DTYPE = torch.float64
G = 9.81  # gravity, known
E_TRUE, H_TRUE = 0.8, 2.0
E_START, H_START = 0.6, 1.2
DEFAULT_PLOT = Path(__file__).resolve().parent.parent / "docs" / "figures" / "bouncing_ball.png"
RTOL, ATOL = 1e-10, 1e-12


def closed_form_times(e: torch.Tensor, h: torch.Tensor, n: int, g: float = G) -> torch.Tensor:
    """The first n bounce times: t₁ = √(2h/g), t_{k+1} = t_k + 2eᵏ√(2gh)/g."""
    t1 = torch.sqrt(2 * h / g)
    flights = 2 * e ** torch.arange(1, n, dtype=DTYPE) * torch.sqrt(2 * g * h) / g
    return torch.cumsum(torch.cat((t1.reshape(1), flights)), 0)


def simulate(e: torch.Tensor, h: torch.Tensor, n: int, t_max: float, dense: bool = False) -> pyode.Solution:
    """One solve of the ball from rest at height h until the top of the flight after the n-th bounce.

    The state is (height, velocity, bounces so far). Event 0 is the bounce: non-terminal, at
    falling zero crossings of the height, it reverses and scales the velocity and counts the
    bounce. Event 1 is terminal: the velocity falling through zero (the top of a flight) once n
    bounces have been counted; before that its condition is a constant 1, which never crosses.
    """

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.stack((y[1], -G + 0 * y[0], 0 * y[2]))

    bounce = pyode.Event(
        lambda t, y: y[0],
        terminal=False,
        direction=-1,
        affect=lambda t, y: torch.stack((y[0], -e * y[1], y[2] + 1)),
    )
    stop = pyode.Event(lambda t, y: torch.where(y[2] > n - 0.5, y[1], torch.ones_like(y[1])), direction=-1)
    y0 = torch.stack((h, torch.zeros_like(h), torch.zeros_like(h)))
    prob = pyode.ODEProblem(f, y0, (0.0, t_max))
    # dense=False unless the trajectory is wanted: only the event times are.
    return pyode.solve(prob, pyode.Tsit5(), events=[bounce, stop], rtol=RTOL, atol=ATOL, dense=dense)


def bounce_times(sol: pyode.Solution, n: int, t_max: float) -> torch.Tensor:
    """The first n bounce times from the solve's event log, with their gradients."""
    times = [t for t, index in sol.event_log if index == 0]
    if len(times) < n:
        raise RuntimeError(
            f"only {len(times)} bounce(s) before t = {t_max:g} (retcode {sol.retcode}), but {n} are observed: "
            f"raise --t-max, or start from a smaller h or e"
        )
    return torch.stack(times[:n])


def predicted_times(e: torch.Tensor, h: torch.Tensor, n: int, t_max: float) -> torch.Tensor:
    return bounce_times(simulate(e, h, n, t_max), n, t_max)


def loss_fn(pred: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the bounce times (s²)."""
    return ((pred - observed) ** 2).mean()


def gradient_check(observed: torch.Tensor, t_max: float, step: float = 3e-5) -> dict[str, torch.Tensor]:
    """d loss / d(e, h) at the starting parameters: pyode's event gradients, central finite
    differences of pyode solves, and autograd through the closed form. The finite differences'
    step balances their truncation error (step²) against the rounding of the solves (1/step)."""
    n = len(observed)
    e = torch.tensor(E_START, dtype=DTYPE, requires_grad=True)
    h = torch.tensor(H_START, dtype=DTYPE, requires_grad=True)
    pyode_grad = torch.stack(torch.autograd.grad(loss_fn(predicted_times(e, h, n, t_max), observed), (e, h)))
    closed_grad = torch.stack(torch.autograd.grad(loss_fn(closed_form_times(e, h, n), observed), (e, h)))
    fd = []
    with torch.no_grad():
        for k in range(2):
            values = []
            for sign in (1, -1):
                p = torch.tensor([E_START, H_START], dtype=DTYPE)
                p[k] += sign * step
                values.append(loss_fn(predicted_times(p[0], p[1], n, t_max), observed))
            fd.append((values[0] - values[1]) / (2 * step))
    return {"pyode": pyode_grad, "finite differences": torch.stack(fd), "closed form": closed_grad}


def closed_form_fit(observed: torch.Tensor, noise: float, iterations: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares on the closed-form times by Gauss–Newton: (e, h) and their standard errors
    σ·√diag((JᵀJ)⁻¹) from noise of standard deviation σ."""
    n = len(observed)
    p = torch.tensor([E_START, H_START], dtype=DTYPE)
    for _ in range(iterations):
        J = torch.autograd.functional.jacobian(lambda q: closed_form_times(q[0], q[1], n), p)
        r = closed_form_times(p[0], p[1], n) - observed
        dp = torch.linalg.lstsq(J, -r.unsqueeze(-1)).solution.squeeze(-1)
        p = p + dp
        if dp.abs().max() < 1e-15:
            break
    J = torch.autograd.functional.jacobian(lambda q: closed_form_times(q[0], q[1], n), p)
    return p, noise * torch.linalg.inv(J.T @ J).diagonal().sqrt()


def train(
    observed: torch.Tensor, iterations: int, optimizer_name: str, lr: float, t_max: float, log_every: int
) -> dict:
    """Fit e = sigmoid(a) ∈ (0, 1) and h = softplus(b) > 0 to the observed bounce times."""
    n = len(observed)
    a = torch.tensor(math.log(E_START / (1 - E_START)), dtype=DTYPE, requires_grad=True)
    b = torch.tensor(math.log(math.expm1(H_START)), dtype=DTYPE, requires_grad=True)

    def params() -> tuple[torch.Tensor, torch.Tensor]:
        return torch.sigmoid(a), torch.nn.functional.softplus(b)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_fn(predicted_times(*params(), n, t_max), observed)
        loss.backward()
        return loss

    if optimizer_name == "adam":
        optimizer = torch.optim.Adam([a, b], lr=lr)
        # Decay the step so that Adam settles at the optimum rather than hovering around it.
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(iterations, 1), eta_min=lr / 100)
    else:
        optimizer = torch.optim.LBFGS(
            [a, b], lr=1.0, max_iter=1, line_search_fn="strong_wolfe", tolerance_grad=1e-12, tolerance_change=1e-15
        )
        scheduler = None
    print(f"{'iteration':>9} {'loss (s²)':>11} {'rms (ms)':>9} {'e':>9} {'h':>9}")
    losses = []
    for it in range(iterations + 1):
        with torch.no_grad():
            e, h = params()  # where this iteration's loss is evaluated, before its step
        if it == iterations:  # the loss at the final parameters
            with torch.no_grad():
                loss = loss_fn(predicted_times(*params(), n, t_max), observed)
        else:
            loss = optimizer.step(closure) if scheduler is None else closure()
            if scheduler is not None:
                optimizer.step()
                scheduler.step()
        loss = loss.detach()
        losses.append(float(loss))
        if it % log_every == 0 or it == iterations:
            print(
                f"{it:>9} {float(loss):>11.3e} {1e3 * math.sqrt(float(loss)):>9.3f} {float(e):>9.5f} {float(h):>9.5f}"
            )
    with torch.no_grad():
        e, h = params()
    return {"losses": losses, "e": float(e), "h": float(h)}


def plot(path: Path, e: float, h: float, observed: torch.Tensor, t_max: float) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed; skipping the plot (pip install matplotlib)")
        return
    n = len(observed)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    with torch.no_grad():
        for (ee, hh), style, label in (
            ((E_START, H_START), ":", f"start: e = {E_START}, h = {H_START}"),
            ((e, h), "-", f"fitted: e = {e:.4f}, h = {h:.4f}"),
            ((E_TRUE, H_TRUE), "--", f"truth: e = {E_TRUE}, h = {H_TRUE}"),
        ):
            sol = simulate(torch.tensor(ee, dtype=DTYPE), torch.tensor(hh, dtype=DTYPE), n, t_max, dense=True)
            ts = torch.linspace(0.0, float(sol.event_time), 2000, dtype=DTYPE)
            ts = torch.cat((ts, torch.stack([t for t, _ in sol.event_log]))).sort().values  # touch the ground
            ax.plot(ts, sol(ts)[:, 0], style, label=label)
    ax.plot(observed, torch.zeros_like(observed), "kx", markersize=8, label="observed bounce times")
    ax.set_xlabel("t (s)")
    ax.set_ylabel("height (m)")
    ax.legend(fontsize=8)
    ax.set_title("a bouncing ball fitted to its bounce times through pyode events")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"saved {path}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=None, help="15 for L-BFGS, 400 for Adam by default")
    parser.add_argument("--optimizer", choices=["lbfgs", "adam"], default="lbfgs")
    parser.add_argument("--lr", type=float, default=0.02, help="Adam's learning rate")
    parser.add_argument("--bounces", type=int, default=6, help="observed bounce times")
    parser.add_argument("--noise", type=float, default=1e-3, help="standard deviation of the noise on the times (s)")
    parser.add_argument("--t-max", type=float, default=30.0, help="end of the span; the solve stops after the bounces")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--plot", nargs="?", const=str(DEFAULT_PLOT), default="", help=f"save a plot (default path {DEFAULT_PLOT})"
    )
    args = parser.parse_args(argv)
    if args.iterations is None:
        args.iterations = 15 if args.optimizer == "lbfgs" else 400
    start = time.perf_counter()

    generator = torch.Generator().manual_seed(args.seed)
    truth = closed_form_times(torch.tensor(E_TRUE, dtype=DTYPE), torch.tensor(H_TRUE, dtype=DTYPE), args.bounces)
    observed = truth + args.noise * torch.randn(args.bounces, generator=generator, dtype=DTYPE)
    print(f"observed bounce times (s): {', '.join(f'{t:.4f}' for t in observed.tolist())}")

    grads = gradient_check(observed, args.t_max)
    print(f"\nd loss / d(e, h) at e = {E_START}, h = {H_START}:")
    for name, grad in grads.items():
        print(f"  {name:<20} {grad[0].item():>+.12e} {grad[1].item():>+.12e}")
    reference = grads["closed form"]
    rel_fd = ((grads["pyode"] - grads["finite differences"]).abs() / reference.abs()).max().item()
    rel_cf = ((grads["pyode"] - reference).abs() / reference.abs()).max().item()
    print(f"  relative difference of pyode's: from finite differences {rel_fd:.1e}, from the closed form {rel_cf:.1e}")

    print(f"\nfitting with {args.optimizer}:")
    fit = train(observed, args.iterations, args.optimizer, args.lr, args.t_max, log_every=max(1, args.iterations // 10))
    (e_cf, h_cf), (se_e, se_h) = closed_form_fit(observed, args.noise)
    print(f"\n{'':<36} {'e':>10} {'h':>10}")
    print(f"{'truth':<36} {E_TRUE:>10.6f} {H_TRUE:>10.6f}")
    print(f"{'fitted through pyode events':<36} {fit['e']:>10.6f} {fit['h']:>10.6f}")
    print(f"{'closed-form least squares':<36} {e_cf.item():>10.6f} {h_cf.item():>10.6f}")
    print(f"{'  its standard error (noise)':<36} {se_e.item():>10.6f} {se_h.item():>10.6f}")
    print(
        f"{'fitted - truth, in standard errors':<36} {(fit['e'] - E_TRUE) / se_e.item():>+10.2f} "
        f"{(fit['h'] - H_TRUE) / se_h.item():>+10.2f}"
    )
    elapsed = time.perf_counter() - start
    print(f"total {elapsed:.1f} s")

    if args.plot:
        plot(Path(args.plot), fit["e"], fit["h"], observed, args.t_max)
    return {
        **fit,
        "grads": grads,
        "rel_fd": rel_fd,
        "rel_closed_form": rel_cf,
        "closed_form_fit": (e_cf.item(), h_cf.item()),
        "standard_errors": (se_e.item(), se_h.item()),
        "seconds": elapsed,
    }


if __name__ == "__main__":
    main()
