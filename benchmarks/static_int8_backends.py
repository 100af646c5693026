"""The static int8 contenders of benchmarks/quantize_backends.py: each builds, from an fp32
model and calibration batches, a callable that scores a batch (a torch tensor in, logits out).

- torch_ao_static_int8: trainflow's `static_int8` (torch.ao FX graph mode, x86 engine,
  per-channel int8 weights, int8 activations), eager as a task runs it.
- pt2e_x86_inductor: torch.export, then torchao's PT2E prepare/convert with the
  X86InductorQuantizer (per-channel weights), run eager and under torch.compile (inductor
  lowers the quantize/dequantize pairs into int8 kernels; eager runs the reference ops).
- onnxruntime_fp32 / onnxruntime_static_int8: the model exported to ONNX (dynamo exporter,
  dynamic batch) and ONNX Runtime's `quantize_static` (QDQ, per-channel int8 weights, uint8
  activations) on it, one intra-op thread.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from trainflow.compress import quantize_static_int8
from trainflow.spec.after_training import StaticInt8Params

Scorer = Callable[[torch.Tensor], object]


def torch_ao_static(model: torch.nn.Module, calibration: list[torch.Tensor]) -> Scorer:
    params = StaticInt8Params(type="static_int8", calibration_batches=len(calibration))
    return quantize_static_int8(model, params, calibration)


def pt2e(model: torch.nn.Module, calibration: list[torch.Tensor], compiled: bool) -> Scorer:
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    batch = torch.export.Dim("batch")
    exported = torch.export.export(
        copy.deepcopy(model).eval(), (calibration[0],), dynamic_shapes=({0: batch},)
    )
    observed = prepare_pt2e(exported.module(), quantizer)
    for x in calibration:
        observed(x)
    converted = convert_pt2e(observed)
    if not compiled:
        return converted
    start = time.perf_counter()
    fast = torch.compile(converted)
    with torch.no_grad():
        fast(calibration[0])
        fast(torch.cat(calibration))  # another batch size: compile the dynamic one now
    print(f"# pt2e torch.compile: {time.perf_counter() - start:.1f} s", flush=True)
    return fast


def onnxruntime_pair(
    model: torch.nn.Module, calibration: list[torch.Tensor], threads: int
) -> dict[str, Scorer]:
    """ONNX Runtime's fp32 session of the exported model and its static int8 one."""
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter([{"x": x.numpy()} for x in calibration])

        def get_next(self):
            return next(self.rows, None)

    folder = Path(tempfile.mkdtemp(prefix="quantize-ort-"))
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            copy.deepcopy(model).eval(),
            (calibration[0],),
            str(folder / "fp32.onnx"),
            input_names=["x"],
            dynamo=True,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )
    quantize_static(
        str(folder / "fp32.onnx"),
        str(folder / "int8.onnx"),
        Batches(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1

    def session(name: str) -> Scorer:
        run = ort.InferenceSession(
            str(folder / name), options, providers=["CPUExecutionProvider"]
        ).run
        return lambda x: torch.from_numpy(run(None, {"x": x.numpy()})[0])

    return {
        "onnxruntime_fp32": session("fp32.onnx"),
        "onnxruntime_static_int8": session("int8.onnx"),
    }


def static_contenders(
    model: torch.nn.Module, calibration: list[torch.Tensor], threads: int
) -> tuple[dict[str, Scorer], list[str]]:
    """Every static contender this machine can build, and a note per one it cannot."""
    built: dict[str, Scorer] = {"torch_ao_static_int8": torch_ao_static(model, calibration)}
    notes = []
    try:
        built["pt2e_x86_inductor_eager"] = pt2e(model, calibration, compiled=False)
        built["pt2e_x86_inductor_compiled"] = pt2e(model, calibration, compiled=True)
    except Exception as exc:  # torchao absent or built for another torch, no C++ compiler
        notes.append(f"pt2e unavailable: {type(exc).__name__}: {str(exc)[:160]}")
    try:
        built.update(onnxruntime_pair(model, calibration, threads))
    except Exception as exc:  # onnxruntime or onnxscript absent (the trainflow[onnx] extra)
        notes.append(f"onnxruntime unavailable: {type(exc).__name__}: {str(exc)[:160]}")
    return built, notes
