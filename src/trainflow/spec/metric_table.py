"""The metric table: every metric a spec may name, by its YAML name -> where its function
lives, which way is better, whether it reads class probabilities or predicted labels, and
the task it belongs to (a classifier's metrics, a regressor's).

The one list of metrics: `evaluate.metrics`, `train.early_stopping.monitor` (as
`val_<name>`) and the engine and the evaluate task all read it. The functions live in
trainflow.metrics and are named here ("module:function"), not imported, so that validating a
spec loads no scikit-learn (the registry's rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class MetricInfo:
    at: str  # "module:function", f(y_true, probs, y_pred, num_classes) -> float
    direction: Literal["maximize", "minimize"]
    probabilities: bool  # reads class probabilities (else the predicted labels)
    selects: bool = False  # may choose the best checkpoint / stop training (val_<name>)
    # A regression metric reads the predicted numbers (y_pred) against the true ones.
    task: Literal["classification", "regression"] = "classification"


def _at(name: str) -> str:
    return f"trainflow.metrics:{name}"


METRICS: dict[str, MetricInfo] = {
    "accuracy": MetricInfo(_at("accuracy"), "maximize", False, True),
    "balanced_accuracy": MetricInfo(_at("balanced_accuracy"), "maximize", False, True),
    "precision_macro": MetricInfo(_at("precision_macro"), "maximize", False),
    "recall_macro": MetricInfo(_at("recall_macro"), "maximize", False),
    "f1_macro": MetricInfo(_at("f1_macro"), "maximize", False, True),
    "roc_auc": MetricInfo(_at("roc_auc"), "maximize", True, True),
    "pr_auc": MetricInfo(_at("pr_auc"), "maximize", True, True),
    "log_loss": MetricInfo(_at("log_loss"), "minimize", True, True),
    "brier": MetricInfo(_at("brier"), "minimize", True),
    "ece": MetricInfo(_at("ece"), "minimize", True),
    "rmse": MetricInfo(_at("rmse"), "minimize", False, True, "regression"),
    "mae": MetricInfo(_at("mae"), "minimize", False, True, "regression"),
    "r2": MetricInfo(_at("r2"), "maximize", False, True, "regression"),
    "mape": MetricInfo(_at("mape"), "minimize", False, False, "regression"),
}
# What every evaluation computes whatever `evaluate.metrics` lists: the report's tables, the
# cross-validation summary and the champion rule read them.
BASE = ("accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro")
# ... and of a regression (in the target's own units: the scaling is inverted first).
REGRESSION_BASE = ("rmse", "mae", "r2", "mape")
# `val_loss` is the loss the loop computes anyway (the declared loss, the model's own).
MONITORS: tuple[str, ...] = (
    "val_loss",
    *(f"val_{name}" for name, info in METRICS.items() if info.selects),
)
# What the loop records per epoch of a regression, besides val_loss (so any may be monitored).
REGRESSION_MONITORS = ("val_rmse", "val_mae", "val_r2")


def metric_task(name: str) -> str | None:
    """The task a metric (or a `val_<metric>` monitor) belongs to; None for val_loss, which
    both have."""
    info = METRICS.get(name.removeprefix("val_"))
    return info.task if info else None


def monitor_mode(monitor: str) -> Literal["min", "max"]:
    """The direction of a monitor (`val_<metric>` or val_loss): min for a loss, else max."""
    if monitor == "val_loss":
        return "min"
    info = METRICS[monitor.removeprefix("val_")]
    return "min" if info.direction == "minimize" else "max"
