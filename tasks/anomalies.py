"""The anomalies task: stores the output of trainflow.transforms.anomalies (what the step does)."""

from __future__ import annotations

from prefect import task

from trainflow.artifacts import ArtifactRef
from trainflow.caching import CACHED
from trainflow.spec.steps import AnomaliesParams
from trainflow.steps import transform
from trainflow.transforms.anomalies import apply, fit


@task(name="anomalies", **CACHED)
def anomalies(data: ArtifactRef, params: AnomaliesParams, seed: int, store: str) -> ArtifactRef:
    """Detect anomalous rows; drop, flag or report them."""
    return transform(data, params, fit, apply, seed, store)
