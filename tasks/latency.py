"""Latency: CPU time of one forward pass over a test batch, for the trained model and each
compressed one, measured afresh on every run.

A timing belongs to the machine and the moment, not to the inputs, so this step is never
cached and its figures go only to the run folder and the report shown in the UI; the
content-addressed artifacts (and their fingerprints) hold what the inputs determine.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from trainflow import compress
from trainflow.artifacts import ArtifactRef
from trainflow.engine.model_folder import load_model
from trainflow.tasks.train import load_splits


@task(name="measure_latency", cache_policy=NO_CACHE, persist_result=False)
def measure_latency(
    models: dict[str, ArtifactRef], shards: ArtifactRef, batch_size: int, repeats: int
) -> dict:
    """Median milliseconds per batch of `batch_size` test rows, per model (after warm-up)."""
    batch = load_splits(shards, ("test",))["test"].x[:batch_size]
    per_model = {}
    for name, ref in models.items():
        net, _ = load_model(ref)
        per_model[name] = 1000 * compress.latency_per_batch(net, batch, repeats)
    return {"batch_size": len(batch), "repeats": repeats, "ms_per_batch": per_model}
