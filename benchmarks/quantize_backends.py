"""Which int8 backend trainflow's `dynamic_int8` quantizer uses on CPU, decided by measurement.

Compares fp32 against torch.ao dynamic int8 (`quantize_dynamic`) and, when torchao is importable,
torchao's int8 dynamic-activation and int8 weight-only configs (eager, no torch.compile, as a
trainflow task runs them). Models: the breast-cancer MLP and a wide MLP where Linear layers
dominate; batches of 256, the same inputs for every backend; also the largest absolute logit
difference against fp32.

Method (benchmarks/harness.py): threads pinned (--threads, default 1); per model, every backend
runs once per run (CALLS forward passes), interleaved in an order rotated each run, after one
warm-up round; a fixed --runs; wall and CPU time per batch; each backend's median ratio to fp32
over the paired runs with a 95 % bootstrap interval.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/quantize_backends.py [--runs 15] [--threads 1]
    # optional, for the torchao columns (not a trainflow dependency):
    .venv/bin/pip install --no-deps torchao==0.18.0
    .venv/bin/python benchmarks/quantize_backends.py
"""

from __future__ import annotations

import argparse
import copy
import warnings

import harness
import torch
from static_int8_backends import static_contenders

from trainflow.compress import linear_weight_bytes, quantize_dynamic_int8
from trainflow.models.cnn import cnn
from trainflow.models.mlp import mlp
from trainflow.spec.after_training import DynamicInt8Params

CALLS = {"breast_cancer_mlp": 400, "wide_mlp_1024": 8, "digits_cnn": 4}  # tens of ms a run
CALIBRATION = 8  # batches of 32 rows, for the static contenders


def torchao_variants():
    try:
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            quantize_,
        )
    except Exception as exc:  # not installed, or built for another torch
        return {}, f"torchao unavailable: {type(exc).__name__}: {str(exc)[:120]}"

    def apply(config):
        def run(model):
            model = copy.deepcopy(model)
            quantize_(model, config())
            return model

        return run

    return {
        "torchao_int8_dynamic": apply(Int8DynamicActivationInt8WeightConfig),
        "torchao_int8_weight_only": apply(Int8WeightOnlyConfig),
    }, None


def timed(model: torch.nn.Module, batch: torch.Tensor, calls: int):
    """One run of one backend: `calls` forward passes, timed together."""

    @torch.inference_mode()
    def run():
        for _ in range(calls):
            model(batch)

    return lambda: harness.measure(run)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="*", default=list(CALLS), choices=list(CALLS))
    parser.add_argument(
        "--no-static", action="store_true", help="dynamic int8 only (no static contenders)"
    )
    parser.add_argument(
        "--torchao-dynamic", action="store_true", help="add torchao's int8 dynamic configs"
    )
    args = parser.parse_args()
    harness.pin_threads(args.threads)
    before = harness.header("quantize_backends")
    torch.manual_seed(0)
    models = {
        "breast_cancer_mlp": (mlp([30], 2, [64, 32]), torch.randn(256, 30)),
        "wide_mlp_1024": (mlp([784], 10, [1024, 1024, 1024]), torch.randn(256, 784)),
        # the shipped digits_cnn's network on its 8x8 images
        "digits_cnn": (cnn([1, 8, 8], 10, [32, 64], hidden=128), torch.randn(256, 1, 8, 8)),
    }
    models = {name: models[name] for name in args.models}
    extra, note = torchao_variants() if args.torchao_dynamic else ({}, None)
    backends = {
        "torch_ao_dynamic_int8": lambda m: quantize_dynamic_int8(
            m, DynamicInt8Params(type="dynamic_int8")
        ),
        **extra,
    }
    results, notes = {}, [note] if note else []
    for name, (model, batch) in models.items():
        model.eval()
        with torch.inference_mode():
            reference = model(batch)
        built, errors = {"fp32": model}, {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for backend, build in backends.items():
                built[backend] = build(model)
            if not args.no_static:
                calibration = [torch.randn(32, *batch.shape[1:]) for _ in range(CALIBRATION)]
                static, missing = static_contenders(model, calibration, args.threads)
                built.update(static)
                notes += [f"{name}: {n}" for n in missing]
            for backend in list(built)[1:]:
                with torch.inference_mode():
                    errors[backend] = round(
                        (built[backend](batch) - reference).abs().max().item(), 5
                    )
            samples = harness.interleave(
                {k: timed(m, batch, CALLS[name]) for k, m in built.items()}, args.runs
            )
        print(f"\n## {name}: ms per batch of 256 ({CALLS[name]} batches a run)")
        summary = harness.summarize(samples, "fp32")
        print(harness.table(summary, unit=CALLS[name] / 1000, unit_name="ms/batch"))
        results[name] = {
            "calls_per_run": CALLS[name],
            "max_abs_logit_error": errors,
            "linear_weight_bytes_fp32": linear_weight_bytes(model),
            "summary": summary,
        }
    harness.finish(
        "quantize_backends",
        before,
        {"runs": args.runs, "threads": args.threads, "notes": notes, "models": results},
    )


if __name__ == "__main__":
    main()
