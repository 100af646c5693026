"""The clean task: stores the output of trainflow.transforms.clean (what the step does)."""

from __future__ import annotations

from prefect import task

from trainflow.artifacts import ArtifactRef
from trainflow.caching import CACHED
from trainflow.spec.steps import CleanParams
from trainflow.steps import transform
from trainflow.transforms.clean import apply, fit, fit_rows


@task(name="clean", **CACHED)
def clean(data: ArtifactRef, params: CleanParams, seed: int, store: str) -> ArtifactRef:
    """Clean a table (before split) or every part of the splits, fitted on train (after split).

    A table becomes a view: the fill values and, with `drop_duplicates`, one byte a row
    saying which rows stay; readers apply them in their own query. The parts of splits are
    stored (each part's duplicate search runs once, here)."""
    if data.kind == "table":
        return transform(data, params, fit_rows, apply, seed, store, lazy=True, replay=True)
    return transform(data, params, fit, apply, seed, store, lazy=True)
