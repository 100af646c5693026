"""Evaluate: test-set accuracy, macro precision/recall/F1 and the confusion matrix."""

from __future__ import annotations

import json

import numpy as np
from prefect import task

from trainflow.artifacts import ArtifactRef, Store
from trainflow.caching import CACHED
from trainflow.engine.bundle import load_model, score
from trainflow.tasks.train import load_splits


@task(name="evaluate", **CACHED)
def evaluate_model(model: ArtifactRef, shards: ArtifactRef, store: str) -> ArtifactRef:
    """Score the model on the held-out test split; metrics travel in the ref's meta."""
    net, info = load_model(model)
    test = load_splits(shards, ("test",))["test"]
    metrics, probs = score(net, test, len(info["classes"]))
    target = Store(store)
    with target.writer("metrics") as staging:
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
        np.save(staging / "test_probs.npy", probs.astype(np.float32), allow_pickle=False)
        return target.commit(staging, "metrics", count=len(test), meta=metrics)
