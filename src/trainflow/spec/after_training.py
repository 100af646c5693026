"""Evaluate, ensemble, compress and outputs sections."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from trainflow.spec.base import Section
from trainflow.spec.ensemble import SoftVoteParams  # noqa: F401 (spec/ensemble.py)
from trainflow.spec.explain import ExplainSpec
from trainflow.spec.metric_table import BASE, METRICS

if TYPE_CHECKING:  # the metric table's names (trainflow.spec.metric_table): opaque to mypy
    Metric = str
else:
    Metric = Literal[tuple(METRICS)]
SKLEARN_CLASSES = {"breast_cancer": 2, "digits": 10, "wine": 3, "iris": 3}  # their targets


class CVSpec(Section):
    """k-fold cross-validation. The folds are drawn from the train + validation rows and
    score each fold model on its held-out rows; the test part stays out of them, so the
    ensemble of the fold models is scored on rows no fold trained on. `rows: all` draws the
    folds from every row, the test part included (to compare with tools that
    cross-validate the whole table); then no row is left for an ensemble's test score."""

    folds: int = Field(5, ge=2, le=50)
    rows: Literal["train+validation", "all"] = Field(
        "train+validation",
        description="the rows the folds are drawn from: train+validation (the test part "
        "held out), or all (the test part too)",
    )


class ThresholdSpec(Section):
    """Tune the decision threshold of a binary target on the validation part: the model
    predicts `positive` when its probability is at least the threshold. Either maximize
    `metric` over the thresholds, or take the highest threshold whose validation recall of
    `positive` reaches `min_recall` (the most precise one that does)."""

    metric: Literal["f1", "f1_macro", "balanced_accuracy"] | None = Field(
        None, description="f1: the positive class's F1"
    )
    min_recall: float | None = Field(None, gt=0.0, le=1.0)
    positive: str | None = Field(
        None, description="the positive class's name (default: the second of the sorted classes)"
    )

    @model_validator(mode="after")
    def _one_rule(self):
        if (self.metric is None) == (self.min_recall is None):
            raise ValueError(
                "give evaluate.threshold one of metric (f1, f1_macro, balanced_accuracy) "
                "or min_recall (e.g. 0.9)"
            )
        return self


class EvaluateSpec(Section):
    metrics: list[Metric] = Field(
        default_factory=lambda: list(BASE),
        min_length=1,
        description="test metrics to report (accuracy, balanced_accuracy, precision_macro, "
        "recall_macro and f1_macro always are): " + ", ".join(METRICS) + "; ece is the "
        "expected calibration error of the top-label confidence over 15 equal-width bins",
    )
    calibrate: Literal["temperature"] | None = Field(
        None,
        description="temperature: divide the logits by one temperature fitted on the "
        "validation part (minimum log loss); the package applies it",
    )
    threshold: ThresholdSpec | None = None
    explain: ExplainSpec | None = None
    cv: CVSpec | None = None

    def threshold_refusal(self, source: Any) -> str | None:
        """Why evaluate.threshold cannot apply to `source`'s target, where the spec alone
        tells (a scikit-learn dataset's class count); other targets are checked at evaluate."""
        classes = SKLEARN_CLASSES.get(getattr(source, "dataset", ""), 2)
        if self.threshold is None or source.type != "sklearn" or classes == 2:
            return None
        return (
            f"evaluate.threshold: a decision threshold needs a binary target; the "
            f"{source.dataset} dataset has {classes} classes: remove evaluate.threshold"
        )


class DynamicInt8Params(Section):
    """Dynamic int8 quantization of every Linear layer (weights int8, activations at run time)."""

    type: Literal["dynamic_int8"]
    latency_repeats: PositiveInt = 30


class StaticInt8Params(Section):
    """Static int8 quantization of an mlp or cnn: int8 weights (per output channel) and int8
    activations, their ranges observed on training batches (calibration); faster than
    dynamic int8 where convolutions or many small layers dominate (BENCHMARKS.md)."""

    type: Literal["static_int8"]
    calibration_batches: PositiveInt = Field(16, le=10_000)
    calibration_batch_size: PositiveInt = Field(32, le=65_536)
    backend: Literal["x86"] = Field(
        "x86",
        description="the torch quantized engine (torch.ao FX graph mode): x86, chosen over "
        "PT2E (torchao) and ONNX Runtime by benchmarks/quantize_backends.py",
    )
    keep_fp32: list[str] = Field(
        [], description="layers left in fp32, by module name (e.g. '0', '5' of an mlp)"
    )
    fallback: Literal["none", "auto"] = Field(
        "none",
        description="auto: where compress.gate fails, keep in fp32 the layers whose "
        "quantization costs the most, one more at a time, until the gate holds",
    )
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


# An object-store URL (trainflow.remote); any other `scheme://` is refused, not a folder name.
OBJECT_STORES = ("s3", "gs")
URL = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*)://(.*)")


class OutputsSpec(Section):
    store: str = Field(
        ".trainflow",
        description="A folder trainflow creates and marks as its "
        "store (an existing one must be empty or a trainflow store), or s3://bucket/prefix "
        "(gs:// too): artifacts published to the bucket from a local mirror (trainflow[s3])",
    )
    store_options: dict[str, Any] = Field(
        {},
        description="fsspec options of an s3:// or gs:// store (endpoint_url, anon, "
        "client_kwargs, ...); credentials are best left to AWS_* variables or profiles",
    )
    mirror: str | None = Field(
        None,
        description="the local copy of an s3:// or gs:// store that tasks write and read "
        "(default ~/.cache/trainflow/stores/<hash of the URL>)",
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
        url = URL.fullmatch(store)
        if url is not None:
            scheme, rest = url[1].lower(), url[2]
            if scheme not in OBJECT_STORES:
                raise ValueError(
                    f"{store!r}: {scheme}:// is not a store; use a folder, "
                    "s3://bucket/prefix or gs://bucket/prefix"
                )
            if not rest.split("/")[0]:
                raise ValueError(f"{store!r} names no bucket: write {scheme}://BUCKET/PREFIX")
            return store
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

    @model_validator(mode="after")
    def _options_of_an_object_store(self) -> OutputsSpec:
        remote = URL.fullmatch(self.store) is not None
        if not remote and (self.store_options or self.mirror):
            given = "store_options" if self.store_options else "mirror"
            raise ValueError(
                f"outputs.{given} is for an s3:// or gs:// store; outputs.store is the "
                f"folder {self.store!r}: remove {given}"
            )
        return self
