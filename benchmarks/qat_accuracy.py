"""Accuracy of quantization-aware training against post-training static int8 on digits_cnn
(not a timing).

pipelines/digits_cnn.yaml's data steps once, then for each training seed two trainings as
shipped (40 epochs, early stopping): an fp32 one, quantized by post-training static int8
(PTQ, calibrated on training batches), and one with `train.qat`, converted by the quantize
step (the package). Validation and test accuracy of the fp32 model, its PTQ int8 and the QAT
int8 model; the QAT run's quantize meta adds its own fp32 view and PTQ for reference. Each
task called bare, in the order the pipeline flow calls them.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/qat_accuracy.py [--seeds 0 1 2 3 4]
        [--start-epoch 40] [--freeze-bn-epoch N] [--freeze-observers-epoch N]

`--start-epoch 40` (train.epochs): fake quantization begins when early stopping ends the
fp32 epochs (or at epoch 40), so QAT fine-tunes the converged network.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import harness

from trainflow.engine.inference import score
from trainflow.engine.model_folder import load_model
from trainflow.spec.after_training import StaticInt8Params
from trainflow.spec.pipeline import load_spec
from trainflow.spec.qat import QatSpec
from trainflow.tasks.quantize import quantize_model
from trainflow.tasks.train import load_splits, train_model

ROOT = Path(__file__).resolve().parents[1]
STATIC = StaticInt8Params(type="static_int8")


def prepared(store: str):
    spec = load_spec(ROOT / "pipelines" / "digits_cnn.yaml")
    return spec, harness.prepared_shards(spec, store)


def accuracies(ref, data: dict, classes: int) -> dict:
    net, _ = load_model(ref)
    return {part: score(net, data[key], classes)[0]["accuracy"] for part, key in PARTS}


PARTS = (("validation", "val"), ("test", "test"))


def one_seed(spec, shards, seed: int, qat: QatSpec, store: str, data: dict) -> dict:
    classes = len(shards.data_schema["classes"])
    plain = train_model.fn(shards, spec.model, spec.train, seed, store)
    ptq = quantize_model.fn(plain, shards, STATIC, store)
    trained = spec.train.model_copy(update={"qat": qat})
    qat_model = train_model.fn(shards, spec.model, trained, seed, store)
    converted = quantize_model.fn(qat_model, shards, STATIC, store)
    return {
        "fp32": accuracies(plain, data, classes),
        "ptq_int8": accuracies(ptq, data, classes),
        "qat_int8": accuracies(converted, data, classes),
        "fp32_epochs": plain.meta["epochs_run"],
        "qat_epochs": qat_model.meta["epochs_run"],
        "qat_best_epoch": qat_model.meta["best_epoch"],
        "qat_run_meta": converted.meta["qat"],  # its fp32 view and PTQ, for reference
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--start-epoch", type=int, default=40)
    parser.add_argument("--freeze-bn-epoch", type=int, default=None)
    parser.add_argument("--freeze-observers-epoch", type=int, default=None)
    args = parser.parse_args()
    qat = QatSpec(
        start_epoch=args.start_epoch,
        freeze_bn_epoch=args.freeze_bn_epoch,
        freeze_observers_epoch=args.freeze_observers_epoch,
    )
    before = harness.header("qat_accuracy")
    print(f"# train.qat: {qat.model_dump()}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as store:
        spec, shards = prepared(store)
        data = load_splits(shards, ("val", "test"))
        for seed in args.seeds:
            results[seed] = one_seed(spec, shards, seed, qat, store, data)
            r = results[seed]
            print(
                f"| {seed} | {r['fp32']['test']:.4f} | {r['ptq_int8']['test']:.4f} | "
                f"{r['qat_int8']['test']:.4f} | {r['fp32']['validation']:.4f} | "
                f"{r['ptq_int8']['validation']:.4f} | {r['qat_int8']['validation']:.4f} | "
                f"{r['fp32_epochs']} / {r['qat_epochs']} (best {r['qat_best_epoch']}) |",
                flush=True,
            )
    summary = {
        f"{model}_{part}_mean": statistics.mean(r[model][part] for r in results.values())
        for model in ("fp32", "ptq_int8", "qat_int8")
        for part in ("validation", "test")
    }
    summary["qat_minus_fp32_test_points"] = 100 * (
        summary["qat_int8_test_mean"] - summary["fp32_test_mean"]
    )
    summary["ptq_minus_fp32_test_points"] = 100 * (
        summary["ptq_int8_test_mean"] - summary["fp32_test_mean"]
    )
    print(
        "\ncolumns: seed | test fp32 | test PTQ int8 | test QAT int8 | validation fp32 | "
        "PTQ | QAT | epochs fp32 / QAT run"
    )
    for name, value in summary.items():
        print(f"{name}: {value:.4f}")
    harness.finish("qat_accuracy", before, {"qat": qat.model_dump(), "runs": results, **summary})


if __name__ == "__main__":
    main()
