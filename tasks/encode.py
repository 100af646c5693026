"""The encode task: stores the output of trainflow.transforms.encode (what the step does)."""

from __future__ import annotations

from prefect import task

from trainflow.artifacts import ArtifactRef
from trainflow.caching import CACHED
from trainflow.spec.steps import EncodeParams
from trainflow.steps import transform
from trainflow.transforms.encode import apply, fit


@task(name="encode", **CACHED)
def encode(data: ArtifactRef, params: EncodeParams, seed: int, store: str) -> ArtifactRef:
    """Turn text feature columns into numbers, with categories learned on the training part.

    The result is a view (the categories, applied by whoever reads the rows)."""
    return transform(data, params, fit, apply, seed, store, lazy=True, replay=True, keeps_rows=True)
