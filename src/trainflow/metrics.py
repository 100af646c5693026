"""Classification metrics from class probabilities, via scikit-learn."""

from __future__ import annotations

import numpy as np

METRICS = ("accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro")


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, num_classes: int) -> dict:
    # imported here: scikit-learn (and scipy, pandas) cost seconds to import, and what only
    # loads a model (trainflow predict) never scores one against labels
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
    )

    y_pred = np.asarray(probs).argmax(axis=1)
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(num_classes)), average="macro", zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "precision_macro": float(precision),
        "recall_macro": float(recall),
        "f1_macro": float(f1),
        "confusion_matrix": confusion_matrix(
            y_true, y_pred, labels=list(range(num_classes))
        ).tolist(),
    }
