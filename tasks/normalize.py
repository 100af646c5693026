"""The normalize task: stores the output of trainflow.transforms.normalize (what the step does)."""

from __future__ import annotations

from prefect import task

from trainflow.artifacts import ArtifactRef
from trainflow.caching import CACHED
from trainflow.spec.steps import NormalizeParams
from trainflow.steps import transform
from trainflow.transforms.normalize import apply, fit


@task(name="normalize", **CACHED)
def normalize(data: ArtifactRef, params: NormalizeParams, seed: int, store: str) -> ArtifactRef:
    """Scale features with statistics learned from the training part, applied to every part.

    On tabular data the result is a view (the statistics, applied by whoever reads the rows);
    images are scaled in NumPy and written."""
    tabular = not data.data_schema.get("image_shape")
    return transform(
        data, params, fit, apply, seed, store, lazy=True, replay=tabular, keeps_rows=True
    )
