"""The outliers task: stores the output of trainflow.transforms.outliers (what the step does)."""

from __future__ import annotations

from prefect import task

from trainflow.artifacts import ArtifactRef
from trainflow.caching import CACHED
from trainflow.spec.steps import OutliersParams
from trainflow.steps import transform
from trainflow.transforms.outliers import apply, fit


@task(name="outliers", **CACHED)
def outliers(data: ArtifactRef, params: OutliersParams, seed: int, store: str) -> ArtifactRef:
    """Clip or drop outlying values, with bounds learned where the step is fitted."""
    return transform(data, params, fit, apply, seed, store)
