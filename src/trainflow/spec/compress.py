"""The compress section: quantize, prune, and the accuracy gate a compressed model must pass
to be packaged (tasks/quantize.py and tasks/prune.py decide it, tasks/package.py obeys it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from trainflow import registry
from trainflow.spec.base import Section
from trainflow.spec.metric_table import BASE, METRICS

if TYPE_CHECKING:  # built at run time from the registry's tables: opaque to mypy
    Quantizer = Any
    Pruner = Any
else:
    Quantizer = registry.union(registry.QUANTIZERS)
    Pruner = registry.union(registry.PRUNERS)

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


class CompressSpec(Section):
    quantize: Quantizer | None = None
    prune: Pruner | None = None
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
    if static and spec.model.type not in STATIC_INT8_MODELS:
        return (
            f"compress.quantize static_int8 takes the {' and '.join(STATIC_INT8_MODELS)} "
            f"families (int8 kernels for each of their layers); model.type is "
            f"{spec.model.type}: use type dynamic_int8 (its Linear layers), or remove "
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


def gate_refusal(spec: Any) -> str | None:
    """Why compress.gate cannot hold on this spec, or None."""
    gate = spec.compress.gate
    if gate is None:
        return None
    if spec.compress.quantize is None and spec.compress.prune is None:
        return (
            "compress.gate gates a compressed model and the spec compresses none: set "
            "compress.quantize or compress.prune, or remove compress.gate"
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
