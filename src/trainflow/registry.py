"""Every pluggable kind, by the name the YAML uses: name -> (params model, implementation).

Filled explicitly here, not by import side effects. The spec's unions are built from these
tables, so a new entry is one line here plus its params model and implementation.

The params models are imported here (they are pydantic models of `trainflow.spec`); an
implementation is named by its "module:attribute" and imported on first use, so that the spec
validates without torch, Prefect, polars or scikit-learn, and a task's code fingerprint
covers only the implementations it looks up (trainflow.caching).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any, Union

from pydantic import BaseModel, Field

from trainflow.spec import after_training as after
from trainflow.spec import model as models
from trainflow.spec import sources
from trainflow.spec import steps
from trainflow.spec import train


@lru_cache(maxsize=None)
def resolve(at: str) -> Any:
    """The object a "module:attribute" reference names (imported once)."""
    module, _, attribute = at.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class Entry:
    """A params model and where its implementation lives ("module:attribute").

    A stateful data step (`stateful=True`) also has `fit` and `apply` in that module: the
    scikit-learn contract its task, CV folds and prediction share.
    """

    params: type[BaseModel]
    at: str
    stateful: bool = False

    @property
    def module(self) -> str:
        return self.at.partition(":")[0]

    @property
    def impl(self) -> Any:
        return resolve(self.at)

    @property
    def fit(self) -> Any:
        return resolve(f"{self.module}:fit") if self.stateful else None

    @property
    def apply(self) -> Any:
        return resolve(f"{self.module}:apply") if self.stateful else None


def modules_of(entry: Entry) -> list[str]:
    """The modules an entry's code lives in: its params model's and its implementation's."""
    return [entry.params.__module__, entry.module]


def soft_vote(probs: list) -> Any:
    """Mean of the members' class probabilities."""
    return sum(probs) / len(probs)


SOURCES = {
    "sklearn": Entry(sources.SklearnSource, "trainflow.readers:SKLEARN"),
    "csv": Entry(sources.FileSource, "trainflow.readers:FILE"),
    "parquet": Entry(sources.FileSource, "trainflow.readers:FILE"),
    "image_folder": Entry(sources.ImageFolderSource, "trainflow.readers:IMAGE_FOLDER"),
    "sequences": Entry(sources.SequenceSource, "trainflow.readers:SEQUENCES"),
}
STEPS = {
    "clean": Entry(steps.CleanParams, "trainflow.tasks.clean:clean", stateful=True),
    "split": Entry(steps.SplitParams, "trainflow.tasks.split:split"),
    "normalize": Entry(steps.NormalizeParams, "trainflow.tasks.normalize:normalize",
                       stateful=True),
    "encode": Entry(steps.EncodeParams, "trainflow.tasks.encode:encode", stateful=True),
    "resample": Entry(steps.ResampleParams, "trainflow.tasks.resample:resample", stateful=True),
    "outliers": Entry(steps.OutliersParams, "trainflow.tasks.outliers:outliers", stateful=True),
    "anomalies": Entry(steps.AnomaliesParams, "trainflow.tasks.anomalies:anomalies",
                       stateful=True),
    "subsample": Entry(steps.SubsampleParams, "trainflow.tasks.subsample:subsample",
                       stateful=True),
    "smooth": Entry(steps.SmoothParams, "trainflow.tasks.smooth:smooth", stateful=True),
    "synthesize": Entry(steps.SynthesizeParams, "trainflow.tasks.synthesize:synthesize",
                        stateful=True),
}
MODELS = {
    "mlp": Entry(models.MLPParams, "trainflow.models.mlp:mlp"),
    "cnn": Entry(models.CNNParams, "trainflow.models.cnn:cnn"),
    "rnn": Entry(models.RecurrentParams, "trainflow.models.recurrent:rnn"),
    "lstm": Entry(models.RecurrentParams, "trainflow.models.recurrent:lstm"),
    "gru": Entry(models.RecurrentParams, "trainflow.models.recurrent:gru"),
    "transformer": Entry(models.TransformerParams, "trainflow.models.transformer:transformer"),
}
OPTIMIZERS = {
    "sgd": Entry(train.SGDParams, "trainflow.engine.optim:sgd"),
    "adam": Entry(train.AdamParams, "trainflow.engine.optim:adam"),
    "adamw": Entry(train.AdamParams, "trainflow.engine.optim:adam"),
    "rmsprop": Entry(train.RMSpropParams, "trainflow.engine.optim:rmsprop"),
    "adagrad": Entry(train.AdagradParams, "trainflow.engine.optim:adagrad"),
    "adadelta": Entry(train.AdadeltaParams, "trainflow.engine.optim:adadelta"),
}
ENSEMBLES = {"soft_vote": Entry(after.SoftVoteParams, "trainflow.registry:soft_vote")}
QUANTIZERS = {"dynamic_int8": Entry(after.DynamicInt8Params,
                                    "trainflow.compress:quantize_dynamic_int8")}
PRUNERS = {"l1_unstructured": Entry(after.L1UnstructuredParams,
                                    "trainflow.compress:prune_l1_unstructured")}


def union(registry: dict[str, Entry]) -> Any:
    """The discriminated union (on `type`) of a registry's params models."""
    members = tuple(dict.fromkeys(entry.params for entry in registry.values()))
    if len(members) == 1:
        return members[0]
    return Annotated[Union[members], Field(discriminator="type")]
