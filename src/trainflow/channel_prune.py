"""Structured pruning that shrinks: remove whole hidden units (Linear outputs) and conv output
channels by L1/L2 weight norm and rebuild the smaller network through the model's builder,
so the package records plain narrower widths in model.json and loads with no special case.

The dependencies are followed by walking the builders' nn.Sequential in order (no
dependency-graph library: mlp and cnn are plain sequences): a pruned layer's kept outputs
select the next Linear's input columns, the next Conv's input channels, a BatchNorm's or
LayerNorm's channels, and across a Flatten the first Linear's input features (each kept
channel's block of spatial positions).

Removing units that emit zero leaves every output unchanged, with or without batch norm (the
test's check of the rebuild); a LayerNorm after a pruned layer normalizes over the kept units
only, so there the fine-tune, not the rebuild, restores the outputs."""

from __future__ import annotations

from collections.abc import Callable
from math import prod
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from trainflow import registry
from trainflow.engine.model_folder import build_model
from trainflow.errors import TrainflowError
from trainflow.models.layers import ACTIVATIONS
from trainflow.spec.structured_prune import (
    StructuredPruneParams,
    kept_width,
    prunable_widths,
)

PRODUCERS = (nn.Linear, nn.Conv2d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)
# layers that act on each unit alone, so a unit's removal passes through them unchanged
PER_UNIT = (*ACTIVATIONS.values(), nn.Dropout, nn.MaxPool2d, nn.Identity)


def schedule(widths: list[int], sparsity: float, steps: int) -> list[list[int]]:
    """The widths after each of `steps` rounds: each round removes an equal share of the
    original units, the last reaching `sparsity`."""
    return [[kept_width(w, sparsity * (k + 1) / steps) for w in widths] for k in range(steps)]


def prune_in_steps(
    net: nn.Module,
    model: dict,
    input_shape: list[int],
    params: StructuredPruneParams,
    finetune: Callable[[nn.Module], None] | None = None,
) -> tuple[nn.Module, dict]:
    """`params.steps` rounds of prune (to the schedule's widths) then `finetune` (when
    given and params.finetune_epochs); the pruned network and its model.json entry."""
    spec = registry.MODELS[model["type"]].params(**model)
    plan = schedule(prunable_widths(spec), params.sparsity, params.steps)
    for widths in plan:
        net, model = prune_to(net, model, input_shape, widths, params.type)
        if finetune is not None and params.finetune_epochs:
            finetune(net)
    return net, model


def prune_to(
    net: nn.Module, model: dict, input_shape: list[int], widths: list[int], criterion: str
) -> tuple[nn.Module, dict]:
    """A new network of the same builder with `widths` for its prunable layers, holding the
    weights of each layer's largest-norm units (`criterion` l1_structured or l2_structured)."""
    layers = sequence_of(net, model)
    producers = [i for i, m in enumerate(layers) if isinstance(m, PRODUCERS)][:-1]  # not head
    if len(producers) != len(widths):
        raise TrainflowError(
            f"structured pruning: the {model['type']} network has {len(producers)} prunable "
            f"layers and its model.json describes {len(widths)}: rebuild it from model.json"
        )
    norm = 1 if criterion == "l1_structured" else 2
    keeps = {i: strongest(layers[i], w, norm, i) for i, w in zip(producers, widths)}
    pruned_model = narrowed(model, widths)
    spec = registry.MODELS[model["type"]].params(**pruned_model)
    head: Any = layers[len(layers) - 1]  # torch types a submodule's attributes loosely
    classes = int(head.weight.shape[0])
    smaller = build_model(spec, input_shape, classes)
    copy_kept(layers, smaller, slices(layers, keeps, input_shape))
    return smaller.train(net.training), pruned_model


def sequence_of(net: nn.Module, model: dict) -> nn.Sequential:
    """The network as the plain sequence this module walks, or a clear refusal."""
    if not isinstance(net, nn.Sequential) or model.get("share"):
        raise TrainflowError(
            f"structured pruning takes a plain mlp or cnn sequence; this {model['type']} "
            f"network is a {type(net).__name__} (multi-task heads or shared parameters share "
            "a layer's outputs): use compress.prune type l1_unstructured"
        )
    for index, layer in enumerate(net):
        if nn.utils.parametrize.is_parametrized(layer):
            raise TrainflowError(
                f"structured pruning: layer {index} is parametrized (spectral norm): set "
                "model.spectral_norm to false or use compress.prune type l1_unstructured"
            )
    return net


