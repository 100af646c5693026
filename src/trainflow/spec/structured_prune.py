"""Params of structured pruning (registry.PRUNERS l1_structured, l2_structured) and why a
spec's model cannot take it (said at validation)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from trainflow.spec.base import Section

STRUCTURED = ("l1_structured", "l2_structured")
IMPLEMENTATION = "trainflow.channel_prune:prune_in_steps"  # registry.PRUNERS
# Plain sequences of layers, where each unit's output feeds only the next layer; a
# transformer's residual stream and a recurrent layer's state reuse every unit's output.
SEQUENTIAL_MODELS = ("mlp", "cnn")


class StructuredPruneParams(Section):
    """Remove whole hidden units (mlp) and conv output channels (cnn, and its hidden Linear)
    with the smallest L1 or L2 weight norm and rebuild smaller layers, so the model has fewer
    parameters and FLOPs; `steps` rounds of prune then fine-tune, each removing an equal share."""

    type: Literal["l1_structured", "l2_structured"]
    sparsity: float = Field(
        0.5, gt=0.0, description="share of each pruned layer's units removed (0.5 halves it)"
    )
    steps: int = Field(1, ge=1, le=50, description="prune-and-fine-tune rounds")
    finetune_epochs: int = Field(0, ge=0, description="fine-tune epochs after each step")
    finetune_lr: float | None = Field(None, gt=0, description="Default: train.lr / 10")

    @field_validator("sparsity")
    @classmethod
    def _leaves_units(cls, value: float) -> float:
        if value >= 1.0:
            raise ValueError(
                f"sparsity {value} removes every unit of each pruned layer, so no layer is "
                "left: use a share below 1 (0.5 halves each hidden width)"
            )
        return value


def kept_width(width: int, sparsity: float) -> int:
    """Units a layer of `width` keeps after pruning `sparsity` of them (the removed count
    rounded half up, not to even, so 0.5 of one unit removes it)."""
    return width - int(width * sparsity + 0.5)


def prunable_widths(model: Any) -> list[int]:
    """The widths structured pruning shrinks, in layer order: an mlp's hidden layers; a
    cnn's conv channels, then its hidden Linear."""
    if model.type == "mlp":
        units = model.units
        return list(units) if isinstance(units, list) else [units] * model.hidden_layers
    return [*model.channels, model.hidden]


def structured_refusal(spec: Any) -> str | None:
    """Why compress.prune's structured pruning cannot hold on this spec's model, or None."""
    prune = spec.compress.prune
    if prune is None or prune.type not in STRUCTURED:
        return None
    model = spec.model
    where = f"compress.prune {prune.type}"
    if model.type not in SEQUENTIAL_MODELS:
        return (
            f"{where} removes units of plain layer sequences ({', '.join(SEQUENTIAL_MODELS)}); "
            f"model.type is {model.type}, whose layers' outputs are shared (a residual "
            "stream, a recurrent state): use type l1_unstructured, or remove compress.prune"
        )
    if model.share:
        return f"{where}: model.share ties layers' parameters, so one layer cannot shrink alone"
    if getattr(model, "spectral_norm", False):
        return (
            f"{where}: model.spectral_norm's power-iteration vectors do not survive removing "
            "units: set model.spectral_norm to false or use type l1_unstructured"
        )
    widths = prunable_widths(model)
    if not widths:
        return f"{where}: the mlp has no hidden layer to prune (model.hidden_layers is 0)"
    for index, width in enumerate(widths):
        if kept_width(width, prune.sparsity) == 0:
            return (
                f"{where}: sparsity {prune.sparsity} removes all {width} units of hidden "
                f"layer {index} (a whole layer): lower compress.prune.sparsity or widen it"
            )
    return None
