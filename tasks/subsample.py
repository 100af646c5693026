"""The subsample task: stores the output of trainflow.transforms.subsample (what the step does)."""

from __future__ import annotations

from prefect import task

from trainflow.artifacts import ArtifactRef
from trainflow.caching import CACHED
from trainflow.spec.steps import SubsampleParams
from trainflow.steps import transform
from trainflow.transforms.subsample import apply, fit


@task(name="subsample", **CACHED)
def subsample(data: ArtifactRef, params: SubsampleParams, seed: int, store: str) -> ArtifactRef:
    """Keep a seeded, stratified fraction of the rows."""
    return transform(data, params, fit, apply, seed, store)
