"""The resample task: stores the output of trainflow.transforms.resample (what the step does)."""

from __future__ import annotations

from prefect import task

from trainflow.artifacts import ArtifactRef
from trainflow.caching import CACHED
from trainflow.spec.steps import ResampleParams
from trainflow.steps import transform
from trainflow.transforms.resample import apply, fit


@task(name="resample", **CACHED)
def resample(data: ArtifactRef, params: ResampleParams, seed: int, store: str) -> ArtifactRef:
    """Over- or under-sample the training part; validation and test rows are never touched."""
    return transform(data, params, fit, apply, seed, store)
