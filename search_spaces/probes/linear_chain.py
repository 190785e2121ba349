"""J v and Jᵀ u in closed form for a chain of Linear and ReLU layers (the built-in workloads' MLPs).

For such a chain both products are a few matrix products on the activations of one forward pass. Autograd's
double-vjp (``curvature._gauss_newton_product``) computes the same numbers through a graph of about a dozen
nodes per layer, and on a small model that bookkeeping costs more than the arithmetic: on ``digits`` this path
makes a G-vector product about 1.5x faster. Large layers are bound by their matrix products either way.

A model qualifies if it is an ``nn.Sequential`` (nested ones are flattened) of parameter-free modules, then
only ``nn.Linear`` (every weight and bias trainable), ``nn.ReLU`` right after a Linear, and ``nn.Identity``.
The leading parameter-free modules (fixed features, ``Flatten``) run once, on the probe batch.
Anything else (convolutions, normalisation, dropout after the first layer, other activations) gets ``None``
and the caller uses autograd.

Pure torch: it must not import ``workers``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class _Layer:
    weight: torch.Tensor  # (out, in), detached
    has_bias: bool
    inputs: torch.Tensor  # the activation entering the layer, (m, in)
    mask: torch.Tensor | None  # (m, out): the ReLU after the layer passes these entries; None: no ReLU


class LinearChain:
    """The Jacobian of a Linear/ReLU chain at one batch, as the two products Lanczos needs."""

    def __init__(self, layers: list[_Layer], outputs: torch.Tensor) -> None:
        self.layers = layers
        self.outputs = outputs  # f(x), (m, k), detached
        self.sizes: list[int] = []  # the flat layout: each weight, then its bias if any (named_parameters' order)
        for layer in layers:
            self.sizes += [layer.weight.numel()] + [layer.weight.shape[0]] * layer.has_bias

    @classmethod
    def capture(cls, model: nn.Module, params: dict[str, torch.Tensor], inputs: torch.Tensor) -> LinearChain | None:
        """Run the chain on ``inputs``, keeping each Linear's input and ReLU mask; ``None`` if the model is not
        such a chain or ``params`` (the flat layout, in order) is not its weights and biases.

        The modules run one by one, which is the Sequential's own forward, in whatever train/eval mode the
        caller set (``curvature._probe_mode``).
        """
        modules = _chain_modules(model)
        if modules is None:
            return None
        linears = [mod for mod in modules if isinstance(mod, nn.Linear)]
        expected = [t for lin in linears for t in (lin.weight, lin.bias) if t is not None]
        if len(expected) != len(params) or any(
            e.data_ptr() != p.data_ptr() or e.shape != p.shape for e, p in zip(expected, params.values())
        ):
            return None  # frozen or shared parameters: the flat layout is not the chain's
        layers: list[_Layer] = []
        a = inputs
        with torch.no_grad():
            for mod in modules:
                if isinstance(mod, nn.Linear):
                    if a.dim() != 2:
                        return None
                    layers.append(_Layer(mod.weight.detach(), mod.bias is not None, a, None))
                    a = mod(a)
                elif isinstance(mod, nn.ReLU) and layers:  # _chain_modules: only ever right after a Linear
                    layers[-1] = dataclasses.replace(layers[-1], mask=a > 0)
                    a = torch.relu(a)
                else:  # the parameter-free prefix, or an Identity
                    a = mod(a)
        return cls(layers, a) if a.dim() == 2 else None

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        """J v for a flat parameter vector v: the tangent pushed forward through the chain, (m, k)."""
        tangent: torch.Tensor | None = None
        for layer, (dw, db) in zip(self.layers, self._split(v)):
            z = layer.inputs @ dw.T if db is None else torch.addmm(db, layer.inputs, dw.T)
            if tangent is not None:
                z.addmm_(tangent, layer.weight.T)
            tangent = z if layer.mask is None else z * layer.mask
        assert tangent is not None
        return tangent

    def vjp(self, u: torch.Tensor) -> torch.Tensor:
        """Jᵀ u for u of the outputs' shape, as a flat parameter vector."""
        result = self.outputs.new_empty(sum(self.sizes))
        self._backprop(u, self._split(result))
        return result

    def gauss_newton_product(self, h: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        """v ↦ Jᵀ h(J v) (G v for ``h`` = H/m), written into one preallocated vector that each call reuses."""
        result = self.outputs.new_empty(sum(self.sizes))
        grads = self._split(result)

        def gvp(v: torch.Tensor) -> torch.Tensor:
            self._backprop(h(self.jvp(v)), grads)
            return result

        return gvp

    def _backprop(self, u: torch.Tensor, grads: list[tuple[torch.Tensor, torch.Tensor | None]]) -> None:
        """Write Jᵀ u into the per-layer views ``grads``: plain backprop from the output."""
        delta = u if self.layers[-1].mask is None else u * self.layers[-1].mask
        for i in range(len(self.layers) - 1, -1, -1):
            layer, (dw, db) = self.layers[i], grads[i]
            torch.mm(delta.T, layer.inputs, out=dw)
            if db is not None:
                torch.sum(delta, dim=0, out=db)
            if i > 0:
                delta = delta @ layer.weight
                mask = self.layers[i - 1].mask
                if mask is not None:
                    delta.mul_(mask)

    def _split(self, flat: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        parts = iter(flat.split(self.sizes))
        return [(next(parts).view(layer.weight.shape), next(parts) if layer.has_bias else None)
                for layer in self.layers]


def _leaves(module: nn.Module) -> list[nn.Module]:
    """The modules a Sequential applies in order, nested Sequentials flattened."""
    if not isinstance(module, nn.Sequential):
        return [module]
    return [leaf for child in module for leaf in _leaves(child)]


def _chain_modules(model: nn.Module) -> list[nn.Module] | None:
    """The modules ``model`` applies in order if it qualifies (see the module docstring), else None."""
    if not isinstance(model, nn.Sequential):
        return None
    modules = _leaves(model)
    first = next((i for i, mod in enumerate(modules) if any(True for _ in mod.parameters())), None)
    if first is None:
        return None
    after_linear = False
    for mod in modules[first:]:
        if isinstance(mod, nn.Linear):  # frozen weights are caught by capture's layout check
            after_linear = True
        elif isinstance(mod, nn.ReLU) and after_linear:
            after_linear = False
        elif not isinstance(mod, nn.Identity):
            return None
    return modules
