"""Quantize: int8 weights for the Linear layers (dynamic), or int8 weights and activations
calibrated on training batches (static), with a before/after table.

The table holds what the weights determine (sizes, test accuracy), so the artifact is the same
bytes on every run; CPU latency is a property of the machine and the moment, measured on every
run by the uncached `measure_latency` step (tasks/latency.py) for the run folder and report."""

from __future__ import annotations

import json
from typing import Any

import torch
from prefect import task

from trainflow import compress, quantize_auto, registry
from trainflow.artifacts import ArtifactRef, Store
from trainflow.caching import CACHED
from trainflow.engine import checkpoint
from trainflow.engine.data import Split
from trainflow.engine.inference import score
from trainflow.engine.model_folder import WEIGHTS, describe, load_model
from trainflow.errors import TrainflowError
from trainflow.logs import Progress
from trainflow.spec.compress import GateSpec
from trainflow.spec.metric_table import BASE
from trainflow.tasks.train import load_splits


def measure(net: torch.nn.Module, test: Split, num_classes: int) -> dict:
    """What compression changes and the weights alone determine: sizes and test accuracy."""
    metrics, _ = score(net, test, num_classes)
    return {
        "size_bytes": compress.size_on_disk(net),
        "linear_weight_bytes": compress.linear_weight_bytes(net),
        "accuracy": metrics["accuracy"],
    }


def gate_value(gate: GateSpec, net: torch.nn.Module, val: Split, classes: int) -> float:
    """The gate's metric of `net` on the validation part (never the test part, which stays
    the report's unbiased figure)."""
    extra = () if gate.metric in BASE else (gate.metric,)
    return score(net, val, classes, extra=extra, where="the validation part")[0][gate.metric]


def quantize_calibrated(net: torch.nn.Module, params: Any, train: Split) -> torch.nn.Module:
    """Static int8 of `net`, its activation ranges observed on training batches."""
    batches = compress.calibration_batches(train.x, params)
    try:
        return compress.quantize_static_int8(net, params, batches)
    except TrainflowError:
        raise
    except Exception as exc:  # a layer FX cannot trace or int8 kernels lack
        raise TrainflowError(
            f"compress.quantize static_int8 cannot quantize this network "
            f"({type(exc).__name__}: {str(exc)[:200]}): use type dynamic_int8"
        ) from None


def fall_back(net: torch.nn.Module, params: Any, data: dict, gate: GateSpec, classes: int) -> Any:
    """fallback auto: `params` with the fewest layers in keep_fp32 that bring static int8
    within the gate, the layers whose quantization alone costs the most added first (all of
    them where no fewer do; the gate then judges that)."""
    baseline = gate_value(gate, net, data["val"], classes)

    def trial(keep: list[str]) -> tuple[float, Any]:
        tried = params.model_copy(update={"keep_fp32": sorted(keep)})
        quantized = quantize_calibrated(net, tried, data["train"])
        return gate.drop(baseline, gate_value(gate, quantized, data["val"], classes)), tried

    drop, chosen = trial(params.keep_fp32)
    candidates = [n for n in compress.quantizable_layers(net) if n not in params.keep_fp32]
    failed = drop > gate.max_drop + 1e-9
    alone = {name: trial([*params.keep_fp32, name])[0] for name in candidates} if failed else {}
    keep = list(params.keep_fp32)
    for name in sorted(alone, key=lambda n: alone[n]):  # least drop when kept fp32: costliest
        if drop <= gate.max_drop + 1e-9:
            break
        keep.append(name)
        drop, chosen = trial(keep)
    return chosen


def choose_method(
    net: torch.nn.Module, info: dict, shards: ArtifactRef, params: Any, gate: Any, qat: Any
):
    """compress.quantize auto: the kept method's params and every candidate's record
    (trainflow.quantize_auto); with no gate declared, the gate's defaults judge. After
    train.qat (`qat`: its prepared state), static int8 is its conversion."""
    judge, classes = gate or GateSpec(), len(info["classes"])
    data = load_splits(shards, ("train", "val"))

    def quantize(method: Any) -> tuple[torch.nn.Module, Any]:
        if method.type != "static_int8":
            return registry.QUANTIZERS[method.type].impl(net, method), method
        if qat is not None:  # (validation refused keep_fp32 and fallback with train.qat)
            return compress.convert_qat(net, method, qat), method
        if method.fallback == "auto":
            method = fall_back(net, method, data, judge, classes)
        return quantize_calibrated(net, method, data["train"]), method

    def value(candidate: torch.nn.Module) -> float:
        return gate_value(judge, candidate, data["val"], classes)

    family = info["model"]["type"]
    return quantize_auto.choose(net, params, family, quantize, value, judge, data["val"].x)


