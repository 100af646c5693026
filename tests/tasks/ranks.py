"""What the tests of training across processes share (ddp, fsdp, pipeline, parameter
server): the prepared shards every strategy trains on, and a model's epoch rows."""

from __future__ import annotations

import json

from trainflow.artifacts import ArtifactRef
from trainflow.tasks.ingest import SklearnSource, ingest
from trainflow.tasks.normalize import NormalizeParams, normalize
from trainflow.tasks.shard import ShardParams, shard
from trainflow.tasks.split import SplitParams, split


def prepared_shards(
    store: str, dataset: str = "breast_cancer", max_samples: int = 128
) -> tuple[ArtifactRef, ArtifactRef, ArtifactRef, ArtifactRef]:
    """A scikit-learn dataset ingested, split, normalized and sharded into `store`: the
    (table, raw splits, scaled splits, shards) refs."""
    table = ingest.fn(SklearnSource(type="sklearn", dataset=dataset), store)
    raw = split.fn(table, SplitParams(type="split"), 0, store)
    scaled = normalize.fn(raw, NormalizeParams(type="normalize"), 0, store)
    return table, raw, scaled, shard.fn(scaled, ShardParams(max_samples=max_samples), store)


def rows(model: ArtifactRef) -> list[dict]:
    """The model's metrics.jsonl, one dict per epoch."""
    return [json.loads(line) for line in (model.path / "metrics.jsonl").read_text().splitlines()]
