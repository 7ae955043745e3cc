"""f as the adjoints see it: its vector-Jacobian products on flat states, and the checks that
the parameters listed are all the tensors f differentiates through."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..integrate import StateLayout
from ..problem import ODEProblem, Stats


class VectorField:
    """f on flat states with its vector-Jacobian products, counting evaluations."""

    def __init__(self, prob: ODEProblem, layout: StateLayout, params: tuple[torch.Tensor, ...], stats: Stats):
        self.f = prob.f
        self.prob = prob
        self.layout = layout
        self.params = params
        self.sizes = [p.numel() for p in params]
        self.stats = stats

    def __call__(self, t: float, y: torch.Tensor) -> torch.Tensor:
        self.count()
        with torch.no_grad():
            return self.layout.call(self.f, t, y)

    def vjp(
        self, t: float, y: torch.Tensor, cotangent: torch.Tensor, wrt_y: bool = True, wrt_params: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(f(t, y), cotangent·∂f/∂y or None, cotangent·∂f/∂θ flat or None): one evaluation of
        f and one backward pass through it, for the inputs asked for."""
        self.count()
        params = self.params if wrt_params else ()
        with torch.enable_grad():
            y_ = y.detach().requires_grad_(wrt_y)
            out = self.layout.call(self.f, t, y_)
            inputs = ((y_,) if wrt_y else ()) + params
            if not inputs or not out.requires_grad:
                grads: Sequence[torch.Tensor | None] = [None] * len(inputs)
            else:
                # retain_graph: f may use a tensor computed from a parameter outside f (`W2 = 2 * W`);
                # every VJP runs through that outer graph, which must survive it. f's own graph is
                # freed anyway when `out` goes out of scope.
                grads = torch.autograd.grad(out, inputs, cotangent, allow_unused=True, retain_graph=True)
        grad_y = None
        if wrt_y:
            grad_y = grads[0] if grads[0] is not None else torch.zeros_like(y)
            grads = grads[1:]
        return out.detach(), grad_y, (self.flat_params(grads, y) if wrt_params else None)

    def count(self) -> None:
        # Inside a compiled step the count would become a guard on its value (a recompilation
        # per step); the compiled stepper counts those evaluations instead (`counted`).
        if not torch.compiler.is_compiling():
            self.stats.nfe += 1

    def counted(self, field: Callable) -> Callable:
        """Mark an adjoint vector field built on this f: a compiled step adds its evaluations
        of it to this count."""
        field.nfe_counter = self.stats
        # It takes vector-Jacobian products by torch.autograd, which torch.func's transforms
        # cannot trace: an implicit solver differentiates it by finite differences (exact to
        # rounding for the adjoint's part, which is linear in a).
        field.jacobian_by_differences = True
        return field

    def flat_params(self, grads: Sequence[torch.Tensor | None], like: torch.Tensor) -> torch.Tensor:
        """Gradients for `params` (None where a parameter was unused) as one flat vector."""
        if not self.params:
            return like.new_zeros(0)
        return torch.cat(
            [
                (g if g is not None else torch.zeros_like(p)).reshape(-1).to(like.dtype)
                for g, p in zip(grads, self.params)
            ]
        )

    def check_closure(self, t: float, y: torch.Tensor) -> None:
        """Fail clearly if f uses tensors that require grad but are not in `params`: the adjoint
        would silently give them no gradient. Walks the graph of one evaluation of f, down to the
        leaves (through tensors computed outside f, whose parameters count too)."""
        self.stats.nfe += 1
        with torch.enable_grad():
            y_ = y.detach().requires_grad_(True)
            out = self.layout.call(self.f, t, y_)
        self.check_graph(out, y_, "f")
        noise = getattr(self.prob, "noise", None)
        if noise is not None and hasattr(noise, "g"):  # an SDE's diffusion is differentiated too
            self.stats.nfe_diffusion += 1
            with torch.enable_grad():
                tt = torch.scalar_tensor(t, dtype=y.dtype, device=y.device)
                self.check_graph(noise.g(tt, self.layout.unflatten(y_)), y_, "g")

    def check_graph(self, out: torch.Tensor, y_: torch.Tensor, name: str) -> None:
        """Raise if the graph of `out` reaches a tensor that requires grad other than y_ and the params."""
        if not isinstance(out, torch.Tensor):
            return
        known = {id(p) for p in self.params} | {id(y_)}
        # Non-leaf params are fine: the VJP stops at them, and backward continues above them.
        boundary = {p.grad_fn for p in self.params if p.grad_fn is not None}
        missing = []
        seen = set()
        stack = [out.grad_fn]
        while stack:
            node = stack.pop()
            if node is None or node in seen or node in boundary:
                continue
            seen.add(node)
            variable = getattr(node, "variable", None)
            if variable is not None and variable.requires_grad and id(variable) not in known:
                missing.append(tuple(variable.shape))
            stack.extend(fn for fn, _ in node.next_functions)
        if missing:
            problem = "SDEProblem" if name == "g" or getattr(self.prob, "noise", None) is not None else "ODEProblem"
            raise ValueError(
                f"{name} uses {len(missing)} tensor(s) that require grad but are not in prob.params (shapes "
                f"{missing[:5]}); the adjoint would give them no gradient. Pass them as "
                f"{problem}(..., params=[...]) (for an nn.Module {name} they are found automatically), "
                "or use sensealg=DirectAdjoint()."
            )

    def unflatten_params(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [g.view_as(p).to(p.dtype) for g, p in zip(flat.split(self.sizes), self.params)]


def _check_independent(params: tuple[torch.Tensor, ...]) -> None:
    """Refuse a parameter computed from another one: the VJP with respect to both would count
    the path through the computed one twice (once in its own gradient, which backward carries on
    upwards, and once in its ancestor's)."""
    index = {id(p): i for i, p in enumerate(params)}
    nodes = {p.grad_fn: i for i, p in enumerate(params) if p.grad_fn is not None}
    for i, p in enumerate(params):
        if p.grad_fn is None:
            continue
        stack, seen = [fn for fn, _ in p.grad_fn.next_functions], set()
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            variable = getattr(node, "variable", None)
            j = nodes.get(node, index.get(id(variable)) if variable is not None else None)
            if j is not None:
                raise ValueError(
                    f"prob.params[{i}] is computed from prob.params[{j}]: the adjoint would count the path "
                    f"through params[{i}] twice. List only one of them (gradients flow on from a computed "
                    "tensor to what it was computed from)"
                )
            stack.extend(fn for fn, _ in node.next_functions)
