"""Evaluate: the test part's metrics (the five always reported, and those evaluate.metrics
adds), the confusion matrix, ROC and precision-recall curves of a binary target; the
temperature (evaluate.calibrate) and decision threshold (evaluate.threshold) fitted on the
validation part and applied to the test part; and, for a model trained adversarially, its
accuracy under the same attack (robust accuracy)."""

from __future__ import annotations

import json

import numpy as np
import torch
from prefect import task

from trainflow.artifacts import ArtifactRef, Store
from trainflow.caching import CACHED
from trainflow.calibration import Decision, decide, fit_temperature, tune_threshold
from trainflow.engine.adversarial import robust_accuracy
from trainflow.engine.data import Split
from trainflow.engine.inference import predict_logits, score, score_regression
from trainflow.engine.model_folder import load_model
from trainflow.engine.target_scale import Regression, regression_of
from trainflow.errors import SpecError
from trainflow.metrics import binary_curves, metric_value
from trainflow.spec.after_training import EvaluateSpec
from trainflow.spec.task import effective_metrics
from trainflow.tasks.train import load_splits

ATTACK_SEED = 0
CURVES = "curves.json"  # the ROC and PR curves of a binary target's test part
# A regression's test part: its predictions and true values, in the target's units (float64)
PREDICTED, TRUE = "test_pred.npy", "test_true.npy"
TEST = "the test part (evaluate.metrics)"


@task(name="evaluate", **CACHED)
def evaluate_model(
    model: ArtifactRef, shards: ArtifactRef, store: str, evaluate: EvaluateSpec | None = None
) -> ArtifactRef:
    """Score the model on the held-out test split; metrics travel in the ref's meta."""
    evaluate = evaluate or EvaluateSpec()
    net, info = load_model(model)
    regression = regression_of(info)
    if regression is not None:
        return evaluate_regression(net, regression, shards, store, evaluate)
    classes = list(info["classes"])
    parts = load_splits(shards, ("val", "test") if fits_on_validation(evaluate) else ("test",))
    test = parts["test"]
    decision, fitted = fit_decision(net, parts.get("val"), test, classes, evaluate)
    metrics, probs = score(net, test, len(classes), extra=evaluate.metrics, decision=decision)
    metrics.update(fitted)
    if "adversarial" in info:  # trained against an attack: accuracy under the same attack
        a = info["adversarial"]
        # PGD starts from random points drawn from torch's global generator: seeded here (and
        # restored after), so the figure is a function of the model and data alone, not of
        # whichever tasks this process happened to run before.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ATTACK_SEED)
            metrics["robust_accuracy"] = robust_accuracy(
                net, test.x, test.y, a["method"], a["epsilon"], a["steps"], a["step_size"]
            )
    target = Store(store)
    with target.writer("metrics") as staging:
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
        np.save(staging / "test_probs.npy", probs.astype(np.float32), allow_pickle=False)
        predicted = decide(probs, decision.threshold, decision.positive)
        np.save(staging / "test_pred.npy", predicted.astype(np.int64), allow_pickle=False)
        if len(classes) == 2 and len(set(test.y.tolist())) == 2:
            curves = binary_curves(test.y.numpy(), probs[:, 1])
            (staging / CURVES).write_text(json.dumps({"positive": classes[1], **curves}))
        return target.commit(staging, "metrics", count=len(test), meta=metrics)


def evaluate_regression(
    net: torch.nn.Module,
    regression: Regression,
    shards: ArtifactRef,
    store: str,
    evaluate: EvaluateSpec,
) -> ArtifactRef:
    """A regression's test metrics (RMSE, MAE, R², MAPE and the regression metrics
    evaluate.metrics adds, in the target's units) and its test predictions."""
    test = load_splits(shards, ("test",))["test"]
    extra = effective_metrics(evaluate, "regression")
    metrics, predicted = score_regression(net, test, regression, extra=extra, where=TEST)
    target = Store(store)
    with target.writer("metrics") as staging:
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
        np.save(staging / PREDICTED, predicted.astype(np.float64), allow_pickle=False)
        np.save(staging / TRUE, test.y.numpy().astype(np.float64), allow_pickle=False)
        return target.commit(staging, "metrics", count=len(test), meta=metrics)


def fits_on_validation(evaluate: EvaluateSpec) -> bool:
    return evaluate.calibrate is not None or evaluate.threshold is not None


