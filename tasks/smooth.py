"""The smooth task: stores the output of trainflow.transforms.smooth (what the step does)."""

from __future__ import annotations

from prefect import task

from trainflow.artifacts import ArtifactRef
from trainflow.caching import CACHED
from trainflow.spec.steps import SmoothParams
from trainflow.steps import transform
from trainflow.transforms.smooth import apply, fit


@task(name="smooth", **CACHED)
def smooth(data: ArtifactRef, params: SmoothParams, seed: int, store: str) -> ArtifactRef:
    """Smooth noisy numeric series columns."""
    return transform(data, params, fit, apply, seed, store)
