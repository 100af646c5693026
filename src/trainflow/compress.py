"""Model compression: dynamic int8 quantization and global L1 unstructured pruning; the sizes
their artifacts record, the accuracy gate's verdict, and the CPU latency that only a run's
report records (a timing is not a function of the model, so it never enters a
content-addressed artifact)."""

from __future__ import annotations

import copy
import io
import statistics
import time
import warnings

import torch
from torch import nn
from torch.nn.utils import prune

from trainflow.spec.after_training import DynamicInt8Params, L1UnstructuredParams
from trainflow.spec.compress import GateSpec

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


def quantize_dynamic_int8(model: nn.Module, params: DynamicInt8Params) -> nn.Module:
    """A copy of `model` whose Linear layers hold int8 weights (see BENCHMARKS.md for why
    `torch.ao` dynamic quantization is the backend on CPU)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        return torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model).cpu().eval(), {nn.Linear}, dtype=torch.qint8
        )


def gate_decision(gate: GateSpec, baseline: float, value: float) -> dict:
    """compress.gate's verdict on a compressed model: its validation `value` of the gate's
    metric against the trained model's `baseline`, and whether the drop is within max_drop
    (a hair of float slack, so a drop of exactly max_drop passes)."""
    drop = gate.drop(baseline, value)
    return {
        "metric": gate.metric,
        "on": gate.on,
        "value": value,
        "baseline": baseline,
        "drop": drop,
        "max_drop": gate.max_drop,
        "passed": drop <= gate.max_drop + 1e-9,
    }


def linear_weight_bytes(model: nn.Module) -> int:
    """Bytes held by Linear weights, float or quantized (int8 values + per-tensor scale)."""
    total = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if callable(weight):  # quantized modules expose weight() -> quantized tensor
            packed = weight()
            total += packed.int_repr().numel() * packed.int_repr().element_size() + 8
        elif isinstance(module, nn.Linear):
            total += module.weight.numel() * module.weight.element_size()
    return total


def prune_l1_unstructured(model: nn.Module, params: L1UnstructuredParams) -> list:
    """Mask the globally smallest |w| to `params.sparsity`; masks stay during fine-tuning."""
    targets = [(m, "weight") for m in model.modules() if isinstance(m, PRUNABLE)]
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=params.sparsity)
    return targets


def make_permanent(targets: list) -> None:
    for module, name in targets:
        prune.remove(module, name)


def sparsity(model: nn.Module) -> float:
    """Fraction of zeros among the weights of prunable layers."""
    weights = [m.weight for m in model.modules() if isinstance(m, PRUNABLE)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / max(sum(w.numel() for w in weights), 1)


def size_on_disk(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return len(buffer.getvalue())


@torch.inference_mode()
def latency_per_batch(model: nn.Module, batch: torch.Tensor, repeats: int = 30) -> float:
    """Median seconds of one forward pass over `batch` on CPU, after warm-up."""
    if any(p.device.type != "cpu" for p in model.parameters()):
        model = model.cpu()
    model.eval()
    for _ in range(3):
        model(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
