"""torchdiffeq's `method="scipy_solver"`: `scipy.integrate.solve_ivp` on flat states, no gradients."""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..integrate import StateLayout
from ..problem import State
from ._options import _SCIPY_OPTIONS, _SCIPY_SOLVERS, _initial_only, _number


def _scipy_odeint(func: Callable, y0: State, t: torch.Tensor, rtol: Any, atol: Any, options: Any, name: str) -> State:
    """torchdiffeq's "scipy_solver": `scipy.integrate.solve_ivp` on the flattened state, with
    func evaluated under `no_grad` (so no gradients), in y0's dtype and on its device; float64
    arithmetic inside scipy; decreasing t integrated as torchdiffeq does, on -t."""
    options = dict(options or {})
    unknown = sorted(set(options) - _SCIPY_OPTIONS)
    if unknown:
        raise ValueError(
            f"{name}: option(s) {unknown} are not supported for method 'scipy_solver'; supported: "
            f"{sorted(_SCIPY_OPTIONS)}"
        )
    solver = options.get("solver", "LSODA")
    if isinstance(solver, str) and solver not in _SCIPY_SOLVERS:
        raise ValueError(f"{name}: option 'solver' must be one of scipy's {list(_SCIPY_SOLVERS)}; got {solver!r}")
    extra = {}
    if options.get("min_step") is not None:
        extra["min_step"] = _number(options["min_step"], "min_step", name, strict=False)
    if options.get("max_step") is not None:
        extra["max_step"] = _number(options["max_step"], "max_step", name, inf=True)
    try:
        from scipy.integrate import solve_ivp
    except ImportError:
        raise ImportError(
            f"{name}: method='scipy_solver' needs scipy, which is not installed: pip install scipy"
        ) from None
    import numpy as np

    if t.numel() == 1:
        return _initial_only(tuple(y.detach() for y in y0) if isinstance(y0, tuple) else y0.detach())
    layout = StateLayout(y0)
    flat0 = layout.flatten(y0).detach()
    dtype, device = flat0.dtype, flat0.device
    times = t.detach().cpu().numpy()
    reverse = bool(times[-1] < times[0])
    if reverse:
        times = -times

    def rhs(s: Any, y: Any) -> Any:
        ts = torch.tensor(s).to(device, dtype)
        with torch.no_grad():
            out = func(-ts if reverse else ts, layout.unflatten(torch.tensor(y).to(device, dtype)))
            flat = torch.cat([o.reshape(-1) for o in out]) if layout.is_tuple else out.reshape(-1)
            if reverse:
                flat = -flat
        return flat.detach().cpu().numpy()

    def tolerance(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.detach().cpu().double().numpy()
        if isinstance(value, (tuple, list)) and layout.is_tuple:
            return np.concatenate([np.broadcast_to(_np_tolerance(v), (size,)) for v, size in zip(value, layout.sizes)])
        return value

    sol = solve_ivp(
        rhs,
        t_span=[times.min(), times.max()],
        y0=flat0.cpu().numpy(),
        t_eval=times,
        method=solver,
        rtol=tolerance(rtol),
        atol=tolerance(atol),
        **extra,
    )
    if sol.status < 0 or sol.y.shape[1] != len(times):
        raise RuntimeError(f"{name}: scipy's solve_ivp (method {solver!r}) failed: {sol.message}")
    ys = torch.tensor(sol.y).T.to(device, dtype)
    return layout.unflatten_batch(ys)


def _np_tolerance(value: Any) -> Any:
    import numpy as np

    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double().reshape(-1).numpy()
    return np.asarray(value, dtype=np.float64).reshape(-1)
