"""The pipeline's task, classification or regression, and the knobs that belong to one only.

`task: auto` (the default) lets the data decide (trainflow.readers.decide_task): a float
target with many distinct values is a regression. Where the spec alone tells the task (it is
declared, or the source is a scikit-learn dataset), validation refuses the other task's
knobs; otherwise preflight does, once it has read the target.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from trainflow.spec.metric_table import METRICS, MONITORS, metric_task
from trainflow.spec.promote import REGRESSION_PROMOTE, PromoteMetric

Task = Literal["auto", "classification", "regression"]
REGRESSION_LOSSES = ("mse", "huber", "l1")
# scikit-learn's bundled tables whose target is a number (the others are class labels).
SKLEARN_REGRESSION = frozenset({"diabetes"})
# What a regression run cannot do yet: each names the step that would have to learn numbers.
NOT_FOR_REGRESSION = {
    "compress.quantize": "quantization's gate and before/after table score class accuracy",
    "compress.prune": "pruning's fine-tune and before/after table score class accuracy",
    "evaluate.explain": "the explanations attribute a predicted class",
    "train.distill": "distillation matches a teacher's class probabilities",
    "train.adversarial": "the attacks raise the cross-entropy of the true class",
    "compress.distill": "distillation matches a teacher's class probabilities",
    "train.distributed": "the ranks' loop and log read class accuracy",
    "train.qat": "the quantize step it feeds scores class accuracy",
    "search": "a study's trials score class metrics",
    "outputs.mlflow": "the logged MLflow model predicts class probabilities",
}


def declared_task(spec: Any) -> str | None:
    """The task the spec alone tells: as declared, or a scikit-learn dataset's own; None
    when the data decides (task: auto on a file)."""
    if spec.task != "auto":
        return spec.task
    source = spec.data.source
    if source.type == "sklearn":
        return "regression" if source.dataset in SKLEARN_REGRESSION else "classification"
    return None


def task_problems(spec: Any, task: str) -> list[tuple[str, str]]:
    """(YAML path, message) of every knob of `spec` that the other task owns."""
    source = spec.data.source
    if source.type == "sklearn" and spec.task != "auto":
        numbers = source.dataset in SKLEARN_REGRESSION
        if numbers != (task == "regression"):
            kind = "numbers" if numbers else "class labels"
            return [
                (
                    "task",
                    f"the {source.dataset} dataset's target holds {kind}: set task: "
                    f"{'regression' if numbers else 'classification'} (or auto)",
                )
            ]
    if task == "regression":
        return _regression_problems(spec)
    return _classification_problems(spec)


def _classification_problems(spec: Any) -> list[tuple[str, str]]:
    out = []
    loss = spec.train.loss
    if loss is not None and loss.type in REGRESSION_LOSSES:
        out.append(
            (
                "train.loss.type",
                f"{loss.type} is a regression loss and this target holds class labels: "
                "remove train.loss (a classifier trains with cross_entropy), or set "
                "task: regression for a numeric target",
            )
        )
    out += _metrics_of(spec, "regression", "classification")
    objective = spec.search.objective.metric if spec.search is not None else "val_loss"
    if metric_task(objective) == "regression":
        out.append(
            (
                "search.objective.metric",
                f"{objective} is a regression metric and this target holds class labels: "
                "name val_loss or a classification metric (val_accuracy, val_f1_macro, ...)",
            )
        )
    return out


def _regression_problems(spec: Any) -> list[tuple[str, str]]:
    train, evaluate = spec.train, spec.evaluate
    out = []
    classifier_only = {
        "train.loss.type": train.loss is not None and train.loss.type == "cross_entropy",
        "train.label_smoothing": train.label_smoothing > 0,
        "train.class_weights": train.class_weights != "none",
        "train.sampler": train.sampler != "shuffle",
        "train.schedule.monitor": getattr(train.schedule, "monitor", None) == "val_accuracy",
        "evaluate.calibrate": evaluate.calibrate is not None,
        "evaluate.threshold": evaluate.threshold is not None,
        "data.source.aux_targets": bool(getattr(spec.data.source, "aux_targets", None)),
    }
    for path, given in classifier_only.items():
        if given:
            out.append(
                (
                    path,
                    f"{path} is a classifier's knob (class labels, probabilities) and this "
                    "is a regression (a numeric target): remove it, or set "
                    "task: classification",
                )
            )
    for index, step in enumerate(spec.data.steps):
        if step.type in ("resample", "synthesize"):
            out.append(
                (
                    f"data.steps.{index}",
                    f"{step.type} balances or makes rows per class, and a regression "
                    "target has no classes: remove the step",
                )
            )
    for path, why in NOT_FOR_REGRESSION.items():
        if _given(spec, path):
            out.append((path, f"not built for a regression yet ({why}): remove {path}"))
    out += _metrics_of(spec, "classification", "regression")
    return out


def _given(spec: Any, path: str) -> bool:
    node = spec
    for part in path.split("."):
        node = getattr(node, part, None)
    return bool(node)


def _metrics_of(spec: Any, wrong: str, task: str) -> list[tuple[str, str]]:
    """evaluate.metrics and the early-stopping monitor naming a metric of the `wrong` task."""
    allowed = ", ".join(name for name, info in METRICS.items() if info.task == task)
    out = []
    evaluate = spec.evaluate
    if "metrics" in evaluate.model_fields_set:  # (the default lists a classifier's)
        named = [m for m in evaluate.metrics if metric_task(m) == wrong]
        if named:
            out.append(
                (
                    "evaluate.metrics",
                    f"{', '.join(named)} {'is a' if len(named) == 1 else 'are'} {wrong} "
                    f"metric(s) and this is a {task}: name {allowed}",
                )
            )
    promote = spec.promote
    regression_rule = promote.metric in REGRESSION_PROMOTE
    if "metric" in promote.model_fields_set and regression_rule != (task == "regression"):
        out.append(
            (
                "promote.metric",
                f"{promote.metric} is a {wrong} metric and this is a {task}: name one of "
                + ", ".join(
                    m
                    for m in get_args(PromoteMetric)
                    if (m in REGRESSION_PROMOTE) == (task == "regression")
                ),
            )
        )
    early = spec.train.early_stopping
    if early is not None and metric_task(early.monitor) == wrong:
        monitors = ", ".join(m for m in MONITORS if metric_task(m) in (None, task))
        out.append(
            (
                "train.early_stopping.monitor",
                f"{early.monitor} is a {wrong} metric and this is a {task}: monitor one of "
                f"{monitors}",
            )
        )
    return out


def effective_metrics(spec: Any, task: str) -> list[str]:
    """evaluate.metrics as a `task` evaluation reads them: a regression's default is its
    own metrics (the spec's default lists a classifier's)."""
    evaluate = spec.evaluate if hasattr(spec, "evaluate") else spec
    if task == "regression" and "metrics" not in evaluate.model_fields_set:
        return []
    return list(evaluate.metrics)
