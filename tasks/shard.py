"""Shard: write each split as webdataset tar shards with a manifest (counts, classes, sha256)."""

from __future__ import annotations

import json

import numpy as np
import torch
from prefect import task

from trainflow.artifacts import ArtifactRef, Store
from trainflow.caching import CACHED
from trainflow.engine.augment import Augmenter
from trainflow.logs import Progress
from trainflow.shards import MANIFEST, write_split
from trainflow.spec.data import ExpandSpec, ShardParams
from trainflow.steps import SPLITS, read_parts
from trainflow.tables import sample_weights, to_arrays

OFFLINE_WORKER = 1_000_000


RECORD_BYTES = 1024 * 1024


def record_samples(x: np.ndarray) -> int:
    """Samples per record for about RECORD_BYTES per record: big enough that reading is not
    dominated by per-member overhead, small enough to shuffle well across records."""
    return max(1, RECORD_BYTES // max(1, x[:1].nbytes))


def expand(
    x: np.ndarray, y: np.ndarray, spec: ExpandSpec, seed: int, image_input: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The originals followed by `copies` augmented copies; copy k draws its randomness as epoch
    k of a reserved worker id, so it never repeats an on-the-fly training stream."""
    augmenter = Augmenter(spec.augment, seed, image_input)
    copies = [
        augmenter.for_epoch(k, worker=OFFLINE_WORKER)(torch.from_numpy(x)).numpy()
        for k in range(spec.copies)
    ]
    return np.concatenate([x, *copies]), np.concatenate([y] * (spec.copies + 1))


@task(name="shard", **CACHED)
def shard(splits: ArtifactRef, params: ShardParams, store: str, seed: int = 0) -> ArtifactRef:
    """Turn train/val/test tables into tar shards that training streams from."""
    parts = read_parts(splits)
    schema = parts["train"][1]
    manifest = {
        "classes": schema.classes,
        "input_shape": schema.input_shape,
        "splits": {},
        **({"task": "regression"} if schema.task == "regression" else {}),
        **({"aux_targets": schema.aux_targets} if schema.aux_targets else {}),
    }
    target = Store(store)
    rows = {name: parts[name][0].height for name in SPLITS}
    progress = Progress("shard-progress", "samples written to shards (train, val, test)")
    done = 0
    with target.writer("shards") as staging:
        for name in SPLITS:
            x, y = to_arrays(*parts[name])
            w = sample_weights(*parts[name]) if name == "train" else None
            if name == "train" and params.expand:
                x, y = expand(x, y, params.expand, seed, bool(schema.image_shape))
                w = np.concatenate([w] * (params.expand.copies + 1)) if w is not None else None
            manifest["splits"][name] = write_split(
                staging,
                name,
                x,
                y,
                schema.classes,
                params.max_samples,
                params.per_record if params.per_record != "auto" else record_samples(x),
                params.max_bytes,
                w,
            )
            done += rows[name]
            progress.update(done / max(sum(rows.values()), 1))
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        counts = {k: v["samples"] for k, v in manifest["splits"].items()}
        return target.commit(
            staging,
            "shards",
            count=sum(counts.values()),
            schema={
                "classes": schema.classes,
                "input_shape": schema.input_shape,
                **({"task": "regression"} if schema.task == "regression" else {}),
                **({"aux_targets": schema.aux_targets} if schema.aux_targets else {}),
            },
            meta={
                "samples": counts,
                "classes": {k: v["classes"] for k, v in manifest["splits"].items()},
            },
        )
