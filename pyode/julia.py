"""Vector fields the Julia engine can run: a Lux model described in Python.

The Julia engine (`pyode.solve(..., backend="julia")`) solves in Julia, so its vector field
must live there: a Python `f` called at every stage would cost Python and torch dispatch at
each evaluation and could not be differentiated by Zygote. A `Chain` of `Dense` layers is
both a torch module (the torch engine runs it like any other `f`) and a description from
which the Julia engine builds the same Lux model. Its parameters are one flat vector in
Lux's order, so both engines evaluate the same function of the same numbers:

    vf = pyode.julia.Chain(pyode.julia.Dense(2, 64, "tanh"), pyode.julia.Dense(64, 2))
    prob = pyode.ODEProblem(vf, y0, (0.0, 1.0))
    sol = pyode.solve(prob, pyode.Tsit5(), saveat=ts, backend="julia")   # Lux + SciML
    sol = pyode.solve(prob, pyode.Tsit5(), saveat=ts)                    # torch

Nothing here imports juliacall or starts Julia; `install()` and `available()` do, on request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda x: x,
    "tanh": torch.tanh,
    "relu": torch.relu,
    "sigmoid": torch.sigmoid,
    "softplus": F.softplus,
    "swish": F.silu,
}


@dataclass(frozen=True)
class Dense:
    """A dense layer `activation(W x + b)`, as Lux's `Dense(in => out, activation)`.

    Args:
        in_features, out_features: the layer's sizes.
        activation: one of "identity", "tanh", "relu", "sigmoid", "softplus", "swish".
        bias: whether the layer has b.
    """

    in_features: int
    out_features: int
    activation: str = "identity"
    bias: bool = True

    def __post_init__(self) -> None:
        for name in ("in_features", "out_features"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Dense: {name} must be a positive integer; got {value!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"Dense: activation must be one of {sorted(ACTIVATIONS)}; got {self.activation!r}")
        if not isinstance(self.bias, bool):
            raise TypeError(f"Dense: bias must be True or False; got {self.bias!r}")

    @property
    def num_params(self) -> int:
        return self.out_features * self.in_features + (self.out_features if self.bias else 0)


class Chain(torch.nn.Module):
    """A chain of `Dense` layers as an autonomous vector field f(t, y) = layers(y).

    The state is a tensor whose last dimension is the first layer's input size (leading
    dimensions are a batch); the last layer must map back to that size. The parameters are
    one flat vector, `self.theta`, in Lux's order: per layer the weight (out × in) in
    column-major order, then the bias. Initialisation is PyTorch's `nn.Linear` default.

    Args:
        *layers: the `Dense` layers, each one's input size the previous one's output size.
        dtype, device: of `theta` (the default dtype and the CPU by default).
    """

    def __init__(self, *layers: Dense, dtype: torch.dtype | None = None, device: torch.device | str | None = None):
        super().__init__()
        if not layers:
            raise ValueError("Chain: needs at least one Dense layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Dense):
                raise TypeError(f"Chain: layer {i} must be a pyode.julia.Dense; got {type(layer).__name__}")
        for i in range(1, len(layers)):
            if layers[i].in_features != layers[i - 1].out_features:
                raise ValueError(
                    f"Chain: layer {i} takes {layers[i].in_features} inputs but layer {i - 1} gives "
                    f"{layers[i - 1].out_features}"
                )
        if layers[-1].out_features != layers[0].in_features:
            raise ValueError(
                f"Chain: a vector field maps the state to its derivative, so the last layer must give "
                f"{layers[0].in_features} outputs (the first layer's inputs); it gives {layers[-1].out_features}"
            )
        self.layers = tuple(layers)
        theta = torch.empty(sum(layer.num_params for layer in layers), dtype=dtype, device=device)
        self.theta = torch.nn.Parameter(theta)
        self.reset_parameters()

    @property
    def state_size(self) -> int:
        return self.layers[0].in_features

    @property
    def num_params(self) -> int:
        return self.theta.numel()

    def reset_parameters(self) -> None:
        """Each weight and bias uniform in ±1/sqrt(in_features), as torch's nn.Linear."""
        with torch.no_grad():
            for layer, (weight, bias) in zip(self.layers, self.unflatten(self.theta)):
                bound = 1.0 / math.sqrt(layer.in_features)
                weight.uniform_(-bound, bound)
                if bias is not None:
                    bias.uniform_(-bound, bound)

    def unflatten(self, theta: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Views (W, b) of each layer in a flat parameter vector; W is (out, in) as in torch."""
        views, offset = [], 0
        for layer in self.layers:
            n_in, n_out = layer.in_features, layer.out_features
            # column-major (out, in) is row-major (in, out): view that, then transpose.
            weight = theta[offset : offset + n_in * n_out].view(n_in, n_out).t()
            offset += n_in * n_out
            bias = None
            if layer.bias:
                bias = theta[offset : offset + n_out]
                offset += n_out
            views.append((weight, bias))
        return views

    def flatten(self, weights: list[tuple[torch.Tensor, torch.Tensor | None]]) -> torch.Tensor:
        """The flat vector of (W, b) pairs (W (out, in) as in `nn.Linear.weight`), in Lux's order."""
        if len(weights) != len(self.layers):
            raise ValueError(f"flatten: expected {len(self.layers)} (W, b) pairs; got {len(weights)}")
        parts = []
        for i, (layer, (weight, bias)) in enumerate(zip(self.layers, weights)):
            if tuple(weight.shape) != (layer.out_features, layer.in_features):
                raise ValueError(
                    f"flatten: layer {i}'s W must be {(layer.out_features, layer.in_features)}; got {tuple(weight.shape)}"
                )
            parts.append(weight.t().reshape(-1))
            if layer.bias:
                if bias is None or tuple(bias.shape) != (layer.out_features,):
                    raise ValueError(f"flatten: layer {i}'s b must have shape ({layer.out_features},)")
                parts.append(bias.reshape(-1))
        return torch.cat(parts)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = y
        for layer, (weight, bias) in zip(self.layers, self.unflatten(self.theta)):
            x = x @ weight.t()
            if bias is not None:
                x = x + bias
            x = ACTIVATIONS[layer.activation](x)
        return x

    def extra_repr(self) -> str:
        return ", ".join(
            f"Dense({d.in_features} => {d.out_features}"
            + (f", {d.activation}" if d.activation != "identity" else "")
            + ("" if d.bias else ", use_bias=false")
            + ")"
            for d in self.layers
        )


def install(resolve: bool = True) -> None:
    """Declare the Julia engine's Julia packages to juliapkg and (by default) resolve them:
    downloads Julia if none is found, then installs SciMLSensitivity, OrdinaryDiffEq's solvers,
    Lux and their dependencies into juliapkg's project. Needs `pip install "pyode[julia]"`."""
    from .backends.julia import install as _install

    _install(resolve=resolve)


def available() -> bool:
    """Whether the Julia engine can start here (starts it if so: juliacall, then PyODE.jl)."""
    from .backends.julia import JuliaUnavailable, load

    try:
        load()
    except JuliaUnavailable:
        return False
    return True


__all__ = ["ACTIVATIONS", "Chain", "Dense", "available", "install"]
