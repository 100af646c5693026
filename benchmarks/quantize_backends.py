"""Which int8 backend trainflow's `dynamic_int8` quantizer uses on CPU, decided by measurement.

Compares fp32 against torch.ao dynamic int8 (`quantize_dynamic`) and, when torchao is importable,
torchao's int8 dynamic-activation and int8 weight-only configs (eager, no torch.compile, as a
trainflow task runs them). Models: the breast-cancer MLP and a wide MLP where Linear layers
dominate. Median seconds per batch of 256, several repeats, same inputs; also the largest
absolute logit difference against fp32.

    .venv/bin/python benchmarks/quantize_backends.py
    # optional, for the torchao columns (not a trainflow dependency):
    .venv/bin/pip install --no-deps torchao==0.18.0 && .venv/bin/python benchmarks/quantize_backends.py
"""

from __future__ import annotations

import copy
import json
import warnings

import torch

from trainflow.compress import latency_per_batch, linear_weight_bytes, quantize_dynamic_int8
from trainflow.models.mlp import mlp
from trainflow.spec.after_training import DynamicInt8Params


def torchao_variants():
    try:
        from torchao.quantization import (Int8DynamicActivationInt8WeightConfig,
                                          Int8WeightOnlyConfig, quantize_)
    except Exception as exc:  # not installed, or built for another torch
        return {}, f"torchao unavailable: {type(exc).__name__}: {str(exc)[:120]}"

    def apply(config):
        def run(model):
            model = copy.deepcopy(model)
            quantize_(model, config())
            return model
        return run
    return {"torchao_int8_dynamic": apply(Int8DynamicActivationInt8WeightConfig),
            "torchao_int8_weight_only": apply(Int8WeightOnlyConfig)}, None


def main() -> None:
    torch.manual_seed(0)
    models = {"breast_cancer_mlp": (mlp([30], 2, [64, 32]), torch.randn(256, 30)),
              "wide_mlp_1024": (mlp([784], 10, [1024, 1024, 1024]), torch.randn(256, 784))}
    extra, note = torchao_variants()
    backends = {"torch_ao_dynamic_int8":
                lambda m: quantize_dynamic_int8(m, DynamicInt8Params(type="dynamic_int8")),
                **extra}
    report = {"note": note, "threads": torch.get_num_threads(), "models": {}}
    for name, (model, batch) in models.items():
        model.eval()
        with torch.inference_mode():
            reference = model(batch)
        fp32 = latency_per_batch(model, batch, 50)
        rows = {"fp32": {"ms_per_batch": round(1000 * fp32, 4),
                         "linear_weight_bytes": linear_weight_bytes(model)}}
        for backend, build in backends.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantized = build(model)
                seconds = latency_per_batch(quantized, batch, 50)
                with torch.inference_mode():
                    error = (quantized(batch) - reference).abs().max().item()
            rows[backend] = {"ms_per_batch": round(1000 * seconds, 4),
                             "speedup_vs_fp32": round(fp32 / seconds, 3),
                             "max_abs_logit_error": round(error, 5)}
        report["models"][name] = rows
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
