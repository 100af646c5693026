"""Accuracy of the full shipped pipelines, against an RBF SVM on the very same folds.

Runs each pipeline in pipelines/ at full size through the real Prefect engine (fresh store),
then fits scikit-learn's SVC(kernel="rbf") on each of the pipeline's own CV folds, with the
pipeline's post-split steps re-fitted on the fold's training rows exactly as trainflow does.

    .venv/bin/python benchmarks/accuracy.py [pipeline ...]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import harness
from isolated_prefect import isolate  # noqa: E402  (before Prefect is imported)

_HOME = isolate()

from sklearn.svm import SVC  # noqa: E402

from trainflow.flows.pipeline import pipeline  # noqa: E402
from trainflow.spec.pipeline import load_spec  # noqa: E402
from trainflow.tasks.fold import fold_data  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def svm_on_same_folds(spec, raw_splits) -> float:
    scores = []
    for fold in range(spec.evaluate.cv.folds):
        data = fold_data(
            raw_splits, fold, spec.evaluate.cv.folds, spec.data.post_split, spec.seed
        ).data
        train, held = data["train"], data["val"]
        model = SVC(kernel="rbf").fit(train.x.flatten(1).numpy(), train.y.numpy())
        scores.append(float((model.predict(held.x.flatten(1).numpy()) == held.y.numpy()).mean()))
    return statistics.fmean(scores)


def main(names: list[str]) -> None:
    before = harness.header("accuracy")
    results = {}
    for name in names or [p.stem for p in sorted((ROOT / "pipelines").glob("*.yaml"))]:
        spec = load_spec(
            ROOT / "pipelines" / f"{name}.yaml",
            [f"outputs.store={_HOME}/store", f"outputs.runs={_HOME}/runs"],
        )
        start = time.perf_counter()
        result = pipeline(spec)
        metrics = json.loads((Path(result["run_dir"]) / "metrics.json").read_text())
        results[name] = {
            "wall_s": round(time.perf_counter() - start, 1),
            "cv_folds": spec.evaluate.cv.folds,
            "cv_mean_accuracy": round(metrics["cv"]["mean"]["accuracy"], 4),
            "cv_std_accuracy": round(metrics["cv"]["std"]["accuracy"], 4),
            "cv_mean_balanced_accuracy": round(metrics["cv"]["mean"]["balanced_accuracy"], 4),
            "cv_mean_f1_macro": round(metrics["cv"]["mean"]["f1_macro"], 4),
            "test_balanced_accuracy": round(metrics["test"]["balanced_accuracy"], 4),
            "test_f1_macro": round(metrics["test"]["f1_macro"], 4),
            "svm_rbf_same_folds_accuracy": round(
                svm_on_same_folds(spec, result["data"]["raw_splits"]), 4
            ),
            "test_accuracy": round(metrics["test"]["accuracy"], 4),
            "ensemble_test_accuracy": round(metrics["ensemble"]["accuracy"], 4),
            "quantized_test_accuracy": round(
                metrics["compress"]["quantize"]["after"]["accuracy"], 4
            ),
            "pruned_test_accuracy": round(metrics["compress"]["prune"]["after"]["accuracy"], 4),
        }
    print(json.dumps(results, indent=1))
    harness.finish("accuracy", before, {"pipelines": results})


if __name__ == "__main__":
    main(sys.argv[1:])
