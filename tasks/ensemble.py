"""Ensemble: combine the fold models' test-set probabilities and score the combination."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from prefect import task

from trainflow import registry
from trainflow.artifacts import ArtifactRef, Store
from trainflow.caching import CACHED
from trainflow.errors import ArtifactError
from trainflow.metrics import classification_metrics


@task(name="ensemble", **CACHED)
def ensemble_folds(folds: list[ArtifactRef], params: Any, store: str) -> ArtifactRef:
    """Soft voting: the mean of the members' class probabilities on the test part."""
    probs, labels = [], None
    for ref in folds:
        ref.verify()
        probs.append(np.load(ref.path / "test_probs.npy", allow_pickle=False))
        y = np.load(ref.path / "test_labels.npy", allow_pickle=False)
        if labels is not None and not np.array_equal(labels, y):
            raise ArtifactError(f"fold {ref.meta.get('fold')} was scored on other test rows")
        labels = y
    combined = registry.ENSEMBLES[params.type].impl(probs)
    metrics = classification_metrics(labels, combined, combined.shape[1])
    members = [ref.meta["test"]["accuracy"] for ref in folds]
    metrics["members_accuracy"] = members
    target = Store(store)
    with target.writer("metrics") as staging:
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
        np.save(staging / "test_probs.npy", combined.astype(np.float32), allow_pickle=False)
        return target.commit(
            staging,
            "metrics",
            count=len(labels),
            meta={**metrics, "type": params.type, "members": len(folds)},
        )