def qat_comparison(
    net: torch.nn.Module, params: Any, data: dict, qat_int8: torch.nn.Module, classes: int
) -> dict:
    """train.qat: validation and test accuracy of the trained network in fp32 (fake
    quantization removed), of static int8 calibrated on it after training (PTQ), and of its
    QAT conversion (the package): what QAT buys over post-training quantization."""
    try:
        ptq = quantize_calibrated(net, params, data["train"])
    except TrainflowError:  # too few training rows to calibrate: QAT needs none
        ptq = None
    parts = {"validation": data["val"], "test": data["test"]}
    return {
        name: {
            part: score(model, rows, classes)[0]["accuracy"]
            if len(rows) and model is not None
            else None
            for part, rows in parts.items()
        }
        for name, model in (("fp32", net), ("ptq_int8", ptq), ("qat_int8", qat_int8))
    }


@task(name="quantize", **CACHED)
def quantize_model(
    model: ArtifactRef,
    shards: ArtifactRef,
    params: Any,
    store: str,
    gate: GateSpec | None = None,
    teacher: ArtifactRef | None = None,
) -> ArtifactRef:
    """Quantize the trained `model`; with a `gate`, the verdict in the artifact's meta.
    `teacher`: `model` is a distilled student (compress.distill.quantize) and the gate
    measures the int8 student's drop from this trained model."""
    net, info = load_model(model)
    # train.qat: the ranges were learned in training; convert them (PTQ only to compare)
    qat = checkpoint.load(model.path / WEIGHTS).get("qat")
    auto: dict = {}  # the fastest method that passes the gate, then kept as if declared
    if params.type == "auto":
        params, auto["auto"] = choose_method(net, info, shards, params, gate, qat)
    calibrated = params.type == "static_int8"  # activation ranges from training batches
    qat = qat if calibrated else None
    parts = ("train",) * calibrated + ("val",) * bool(gate or qat) + ("test",)
    data = load_splits(shards, parts)
    classes = len(info["classes"])
    # by phase: calibration is one forward pass over its few batches, too quick to count
    progress = Progress("quantize-progress", "quantize: scored before, quantized, scored after")
    before = measure(net, data["test"], classes)
    progress.update(1 / 3)
    if calibrated and gate and params.fallback == "auto":
        params = fall_back(net, params, data, gate, classes)  # its keep_fp32, resolved
    if qat is not None:
        quantized = compress.convert_qat(net, params, qat)
    elif calibrated:
        quantized = quantize_calibrated(net, params, data["train"])
    else:
        quantized = registry.QUANTIZERS[params.type].impl(net, params)
    progress.update(2 / 3)
    after = measure(quantized, data["test"], classes)
    table = {
        "before": before,
        "after": after,
        "linear_weights_smaller_x": before["linear_weight_bytes"]
        / max(after["linear_weight_bytes"], 1),
    }
    if calibrated:  # the layers left in fp32 (keep_fp32, with fallback auto's additions)
        table["keep_fp32"] = list(params.keep_fp32)
    if qat is not None:  # the package is the QAT conversion; PTQ of it for comparison
        table["qat"] = qat_comparison(net, params, data, quantized, classes)
    if teacher is not None:  # distill.quantize: "before" is the student
        table["of"] = "distill"
    if gate:  # absent without a gate: the artifact of an ungated run is unchanged
        reference = load_model(teacher)[0] if teacher is not None else net  # (distill)
        baseline, value = (
            gate_value(gate, m, data["val"], classes) for m in (reference, quantized)
        )
        table["gate"] = compress.gate_decision(gate, baseline, value)
    progress.update(1.0)
    target = Store(store)
    with target.writer("model") as staging:
        checkpoint.save(staging / WEIGHTS, {"model": quantized.state_dict()})
        # the quantizer's params rebuild the same int8 network at load (its fp32 layers)
        saved = {"quantize_params": params.model_dump(mode="json")} if calibrated else {}
        describe(
            staging,
            info["model"],
            info["input_shape"],
            info["classes"],
            quantized=params.type,
            **saved,
        )
        (staging / "compression.json").write_text(json.dumps(table, indent=1, sort_keys=True))
        return target.commit(
            staging,
            "model",
            schema=model.data_schema,
            meta={"compression": "quantize", "type": params.type, **table, **auto},
        )
