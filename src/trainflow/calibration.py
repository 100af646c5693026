"""Calibrated probabilities and a decision threshold, both fitted on the validation part:
temperature scaling of the logits (evaluate.calibrate) and a binary threshold on the positive
class's probability (evaluate.threshold). The evaluate task fits them; the model package
keeps them and prediction applies them (trainflow.predictor), with `decide` below."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trainflow.errors import DataError


@dataclass(frozen=True)
class Decision:
    """How a model's logits become probabilities and a class: divided by `temperature`
    before the softmax; with a `threshold`, a binary model predicts class `positive` where
    its probability is at least the threshold (else the most probable class)."""

    temperature: float = 1.0
    threshold: float | None = None
    positive: int | None = None


def fit_temperature(logits: torch.Tensor, y: torch.Tensor) -> float:
    """The temperature T that minimizes the log loss of softmax(logits / T) on (logits, y)
    (Guo et al. 2017): L-BFGS on log T, so T stays positive. T > 1 softens an overconfident
    model; the predicted class never changes."""
    z, target = logits.detach().double(), y.long()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), target)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


def decide(probs: np.ndarray, threshold: float | None, positive: int | None) -> np.ndarray:
    """The predicted class index of each row: the most probable class, or for a binary
    model with a threshold, `positive` where its probability is at least `threshold`."""
    probs = np.asarray(probs)
    if threshold is None or positive is None:
        return probs.argmax(axis=1)
    return np.where(probs[:, positive] >= threshold, positive, 1 - positive)


def threshold_table(y_pos: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
    """For each distinct probability t of the positive class (highest first), the counts of
    the decision `p >= t`: true and false positives, false and true negatives."""
    order = np.argsort(-p, kind="stable")
    p, y_pos = p[order], y_pos[order].astype(np.int64)
    last = np.r_[np.flatnonzero(np.diff(p)), len(p) - 1]  # the last row of each distinct t
    tp = np.cumsum(y_pos)[last]
    fp = (last + 1) - tp
    positives, negatives = int(y_pos.sum()), len(y_pos) - int(y_pos.sum())
    return {"t": p[last], "tp": tp, "fp": fp, "fn": positives - tp, "tn": negatives - fp}


def _rates(c: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = c["tp"] / (c["tp"] + c["fn"])
        precision = np.where(c["tp"] + c["fp"] > 0, c["tp"] / (c["tp"] + c["fp"]), 0.0)
        f1 = 2 * c["tp"] / (2 * c["tp"] + c["fp"] + c["fn"])
        f1_negative = 2 * c["tn"] / np.maximum(2 * c["tn"] + c["fp"] + c["fn"], 1)
        specificity = c["tn"] / np.maximum(c["tn"] + c["fp"], 1)
    return {
        "recall": recall,
        "precision": precision,
        "f1": f1,
        "f1_macro": (f1 + f1_negative) / 2,
        "balanced_accuracy": (recall + specificity) / 2,
    }


def tune_threshold(
    y: np.ndarray, probs: np.ndarray, positive: int, metric: str | None, min_recall: float | None
) -> dict:
    """The threshold on the positive class's probability that maximizes `metric` (f1,
    f1_macro, balanced_accuracy) on (y, probs), or the most precise one whose recall reaches
    `min_recall`; ties go to the highest threshold. With the validation figures it gives."""
    y_pos = np.asarray(y) == positive
    if not y_pos.any() or y_pos.all():
        raise DataError(
            "evaluate.threshold: the validation part needs rows of both classes to tune a "
            f"threshold, and it has {int(y_pos.sum())} of {len(y_pos)} rows of the positive "
            "class: use a larger or stratified validation part"
        )
    table = threshold_table(y_pos, np.asarray(probs, np.float64)[:, positive])
    rates = _rates(table)
    if min_recall is not None:
        meets = rates["recall"] >= min_recall - 1e-12
        score = np.where(meets, rates["precision"], -np.inf)  # the lowest t always meets it
    else:
        score = rates[str(metric)]
    best = int(np.argmax(score))  # the first maximum: thresholds run from the highest down
    t = table["t"]
    # any threshold in (next lower probability, t[best]] decides the validation rows alike:
    # the midpoint keeps a margin on both sides
    value = (t[best] + t[best + 1]) / 2 if best + 1 < len(t) else t[best]
    return {
        "value": float(value),
        **{f"val_{name}": float(values[best]) for name, values in rates.items()},
    }
