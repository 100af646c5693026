"""Classification metrics from class probabilities and predicted labels, and regression
metrics from predicted numbers, via scikit-learn.

Each function of the metric table (trainflow.spec.metric_table, which names them) takes
(y_true, probs, y_pred, num_classes): the true class indices, the class probabilities
(rows, classes), the predicted class indices (the argmax, or a tuned threshold's decision)
and the number of classes; a regression metric's y_pred is the predicted numbers, in the
target's own units (probs and num_classes unused). scikit-learn is imported inside them:
it costs seconds to import, and what only loads a model (trainflow predict) never scores
one against labels.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from trainflow.errors import DataError
from trainflow.registry import resolve
from trainflow.spec.metric_table import BASE, REGRESSION_BASE
from trainflow.spec.metric_table import METRICS as TABLE

METRICS = BASE  # what every evaluation reports (the report's and the CV summary's columns)
EVALUATED = tuple(TABLE)  # what an evaluation may report (evaluate.metrics), in table order
RANKING = ("roc_auc", "pr_auc")  # defined only on rows of every class
ECE_BINS = 15  # equal-width confidence bins of the expected calibration error


def _labels(num_classes: int) -> list[int]:
    return list(range(num_classes))


def _distribution(probs) -> np.ndarray:
    """float32 softmax rows in float64, summing to one again (scikit-learn checks the sum)."""
    p = np.asarray(probs, np.float64)
    return p / p.sum(axis=1, keepdims=True)


def accuracy(y_true, probs, y_pred, num_classes: int) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(y_true, y_pred))


def balanced_accuracy(y_true, probs, y_pred, num_classes: int) -> float:
    from sklearn.metrics import balanced_accuracy_score

    return float(balanced_accuracy_score(y_true, y_pred))


def _macro(y_true, y_pred, num_classes: int, which: int) -> float:
    from sklearn.metrics import precision_recall_fscore_support

    found = precision_recall_fscore_support(
        y_true, y_pred, labels=_labels(num_classes), average="macro", zero_division=0
    )
    return float(found[which])


def precision_macro(y_true, probs, y_pred, num_classes: int) -> float:
    return _macro(y_true, y_pred, num_classes, 0)


def recall_macro(y_true, probs, y_pred, num_classes: int) -> float:
    return _macro(y_true, y_pred, num_classes, 1)


def f1_macro(y_true, probs, y_pred, num_classes: int) -> float:
    return _macro(y_true, y_pred, num_classes, 2)


def roc_auc(y_true, probs, y_pred, num_classes: int) -> float:
    """Binary: the positive (second) class's ROC AUC; more classes: one-vs-rest, macro."""
    from sklearn.metrics import roc_auc_score

    if num_classes == 2:
        return float(roc_auc_score(y_true, probs[:, 1]))
    return float(
        roc_auc_score(
            y_true, probs, multi_class="ovr", average="macro", labels=_labels(num_classes)
        )
    )


def pr_auc(y_true, probs, y_pred, num_classes: int) -> float:
    """Average precision (the area under the precision-recall curve, as scikit-learn steps
    it): binary, of the positive (second) class; more classes, one-vs-rest, macro."""
    from sklearn.metrics import average_precision_score
    from sklearn.preprocessing import label_binarize

    if num_classes == 2:
        return float(average_precision_score(y_true, probs[:, 1]))
    onehot = label_binarize(y_true, classes=_labels(num_classes))
    return float(average_precision_score(onehot, probs, average="macro"))


def log_loss(y_true, probs, y_pred, num_classes: int) -> float:
    from sklearn.metrics import log_loss as sk_log_loss

    return float(sk_log_loss(y_true, _distribution(probs), labels=_labels(num_classes)))


def brier(y_true, probs, y_pred, num_classes: int) -> float:
    """scikit-learn's Brier score: binary, the positive class's mean squared error; more
    classes, the squared error summed over classes, averaged over rows."""
    from sklearn.metrics import brier_score_loss

    return float(brier_score_loss(y_true, _distribution(probs), labels=_labels(num_classes)))


