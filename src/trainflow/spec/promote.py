"""The promotion rule: when a run's model (the challenger) replaces its pipeline's champion."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from trainflow.spec.base import Section

# The figures both models are scored by on the challenger's test split (trainflow.champion):
# the evaluate metrics, and the log loss of the class probabilities.
PromoteMetric = Literal[
    "accuracy",
    "balanced_accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "log_loss",
    "rmse",  # a regression's (its default: rmse)
    "mae",
    "r2",
]
LOWER_IS_BETTER = frozenset({"log_loss", "rmse", "mae"})
REGRESSION_PROMOTE = ("rmse", "mae", "r2")


class PromoteSpec(Section):
    """A run's model becomes the champion when, on the run's test split, its `metric` beats
    the champion's (re-scored on the same rows) by more than `min_delta` (higher is better;
    for log_loss, lower). The first run of a pipeline always becomes its champion."""

    metric: PromoteMetric = Field(
        "f1_macro", description="a classifier's default f1_macro; a regression's rmse"
    )
    min_delta: float = Field(
        0.0, ge=0.0, le=1e6, description="how much better the challenger must be (strictly)"
    )
