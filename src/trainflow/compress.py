"""Model compression: dynamic and static int8 quantization and global L1 unstructured
pruning; the sizes their artifacts record, the accuracy gate's verdict, and the CPU latency
that only a run's report records (a timing is not a function of the model, so it never
enters a content-addressed artifact)."""

from __future__ import annotations

import copy
import io
import statistics
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import prune

from trainflow.errors import TrainflowError
from trainflow.spec.after_training import DynamicInt8Params, L1UnstructuredParams, StaticInt8Params
from trainflow.spec.compress import GateSpec

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


def quantize_dynamic_int8(model: nn.Module, params: DynamicInt8Params) -> nn.Module:
    """A copy of `model` whose Linear layers hold int8 weights (see BENCHMARKS.md for why
    `torch.ao` dynamic quantization is the backend on CPU)."""
    with quiet():
        return torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model).cpu().eval(), {nn.Linear}, dtype=torch.qint8
        )


def quantize_static_int8(
    model: nn.Module, params: StaticInt8Params, calibration: Iterable[torch.Tensor] = ()
) -> nn.Module:
    """A copy of `model` with int8 weights (per output channel) and int8 activations whose
    ranges were observed on the `calibration` batches (torch.ao FX graph mode on the
    `params.backend` engine; see BENCHMARKS.md "Static int8" for why this backend). With no
    batches, the quantized form alone, for int8 weights and ranges saved earlier to load into
    (trainflow.engine.model_folder)."""
    with quiet():
        warnings.filterwarnings("ignore", message=".*must run observer before.*")  # no batches
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        mapping = int8_mapping(model, params.backend, params.keep_fp32)
        # the example input is only recorded (these builders' graphs need no shape inference)
        observed = prepare_fx(copy.deepcopy(model).cpu().eval(), mapping, (torch.zeros(1),))
        with torch.inference_mode():
            for batch in calibration:
                observed(batch)
        return convert_fx(observed)


@contextmanager
def quiet() -> Iterator[None]:
    """torch.ao's deprecation and range notices, which say nothing a user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        warnings.filterwarnings("ignore", message=".*reduce_range will be deprecated.*")
        yield


def int8_mapping(model: nn.Module, backend: str, keep_fp32: Iterable[str] = (), qat: bool = False):
    """The qconfig mapping of static int8 on `backend` (the default one torch.ao gives that
    engine), `keep_fp32`'s layers left out; `qat`: its fake-quantizing twin, so a network
    trained under it converts to the same int8 modules static int8 builds (train.qat)."""
    from torch.ao.quantization import (
        get_default_qat_qconfig_mapping,
        get_default_qconfig_mapping,
    )

    engines = torch.backends.quantized.supported_engines
    if backend not in engines:  # e.g. an ARM build of torch
        raise TrainflowError(
            f"compress.quantize.backend {backend!r} is not an int8 engine of this "
            f"torch build (it has {', '.join(e for e in engines if e != 'none')}): run on "
            "an x86 machine, or use type dynamic_int8"
        )
    torch.backends.quantized.engine = backend
    build = get_default_qat_qconfig_mapping if qat else get_default_qconfig_mapping
    mapping = build(backend)
    names = dict(model.named_modules())
    for name in keep_fp32:  # FX puts dequantize/quantize around these
        if name not in names:
            raise TrainflowError(
                f"compress.quantize.keep_fp32 names layer {name!r}, which the "
                f"network has not; its layers: {', '.join(quantizable_layers(model))}"
            )
        mapping.set_module_name(name, None)
    return mapping


def prepare_qat(model: nn.Module, backend: str) -> torch.fx.GraphModule:
    """`model` with fake quantization inserted (train.qat), sharing its parameters and
    buffers (so an optimizer built over `model` trains it); conv/linear + batch norm (+ relu)
    fused into their QAT forms."""
    with quiet():
        from torch.ao.quantization.quantize_fx import prepare_qat_fx

        was = model.training
        prepared = prepare_qat_fx(
            model.train(), int8_mapping(model, backend, qat=True), (torch.zeros(1),)
        )
        return prepared.train(was)


def convert_qat(model: nn.Module, params: StaticInt8Params, qat_state: dict) -> nn.Module:
    """The int8 network of a QAT-trained `model` (fp32 weights) whose fake-quantized state
    (weights, batch-norm statistics, learned ranges) is `qat_state`: convert_fx of it, the same
    int8 modules static int8 builds, so the package loads as a static_int8 one."""
    prepared = prepare_qat(copy.deepcopy(model).cpu(), params.backend)
    prepared.load_state_dict(qat_state)
    with quiet():
        from torch.ao.quantization.quantize_fx import convert_fx

        return convert_fx(prepared.eval())


def quantizable_layers(model: nn.Module) -> list[str]:
    """The module names of the layers static int8 turns into int8 kernels."""
    return [name for name, m in model.named_modules() if isinstance(m, PRUNABLE)]


def calibration_batches(x: torch.Tensor, params: StaticInt8Params, seed: int = 0) -> list:
    """`params.calibration_batches` batches of training rows, drawn without replacement in a
    seeded order (the same batches every run); fewer rows than that is an error."""
    size, wanted = params.calibration_batch_size, params.calibration_batches
    available = len(x) // size
    if available < wanted:
        raise TrainflowError(
            f"compress.quantize.calibration_batches is {wanted} batches of "
            f"{size} rows and the training part has {len(x)} rows, {available} such batches: "
            f"set calibration_batches to {max(available, 1)} or fewer, or lower "
            "calibration_batch_size"
        )
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return [x[order[i * size : (i + 1) * size]] for i in range(wanted)]


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
        if callable(weight) and "Linear" in type(module).__name__:  # quantized: weight()
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
