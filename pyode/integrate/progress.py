"""`progress=True`: a tqdm bar over the time span, with the NFE and the step size."""

from __future__ import annotations

import time

from ..problem import ReturnCode, Stats
from .record import AcceptedStep, Observer

_INTERVAL = 0.1  # seconds between redraws: a step costs one clock read otherwise


def check_progress(progress: bool) -> None:
    """Fail at the call, not at the first step, when tqdm is missing."""
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True or False; got {progress!r}")
    if progress:
        try:
            import tqdm  # noqa: F401
        except ImportError as e:
            raise ImportError("progress=True draws its bar with tqdm: pip install tqdm") from e


class ProgressBar(Observer):
    """Shows how far through the time span the solve is, redrawn at most every 0.1 s."""

    def __init__(self, t0: float, t1: float, stats: Stats):
        from tqdm.auto import tqdm

        self.t0, self.stats = t0, stats
        span = abs(t1 - t0)
        self.bar = tqdm(
            total=span, unit="", bar_format="{l_bar}{bar}| t={n:.4g}/{total:.4g} [{elapsed}<{remaining}{postfix}]"
        )
        self.last = time.monotonic()

    def accepted(self, step: AcceptedStep) -> None:
        now = time.monotonic()
        if now - self.last >= _INTERVAL:
            self.last = now
            self._draw(step.t_new, abs(step.h))
        return None

    def _draw(self, t: float, h: float | None) -> None:
        self.bar.n = abs(t - self.t0)
        postfix = {"nfe": self.stats.nfe}
        if h is not None:
            postfix["dt"] = f"{h:.3g}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.refresh()

    def finish(self, t: float, retcode: ReturnCode) -> None:
        self._draw(t, None)
        if retcode is not ReturnCode.Success:
            self.bar.set_description_str(retcode.name)
        self.bar.close()
