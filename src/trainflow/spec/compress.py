"""The compress section: quantize, prune, distill, and the accuracy gate a compressed model
must pass to be packaged (tasks/quantize.py, tasks/prune.py and tasks/distill.py decide it,
tasks/package.py obeys it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from trainflow import registry
from trainflow.spec.base import MAX_EPOCHS, Section
from trainflow.spec.metric_table import BASE, METRICS

if TYPE_CHECKING:  # built at run time from the registry's tables: opaque to mypy
    Quantizer = Any
    Pruner = Any
    Student = Any
else:
    Quantizer = registry.union(registry.QUANTIZERS)
    Pruner = registry.union(registry.PRUNERS)
    Student = registry.union(registry.MODELS)

DEFAULT_METRIC = "accuracy"
STATIC_INT8_MODELS = ("mlp", "cnn")  # layers with int8 kernels end to end (Linear, Conv2d)


class GateSpec(Section):
    """A compressed model whose `metric` on the validation part falls more than `max_drop`
    below the trained (fp32) model's is not packaged: no package, so nothing to export,
    promote or score; the report says which gate failed and by how much."""

    metric: str = Field(
        DEFAULT_METRIC,
        description="a metric the run computes (accuracy, balanced_accuracy, "
        "precision_macro, recall_macro, f1_macro, or one evaluate.metrics lists); default: "
        "train.early_stopping's monitor where it is one of them, else accuracy",
    )
    max_drop: float = Field(
        0.01, ge=0.0, le=1.0, description="in points of the metric (0.01: one point of accuracy)"
    )
    on: Literal["validation"] = "validation"

    @property
    def lower_is_better(self) -> bool:
        return METRICS[self.metric].direction == "minimize"

    def drop(self, baseline: float, value: float) -> float:
        """How much worse `value` is than `baseline` (negative where it is better)."""
        return value - baseline if self.lower_is_better else baseline - value


class DistillSpec(Section):
    """A smaller student trained from the trained model as teacher (tasks/distill.py), on the
    same prepared data, with train.distill's loss: alpha * T^2 * KL(teacher || student at
    temperature T) + (1 - alpha) * the hard-label loss."""

    model: Student = Field(
        ...,
        description="the student's architecture (a model section, e.g. {type: mlp, "
        "hidden_layers: 1, units: 16}); it must have fewer parameters than the trained model",
    )
    epochs: int = Field(
        ...,
        le=MAX_EPOCHS,
        description="the student's epochs (train's early stopping, optimizer, lr and batch "
        "size apply)",
    )
    temperature: float = Field(4.0, gt=0, le=100)
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the soft (teacher) loss")
    quantize: bool = Field(
        False,
        description="compress.quantize quantizes the student instead of the trained model; "
        "the gate measures the int8 student's drop from the trained model",
    )

    @field_validator("epochs")
    @classmethod
    def _trains(cls, epochs: int) -> int:
        if epochs < 1:
            raise ValueError(
                f"compress.distill.epochs is {epochs}: the student would not train; give 1 "
                "or more (e.g. as many as train.epochs)"
            )
        return epochs


class CompressSpec(Section):
    quantize: Quantizer | None = None
    prune: Pruner | None = None
    distill: DistillSpec | None = None
    gate: GateSpec | None = None


def with_gate_default(data: Any) -> Any:
    """The raw pipeline with compress.gate.metric filled where the YAML leaves it out: the
    early-stopping monitor's metric, so the gate guards what chose the model."""
    gate = _get(_get(data, "compress"), "gate")
    if not isinstance(gate, dict) or "metric" in gate:
        return data
    monitor = _get(_get(_get(data, "train"), "early_stopping"), "monitor")
    name = monitor.removeprefix("val_") if isinstance(monitor, str) else ""
    metric = name if name in METRICS else DEFAULT_METRIC
    compress = {**data["compress"], "gate": {**gate, "metric": metric}}
    return {**data, "compress": compress}


def _get(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, dict) else getattr(value, key, None)


def gate_metrics(evaluate: Any) -> list[str]:
    """The metrics a run computes, so a gate may read: the base ones and evaluate.metrics."""
    return list(dict.fromkeys([*BASE, *evaluate.metrics]))


def compress_refusal(spec: Any) -> str | None:
    """Why the compress section cannot hold on this spec, or None (said at validation)."""
    quantize = spec.compress.quantize
    static = quantize is not None and quantize.type == "static_int8"
    reason = distill_refusal(spec)
    if reason:
        return reason
    quantized, where = quantized_model(spec)
    if static and quantized.type not in STATIC_INT8_MODELS:
        return (
            f"compress.quantize static_int8 takes the {' and '.join(STATIC_INT8_MODELS)} "
            f"families (int8 kernels for each of their layers); {where}.type is "
            f"{quantized.type}: use type dynamic_int8 (its Linear layers), or remove "
            "compress.quantize"
        )
    if static and quantize.fallback == "auto" and spec.compress.gate is None:
        return (
            "compress.quantize.fallback auto keeps layers in fp32 until compress.gate holds, "
            "and the spec has no gate: add compress.gate (e.g. {max_drop: 0.01}) or remove "
            "fallback"
        )
    split = spec.data.split
    no_validation = not (isinstance(split.validation, list) or split.validation)
    if quantize is not None and quantize.type == "auto" and no_validation:
        return (
            "compress.quantize auto judges each method on the validation part and "
            "split.validation is 0: give split.validation a share, or declare the type"
        )
    return gate_refusal(spec)


def quantized_model(spec: Any) -> tuple[Any, str]:
    """The model section compress.quantize quantizes, and its YAML path: the distilled
    student's where compress.distill.quantize says so, else the trained model's."""
    distill = spec.compress.distill
    if distill is not None and distill.quantize:
        return distill.model, "compress.distill.model"
    return spec.model, "model"


def distill_refusal(spec: Any) -> str | None:
    """Why compress.distill cannot hold on this spec, or None. (A student with as many
    parameters as the trained model, or one that cannot read its inputs, is refused when
    the distill step builds it: that needs the data's shape.)"""
    distill = spec.compress.distill
    if distill is None:
        return None
    if distill.quantize and spec.compress.quantize is None:
        return (
            "compress.distill.quantize quantizes the student with compress.quantize, and the "
            "spec has no compress.quantize: add one (e.g. {type: dynamic_int8}) or remove "
            "distill.quantize"
        )
    if distill.model == spec.model:
        return (
            "compress.distill.model is the trained model's architecture (model): the student "
            "would compress nothing; give it fewer layers or units"
        )
    return None


def gate_refusal(spec: Any) -> str | None:
    """Why compress.gate cannot hold on this spec, or None."""
    gate = spec.compress.gate
    if gate is None:
        return None
    compress = spec.compress
    if compress.quantize is None and compress.prune is None and compress.distill is None:
        return (
            "compress.gate gates a compressed model and the spec compresses none: set "
            "compress.quantize or compress.prune (or compress.distill), or remove compress.gate"
        )
    known = gate_metrics(spec.evaluate)
    if gate.metric not in known:
        hint = " (add it to evaluate.metrics)" if gate.metric in METRICS else ""
        return (
            f"compress.gate.metric {gate.metric!r} is not a metric this run computes{hint}; "
            f"available: {', '.join(known)}"
        )
    split = spec.data.split
    if not (isinstance(split.validation, list) or split.validation):
        return (
            "compress.gate is on: validation and split.validation is 0, so there is no "
            "validation part to score the compressed model on: give split.validation a share "
            "or remove compress.gate"
        )
    return None