def strongest(layer: Any, width: int, norm: int, index: int) -> torch.Tensor:
    """The sorted indices of `layer`'s `width` output units with the largest weight norms."""
    weight = layer.weight.detach()
    if width < 1 or width > weight.shape[0]:
        raise TrainflowError(
            f"structured pruning: layer {index} has {weight.shape[0]} units and would keep "
            f"{width} (a whole layer removed): lower compress.prune.sparsity"
        )
    scores = weight.flatten(1).norm(p=norm, dim=1)
    # stable: equal norms keep the lower index, so a run is reproducible
    order = torch.sort(scores, descending=True, stable=True).indices[:width]
    return torch.sort(order).values


def narrowed(model: dict, widths: list[int]) -> dict:
    """The model.json entry of the same builder with the pruned widths."""
    if model["type"] == "mlp":
        return {**model, "units": list(widths), "hidden_layers": len(widths)}
    return {**model, "channels": list(widths[:-1]), "hidden": widths[-1]}


def slices(
    layers: nn.Sequential, keeps: dict[int, torch.Tensor], input_shape: list[int]
) -> dict[int, tuple[torch.Tensor | None, torch.Tensor | None]]:
    """Per layer index: (kept rows of its dim 0, kept columns of its dim 1), None for all."""
    shapes = input_shapes(layers, input_shape)
    flowing: torch.Tensor | None = None  # kept indices of the units the last layer emits
    plan: dict[int, tuple[torch.Tensor | None, torch.Tensor | None]] = {}
    for index, layer in enumerate(layers):
        if isinstance(layer, PRODUCERS):
            plan[index] = (keeps.get(index), flowing)
            flowing = keeps.get(index)
        elif isinstance(layer, NORMS):
            plan[index] = (flowing, None)
        elif isinstance(layer, nn.Flatten):
            if flowing is not None:  # feature = channel * positions + position
                positions = prod(shapes[index][2:])
                flowing = (flowing[:, None] * positions + torch.arange(positions)).flatten()
        elif not isinstance(layer, PER_UNIT):
            raise TrainflowError(
                f"structured pruning cannot follow layer {index} ({type(layer).__name__}): "
                "use compress.prune type l1_unstructured"
            )
    return plan


def input_shapes(layers: nn.Sequential, input_shape: list[int]) -> dict[int, tuple]:
    """Each Flatten's input shape, seen on one zero sample (the spatial size it flattens)."""
    shapes: dict[int, tuple] = {}
    hooks = [
        layer.register_forward_pre_hook(lambda _m, args, i=i: shapes.__setitem__(i, args[0].shape))
        for i, layer in enumerate(layers)
        if isinstance(layer, nn.Flatten)
    ]
    was_training = layers.training
    with torch.no_grad():
        layers.eval()(torch.zeros(1, *input_shape, device=device_of(layers)))
    layers.train(was_training)
    for hook in hooks:
        hook.remove()
    return shapes


def copy_kept(old: nn.Sequential, new: nn.Module, plan: dict) -> None:
    """Load into `new` each planned layer's kept rows and columns of `old`'s tensors."""
    state = {}
    for index, layer in enumerate(old):
        rows, cols = plan.get(index, (None, None))
        for name, tensor in layer.state_dict().items():
            if tensor.dim() > 0 and rows is not None:
                tensor = tensor.index_select(0, rows.to(tensor.device))
            if tensor.dim() > 1 and cols is not None:
                tensor = tensor.index_select(1, cols.to(tensor.device))
            state[f"{index}.{name}"] = tensor.clone()
    new.load_state_dict(state)


def sizes(net: nn.Module, input_shape: list[int]) -> dict:
    """What structured pruning shrinks: parameter count and one sample's forward FLOPs."""
    return {"parameters": parameters(net), "flops": flops(net, input_shape)}


def device_of(net: nn.Module) -> torch.device:
    """Where the network's weights are (a fine-tune may have moved it to an accelerator)."""
    return next(net.parameters()).device


def parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def flops(net: nn.Module, input_shape: list[int]) -> int:
    """Floating-point operations of one sample's forward pass (torch's flop counter)."""
    counter = FlopCounterMode(display=False)
    was_training = net.training
    with counter, torch.no_grad():
        net.eval()(torch.zeros(1, *input_shape, device=device_of(net)))
    net.train(was_training)
    return counter.get_total_flops()
