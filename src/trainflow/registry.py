"""Every pluggable kind, by the name the YAML uses: name -> (params model, implementation).

Filled explicitly here, not by import side effects. The spec's unions are built from these
tables, so a new entry is one line here plus its params model and implementation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Union

from pydantic import BaseModel, Field

from trainflow import compress
from trainflow.engine import optim
from trainflow.models.cnn import cnn
from trainflow.models.mlp import mlp
from trainflow.spec import after_training as ev
from trainflow.models.recurrent import gru, lstm, rnn
from trainflow.models.transformer import transformer
from trainflow.spec.model import CNNParams, MLPParams, RecurrentParams, TransformerParams
from trainflow.spec.train import (AdadeltaParams, AdagradParams, AdamParams, RMSpropParams,
                                  SGDParams)
from trainflow.tasks import (anomalies, clean, encode, ingest, normalize, outliers, resample,
                             smooth, split, subsample, synthesize)


def soft_vote(probs: list) -> Any:
    """Mean of the members' class probabilities."""
    return sum(probs) / len(probs)


@dataclass(frozen=True)
class Entry:
    params: type[BaseModel]
    impl: Callable[..., Any]
    fit: Callable[..., Any] | None = None
    apply: Callable[..., Any] | None = None


SOURCES = {
    "sklearn": Entry(ingest.SklearnSource, ingest.load_source),
    "csv": Entry(ingest.FileSource, ingest.load_source),
    "parquet": Entry(ingest.FileSource, ingest.load_source),
    "image_folder": Entry(ingest.ImageFolderSource, ingest.load_source),
    "sequences": Entry(ingest.SequenceSource, ingest.load_source),
}
STEPS = {
    "clean": Entry(clean.CleanParams, clean.clean, clean.fit, clean.apply),
    "split": Entry(split.SplitParams, split.split),
    "normalize": Entry(normalize.NormalizeParams, normalize.normalize, normalize.fit,
                       normalize.apply),
    "encode": Entry(encode.EncodeParams, encode.encode, encode.fit, encode.apply),
    "resample": Entry(resample.ResampleParams, resample.resample, resample.fit, resample.apply),
    "outliers": Entry(outliers.OutliersParams, outliers.outliers, outliers.fit, outliers.apply),
    "anomalies": Entry(anomalies.AnomaliesParams, anomalies.anomalies, anomalies.fit,
                       anomalies.apply),
    "subsample": Entry(subsample.SubsampleParams, subsample.subsample, subsample.fit,
                       subsample.apply),
    "smooth": Entry(smooth.SmoothParams, smooth.smooth, smooth.fit, smooth.apply),
    "synthesize": Entry(synthesize.SynthesizeParams, synthesize.synthesize, synthesize.fit,
                        synthesize.apply),
}
MODELS = {"mlp": Entry(MLPParams, mlp), "cnn": Entry(CNNParams, cnn),
          "rnn": Entry(RecurrentParams, rnn), "lstm": Entry(RecurrentParams, lstm),
          "gru": Entry(RecurrentParams, gru), "transformer": Entry(TransformerParams, transformer)}
OPTIMIZERS = {
    "sgd": Entry(SGDParams, optim.sgd),
    "adam": Entry(AdamParams, optim.adam),
    "adamw": Entry(AdamParams, optim.adam),
    "rmsprop": Entry(RMSpropParams, optim.rmsprop),
    "adagrad": Entry(AdagradParams, optim.adagrad),
    "adadelta": Entry(AdadeltaParams, optim.adadelta),
}
ENSEMBLES = {"soft_vote": Entry(ev.SoftVoteParams, soft_vote)}
QUANTIZERS = {"dynamic_int8": Entry(ev.DynamicInt8Params, compress.quantize_dynamic_int8)}
PRUNERS = {"l1_unstructured": Entry(ev.L1UnstructuredParams, compress.prune_l1_unstructured)}


def union(registry: dict[str, Entry]) -> Any:
    """The discriminated union (on `type`) of a registry's params models."""
    members = tuple(dict.fromkeys(entry.params for entry in registry.values()))
    if len(members) == 1:
        return members[0]
    return Annotated[Union[members], Field(discriminator="type")]
