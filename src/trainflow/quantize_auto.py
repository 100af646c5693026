"""compress.quantize auto: each candidate method quantized, judged by the accuracy gate and
timed in interleaved rounds on 1 thread; the fastest that passes is kept, the declared order
winning unless another is faster by the declared margin (so noise does not flip the choice)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from trainflow.compress import gate_decision
from trainflow.errors import TrainflowError
from trainflow.spec.compress import STATIC_INT8_MODELS, GateSpec

FORWARDS = 3  # forward passes per timed round: a round is long enough for the clock
Quantize = Callable[[Any], tuple[nn.Module, Any]]  # method params -> int8 model, params used


def choose(
    net: nn.Module,
    params: Any,
    family: str,
    quantize: Quantize,
    value: Callable[[nn.Module], float],
    gate: GateSpec,
    rows: torch.Tensor,
) -> tuple[Any, dict]:
    """The kept method's params (as `quantize` resolved them) and the record of every
    candidate: its CPU ms per batch, its gate verdict, or why it was skipped. `value` is the
    gate's metric of a model on the validation part; `rows` those validation features."""
    baseline = value(net)
    candidates, built, used = [], {}, {}
    for index, method in enumerate(params.methods):
        record: dict[str, Any] = {"type": method.type}
        reason = refusal(method, family)
        if reason is None:
            try:
                built[index], used[index] = quantize(method)
                record["params"] = used[index].model_dump(mode="json")
            except TrainflowError as exc:  # e.g. a layer FX cannot trace, no int8 engine
                reason = str(exc)
        if reason is not None:
            record["skipped"] = reason
        else:
            record["gate"] = gate_decision(gate, baseline, value(built[index]))
        candidates.append(record)
    if not built:
        reasons = "; ".join(f"{c['type']}: {c['skipped']}" for c in candidates)
        raise TrainflowError(
            f"compress.quantize auto: no method could quantize this model ({reasons}): "
            "declare methods this model can take, or remove compress.quantize"
        )
    batch = batch_of(rows, params.batch_size)
    figures = cpu_ms_per_batch({"fp32": net, **built}, batch, params.runs)
    for index in built:
        candidates[index]["cpu_ms_per_batch"] = figures[index]
    kept = pick(candidates, params.margin)
    record = {
        "batch_size": params.batch_size,
        "runs": params.runs,
        "threads": 1,
        "margin": params.margin,
        "fp32_cpu_ms_per_batch": figures["fp32"],
        "candidates": candidates,
        "chosen": candidates[kept]["type"],
        "chosen_index": kept,
        "none_passed": not candidates[kept]["gate"]["passed"],
    }
    return used[kept], record


def refusal(method: Any, family: str) -> str | None:
    """Why the model's architecture cannot take `method`, or None."""
    if method.type == "static_int8" and family not in STATIC_INT8_MODELS:
        return (
            f"static_int8 takes the {' and '.join(STATIC_INT8_MODELS)} families (int8 kernels "
            f"for each of their layers); model.type is {family}"
        )
    return None


def pick(candidates: list[dict], margin: float) -> int:
    """The index kept: among the candidates that passed the gate, the first declared, unless
    another is faster by `margin` (then the fastest); where none passed, the least drop."""
    timed = [i for i, c in enumerate(candidates) if "cpu_ms_per_batch" in c]
    passed = [i for i in timed if candidates[i]["gate"]["passed"]]
    if not passed:
        return min(timed, key=lambda i: candidates[i]["gate"]["drop"])
    first = passed[0]
    fastest = min(passed, key=lambda i: candidates[i]["cpu_ms_per_batch"])
    ms = candidates[first]["cpu_ms_per_batch"], candidates[fastest]["cpu_ms_per_batch"]
    return fastest if ms[0] >= margin * ms[1] else first


def batch_of(rows: torch.Tensor, size: int) -> torch.Tensor:
    """`size` rows: the validation rows in order, repeated where there are fewer."""
    return rows[torch.arange(size) % len(rows)].cpu()


@torch.inference_mode()
def cpu_ms_per_batch(models: dict[Any, nn.Module], batch: torch.Tensor, runs: int) -> dict:
    """Median CPU milliseconds (this thread's) of one forward pass of each model over
    `batch`, on 1 thread, in `runs` rounds that take the models in turn (so a change of load
    during the measurement falls on all of them alike)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for model in models.values():  # warm-up: first-call allocations and kernel choice
            model(batch)
        times: dict[Any, list[float]] = {key: [] for key in models}
        for _ in range(runs):
            for key, model in models.items():
                start = time.thread_time()
                for _ in range(FORWARDS):
                    model(batch)
                times[key].append((time.thread_time() - start) / FORWARDS * 1e3)
    finally:
        torch.set_num_threads(threads)
    return {key: statistics.median(values) for key, values in times.items()}
