"""Shard: write each split as webdataset tar shards with a manifest (counts, classes, sha256)."""

from __future__ import annotations

import json

from prefect import task
from pydantic import Field

from trainflow.artifacts import ArtifactRef, Store
from trainflow.caching import CACHED
from trainflow.shards import MANIFEST, write_split
from trainflow.spec.base import Section
from trainflow.steps import SPLITS, read_parts
from trainflow.tables import to_arrays


class ShardParams(Section):
    max_samples: int = Field(10_000, ge=1, description="Samples per tar shard")
    per_record: int = Field(256, ge=1, description="Samples packed into one tar record")
    max_bytes: int | None = Field(None, ge=1024, description="Bytes per tar shard (about)")


@task(name="shard", **CACHED)
def shard(splits: ArtifactRef, params: ShardParams, store: str) -> ArtifactRef:
    """Turn train/val/test tables into tar shards that training streams from."""
    parts = read_parts(splits)
    schema = parts["train"][1]
    manifest = {"classes": schema.classes, "input_shape": schema.input_shape, "splits": {}}
    target = Store(store)
    with target.writer("shards") as staging:
        for name in SPLITS:
            x, y = to_arrays(*parts[name])
            manifest["splits"][name] = write_split(staging, name, x, y, schema.classes,
                                                   params.max_samples, params.per_record,
                                                   params.max_bytes)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        counts = {k: v["samples"] for k, v in manifest["splits"].items()}
        return target.commit(staging, "shards", count=sum(counts.values()),
                             schema={"classes": schema.classes,
                                     "input_shape": schema.input_shape},
                             meta={"samples": counts,
                                   "classes": {k: v["classes"]
                                               for k, v in manifest["splits"].items()}})
