"""Evaluate: test-set accuracy, macro precision/recall/F1, the confusion matrix and, for a
model trained adversarially, its accuracy under the same attack (robust accuracy)."""

from __future__ import annotations

import json

import numpy as np
import torch
from prefect import task

from trainflow.artifacts import ArtifactRef, Store
from trainflow.caching import CACHED
from trainflow.engine.adversarial import robust_accuracy
from trainflow.engine.inference import score
from trainflow.engine.model_folder import load_model
from trainflow.tasks.train import load_splits

ATTACK_SEED = 0


@task(name="evaluate", **CACHED)
def evaluate_model(model: ArtifactRef, shards: ArtifactRef, store: str) -> ArtifactRef:
    """Score the model on the held-out test split; metrics travel in the ref's meta."""
    net, info = load_model(model)
    test = load_splits(shards, ("test",))["test"]
    metrics, probs = score(net, test, len(info["classes"]))
    if "adversarial" in info:  # trained against an attack: accuracy under the same attack
        a = info["adversarial"]
        # PGD starts from random points drawn from torch's global generator: seeded here (and
        # restored after), so the figure is a function of the model and data alone, not of
        # whichever tasks this process happened to run before.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ATTACK_SEED)
            metrics["robust_accuracy"] = robust_accuracy(
                net, test.x, test.y, a["method"], a["epsilon"], a["steps"], a["step_size"]
            )
    target = Store(store)
    with target.writer("metrics") as staging:
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
        np.save(staging / "test_probs.npy", probs.astype(np.float32), allow_pickle=False)
        return target.commit(staging, "metrics", count=len(test), meta=metrics)
