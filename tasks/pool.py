"""Pool: the validation rows joined to the training part (train.fit_on: train+validation)."""

from __future__ import annotations

import polars as pl
from prefect import task

from trainflow.artifacts import ArtifactRef, Store
from trainflow.caching import CACHED
from trainflow.steps import scan_parts, write_parts


@task(name="pool_validation", **CACHED)
def pool_validation(splits: ArtifactRef, store: str) -> ArtifactRef:
    """The split's parts with train = train + validation (in that order), so that every step
    after `split` is fitted on (and resamples) the rows the model trains on. The validation
    part stays as it was, now rows the model sees: the pipeline refuses the knobs that need
    it unseen (trainflow.spec.fit_on). The test part is untouched."""
    parts = scan_parts(splits)
    (train, schema), (val, _) = parts["train"], parts["val"]
    pooled = {"train": (pl.concat([train, val]), schema), "val": parts["val"]}
    return write_parts(Store(store), "splits", {**pooled, "test": parts["test"]}, step="pool")