def ece(y_true, probs, y_pred, num_classes: int) -> float:
    """Expected calibration error of the top-label confidence (Guo et al. 2017), over
    ECE_BINS equal-width bins of [0, 1]: the rows-weighted mean of |accuracy - confidence|.
    (scikit-learn has no ECE; its calibration_curve drops empty bins and their weights.)"""
    probs = np.asarray(probs, np.float64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y_true)
    # bin i holds (i/B, (i+1)/B]; a confidence of exactly 0 cannot occur (it is a max)
    bins = np.clip(np.ceil(confidence * ECE_BINS).astype(int) - 1, 0, ECE_BINS - 1)
    total = 0.0
    for b in range(ECE_BINS):
        inside = bins == b
        if inside.any():
            total += inside.sum() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total / max(len(probs), 1))


def rmse(y_true, probs, y_pred, num_classes: int = 0) -> float:
    from sklearn.metrics import mean_squared_error

    return float(np.sqrt(mean_squared_error(y_true, y_pred)))


def mae(y_true, probs, y_pred, num_classes: int = 0) -> float:
    from sklearn.metrics import mean_absolute_error

    return float(mean_absolute_error(y_true, y_pred))


def r2(y_true, probs, y_pred, num_classes: int = 0) -> float:
    from sklearn.metrics import r2_score

    return float(r2_score(y_true, y_pred))


def mape(y_true, probs, y_pred, num_classes: int = 0) -> float:
    """Mean absolute percentage error as a fraction (scikit-learn's: 0.1 is 10 %; a true
    value of 0 divides by machine epsilon, so it is huge rather than infinite)."""
    from sklearn.metrics import mean_absolute_percentage_error

    return float(mean_absolute_percentage_error(y_true, y_pred))


def regression_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, extra: Iterable[str] = (), where: str = "the rows"
) -> dict:
    """RMSE, MAE, R² and MAPE (REGRESSION_BASE) and the `extra` regression metrics of the
    table, of predictions `y_pred` against `y_true` (both in the target's units)."""
    if len(y_true) < 2:  # R² is undefined on one row (scikit-learn warns and gives NaN)
        raise DataError(f"regression metrics need at least 2 rows, {where} has {len(y_true)}")
    names = dict.fromkeys([*REGRESSION_BASE, *extra])
    truth, predicted = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    return {name: metric_value(name, truth, None, predicted, 0, where) for name in names}


def undefined(name: str, y_true: np.ndarray, num_classes: int) -> str | None:
    """Why metric `name` has no value on rows labelled `y_true`, or None: a ranking metric
    needs rows of every class (scikit-learn would give NaN)."""
    if name not in RANKING:
        return None
    missing = sorted(set(range(num_classes)) - set(np.asarray(y_true).tolist()))
    if missing:
        return f"it needs rows of every class, and there are none of class index(es) {missing}"
    return None


def metric_value(name: str, y_true, probs, y_pred, num_classes: int, where: str) -> float:
    """One metric of the table; a DataError naming it and `where` when it has no value."""
    reason = undefined(name, y_true, num_classes)
    if reason:
        raise DataError(f"{name} cannot be computed on {where}: {reason}")
    function: Any = resolve(TABLE[name].at)
    probs = None if probs is None else np.asarray(probs)
    return function(np.asarray(y_true), probs, np.asarray(y_pred), num_classes)


def classification_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    num_classes: int,
    extra: Iterable[str] = (),
    y_pred: np.ndarray | None = None,
    where: str = "the rows scored",
) -> dict:
    """The BASE metrics, the confusion matrix and the `extra` metrics of the table, of
    predictions `y_pred` (default: the most probable class)."""
    from sklearn.metrics import confusion_matrix

    probs = np.asarray(probs)
    if y_pred is None:
        y_pred = probs.argmax(axis=1)
    names = dict.fromkeys([*BASE, *extra])
    out: dict[str, Any] = {
        name: metric_value(name, y_true, probs, y_pred, num_classes, where) for name in names
    }
    out["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=_labels(num_classes)).tolist()
    return out


def binary_curves(y_true: np.ndarray, positive_probs: np.ndarray) -> dict[str, dict]:
    """The ROC curve (false and true positive rates) and the precision-recall curve of the
    positive class's probability, as scikit-learn computes them (lists, for JSON)."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    fpr, tpr, _ = roc_curve(y_true, positive_probs)
    precision, recall, _ = precision_recall_curve(y_true, positive_probs)
    return {
        "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()},
        "pr": {"recall": recall.tolist(), "precision": precision.tolist()},
    }
