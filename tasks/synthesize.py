"""The synthesize task: stores the output of trainflow.transforms.synthesize (the step)."""

from __future__ import annotations

from prefect import task

from trainflow.artifacts import ArtifactRef
from trainflow.caching import CACHED
from trainflow.spec.steps import SynthesizeParams
from trainflow.steps import transform
from trainflow.transforms.synthesize import apply, fit


@task(name="synthesize", **CACHED)
def synthesize(data: ArtifactRef, params: SynthesizeParams, seed: int, store: str) -> ArtifactRef:
    """Add marked synthetic training rows for scarce classes."""
    return transform(data, params, fit, apply, seed, store)
