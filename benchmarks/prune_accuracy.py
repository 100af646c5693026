"""Accuracy of 50 % structured pruning with fine-tuning on the shipped pipelines (not a timing).

For breast_cancer_mlp.yaml and digits_cnn.yaml: the data steps, training as shipped (with its
seed), then the prune task with `compress.prune: {type: l1_structured, sparsity: 0.5, steps,
finetune_epochs}` for each --schedules entry (steps x fine-tune epochs per step); test
accuracy of the trained and the pruned model, parameters and FLOPs, from the prune task's
artifact. Each task called bare, in the order the pipeline flow calls them.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/prune_accuracy.py [--schedules 1x3 2x2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import harness

from trainflow import registry
from trainflow.spec.pipeline import load_spec
from trainflow.tasks.prune import prune_model
from trainflow.tasks.train import train_model

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ("breast_cancer_mlp", "digits_cnn")


def trained(name: str, store: str):
    spec = load_spec(ROOT / "pipelines" / f"{name}.yaml")
    shards = harness.prepared_shards(spec, store)
    return spec, shards, train_model.fn(shards, spec.model, spec.train, spec.seed, store)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", nargs="*", default=["1x3", "2x2"])
    parser.add_argument("--pipelines", nargs="*", default=list(PIPELINES), choices=PIPELINES)
    parser.add_argument("--finetune-lr", type=float, default=None, help="default: train.lr / 10")
    args = parser.parse_args()
    before = harness.header("prune_accuracy")
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as store:
        for name in args.pipelines:
            spec, shards, model = trained(name, store)
            for schedule in args.schedules:
                steps, epochs = (int(x) for x in schedule.split("x"))
                params = registry.PRUNERS["l1_structured"].params(
                    type="l1_structured",
                    sparsity=0.5,
                    steps=steps,
                    finetune_epochs=epochs,
                    finetune_lr=args.finetune_lr,
                )
                meta = prune_model.fn(model, shards, params, spec.train, spec.seed, store).meta
                sizes = meta["structured"]
                row = {
                    "accuracy_before": meta["before"]["accuracy"],
                    "accuracy_after": meta["after"]["accuracy"],
                    "flops_x": sizes["before"]["flops"] / sizes["after"]["flops"],
                    "parameters_x": sizes["before"]["parameters"] / sizes["after"]["parameters"],
                }
                results[f"{name} {schedule}"] = {**row, "sizes": sizes}
                rows.append(
                    f"| {name} | {steps} x {epochs} | {row['accuracy_before']:.4f} | "
                    f"{row['accuracy_after']:.4f} | {row['parameters_x']:.2f}x | "
                    f"{row['flops_x']:.2f}x |"
                )
    print(
        "\n| pipeline | steps x fine-tune epochs | test accuracy fp32 | pruned | "
        "fewer parameters | fewer FLOPs |\n|---|---|---|---|---|---|"
    )
    print("\n".join(rows))
    result = {"finetune_lr": args.finetune_lr, "results": json.loads(json.dumps(results))}
    harness.finish("prune_accuracy", before, result)


if __name__ == "__main__":
    main()
