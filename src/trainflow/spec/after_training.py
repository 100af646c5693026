"""Evaluate, ensemble, compress and outputs sections."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal

from pydantic import Field, PositiveInt, field_validator

from trainflow.spec.base import Section
from trainflow.spec.metric_table import BASE, METRICS

if TYPE_CHECKING:  # the metric table's names (trainflow.spec.metric_table): opaque to mypy
    Metric = str
else:
    Metric = Literal[tuple(METRICS)]


class CVSpec(Section):
    folds: int = Field(5, ge=2, le=50)


class EvaluateSpec(Section):
    metrics: list[Metric] = Field(
        default_factory=lambda: list(BASE),
        min_length=1,
        description="test metrics to report (accuracy, balanced_accuracy, precision_macro, "
        "recall_macro and f1_macro always are): " + ", ".join(METRICS) + "; ece is the "
        "expected calibration error of the top-label confidence over 15 equal-width bins",
    )
    cv: CVSpec | None = None


class SoftVoteParams(Section):
    """Average the class probabilities of the cross-validation fold models."""

    type: Literal["soft_vote"]


class DynamicInt8Params(Section):
    """Dynamic int8 quantization of every Linear layer (weights int8, activations at run time)."""

    type: Literal["dynamic_int8"]
    latency_repeats: PositiveInt = 30


class L1UnstructuredParams(Section):
    """Global L1 unstructured pruning of Linear and Conv weights, then optional fine-tuning."""

    type: Literal["l1_unstructured"]
    sparsity: float = Field(0.5, gt=0.0, lt=1.0)
    finetune_epochs: int = Field(0, ge=0)
    finetune_lr: float | None = Field(None, gt=0, description="Default: train.lr / 10")


class MlflowSpec(Section):
    """Log each run to MLflow (the `trainflow[mlflow]` extra): params, metrics, report,
    plots, and the model package as a registered model (see trainflow.mlflow_log)."""

    tracking_uri: str = Field(
        min_length=1,
        description="An MLflow tracking URI: "
        "http://host:5000, sqlite:///path/mlflow.db, databricks, ...",
    )
    experiment: str | None = Field(None, min_length=1, description="Default: the pipeline's name")


class OutputsSpec(Section):
    store: str = Field(
        ".trainflow",
        description="A folder trainflow creates and marks as its "
        "store (an existing one must be empty or a trainflow store)",
    )
    runs: str = "runs"
    mlflow: MlflowSpec | None = None

    @field_validator("store")
    @classmethod
    def _a_folder_of_its_own(cls, store: str) -> str:
        """The root and the home folder can never be a store (the start-of-run sweep walks the
        store); an existing folder of the user's is refused when the run opens the store."""
        if not store.strip():
            raise ValueError("the store folder is empty: name a folder such as .trainflow")
        expanded = os.path.normpath(os.path.expanduser(store))
        root = expanded.strip("/") == ""
        if root or expanded == os.path.normpath(os.path.expanduser("~")):
            where = "the filesystem root" if root else "your home folder"
            raise ValueError(
                f"{store!r} is {where};"
                " trainflow keeps its artifacts in a folder of its own: use a new "
                "folder such as .trainflow (the default)"
            )
        return store