def fit_decision(
    net: torch.nn.Module, val: Split | None, test: Split, classes: list[str], spec: EvaluateSpec
) -> tuple[Decision, dict]:
    """The temperature and threshold fitted on the validation part, and what the report
    says of them (the calibration's ECE before and after, on validation and test)."""
    if val is None:
        return Decision(), {}
    if not len(val):
        raise SpecError(
            "the pipeline spec",
            [("evaluate", "calibrate and threshold fit on the validation part, which is empty")],
        )
    _, logits = predict_logits(net, val, 256, torch.device("cpu"))
    out: dict = {}
    temperature = 1.0
    if spec.calibrate == "temperature":
        temperature = fit_temperature(logits, val.y)
        out["calibration"] = calibration_figures(net, val, test, temperature, len(classes))
    if spec.threshold is None:
        return Decision(temperature), out
    positive = positive_class(spec, classes)
    probs = torch.softmax(logits / temperature, dim=1).numpy()
    t = spec.threshold
    tuned = tune_threshold(val.y.numpy(), probs, positive, t.metric, t.min_recall)
    rule = (
        f"maximize {t.metric}" if t.metric else f"recall of {classes[positive]} >= {t.min_recall}"
    )
    out["threshold"] = {**tuned, "positive": classes[positive], "rule": rule}
    return Decision(temperature, tuned["value"], positive), out


def calibration_figures(
    net: torch.nn.Module, val: Split, test: Split, temperature: float, num_classes: int
) -> dict:
    """The temperature and the expected calibration error before and after it."""
    out: dict = {"method": "temperature", "temperature": temperature}
    for name, part in (("val", val), ("test", test)):
        _, logits = predict_logits(net, part, 256, torch.device("cpu"))
        for when, t in (("before", 1.0), ("after", temperature)):
            p = torch.softmax(logits / t, dim=1).numpy()
            where = f"the {name} part (evaluate.calibrate)"
            out[f"{name}_ece_{when}"] = metric_value(
                "ece", part.y.numpy(), p, p.argmax(1), num_classes, where
            )
    return out


def positive_class(spec: EvaluateSpec, classes: list[str]) -> int:
    """The index of evaluate.threshold's positive class; a SpecError for a target that is not
    binary or a class it does not have."""
    if len(classes) != 2:
        raise SpecError(
            "the pipeline spec",
            [
                (
                    "evaluate.threshold",
                    f"a decision threshold needs a binary target; this one has {len(classes)} "
                    f"classes ({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}): "
                    "remove evaluate.threshold",
                )
            ],
        )
    name = spec.threshold.positive if spec.threshold else None
    if name is None:
        return 1
    if name not in classes:
        raise SpecError(
            "the pipeline spec",
            [("evaluate.threshold.positive", f"{name!r} is not a class of the target: {classes}")],
        )
    return classes.index(name)


# ---- what the report shows of an evaluation (tasks/report.py renders these) ------------


def evaluation_images(test: ArtifactRef) -> dict[str, bytes]:
    """roc.png and pr.png for a binary target's test part (none for more classes)."""
    from trainflow.plots import binary_curves_png

    path = test.path / CURVES
    return binary_curves_png(json.loads(path.read_text())) if path.is_file() else {}


def evaluation_lines(test: dict, curves: bool) -> list[str]:
    """The report's lines on the calibration, the decision threshold and the curves."""
    out = []
    c = test.get("calibration")
    if c:
        out += [
            "",
            f"### Calibration (temperature scaling, fitted on validation): T = "
            f"{c['temperature']:.4f}",
            "",
            "expected calibration error (top-label confidence, 15 equal-width bins):",
            "",
            "| part | before | after |",
            "|---|---|---|",
            f"| validation | {c['val_ece_before']:.4f} | {c['val_ece_after']:.4f} |",
            f"| test | {c['test_ece_before']:.4f} | {c['test_ece_after']:.4f} |",
        ]
    t = test.get("threshold")
    if t:
        out += [
            "",
            f"### Decision threshold (tuned on validation: {t['rule']})",
            f"predict {t['positive']} when its probability is at least {t['value']:.4f}; on "
            f"validation: recall {t['val_recall']:.4f}, precision {t['val_precision']:.4f}, "
            f"F1 {t['val_f1']:.4f}. The test metrics above use this threshold.",
        ]
    if curves:
        out += ["", "![ROC curve (test)](roc.png)", "", "![precision-recall curve (test)](pr.png)"]
    return out
