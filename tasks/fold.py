"""Cross-validation fold: re-fit the post-split steps on the fold's training rows, train, score."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import polars as pl
from prefect import task

from trainflow import registry
from trainflow.artifacts import ArtifactRef, Store
from trainflow.caching import CACHED
from trainflow.engine.data import Split
from trainflow.engine.inference import score
from trainflow.engine.training import train_into
from trainflow.spec.train import TrainSpec
from trainflow.steps import fit_apply, json_state, read_parts
from trainflow.tables import sample_weights, to_arrays
from trainflow.tasks.split import fold_frames

FOLD_STEPS = "steps.json"  # the post-split steps' states as fitted in the fold


def fold_data(
    splits: ArtifactRef,
    fold: int,
    folds: int,
    steps: list[Any],
    seed: int,
    group_column: str | None = None,
) -> tuple[dict[str, Split], Any]:
    """Fold train/val from the train+val pool and the test part, each step fitted on fold train.

    Nothing learned from the fold's held-out rows or from the test part reaches training.
    """
    data, schema, _ = fold_data_and_states(splits, fold, folds, steps, seed, group_column)
    return data, schema


def fold_data_and_states(
    splits: ArtifactRef,
    fold: int,
    folds: int,
    steps: list[Any],
    seed: int,
    group_column: str | None = None,
) -> tuple[dict[str, Split], Any, list[dict]]:
    """`fold_data`, and the state each step fitted on the fold's training rows (a fold
    model's package applies them to the rows it scores)."""
    parts = read_parts(splits)
    schema = parts["train"][1]
    pool = pl.concat([parts["train"][0], parts["val"][0]])
    train, val = fold_frames(pool, schema, folds, fold, seed, group_column)
    frames = {"train": (train, schema), "val": (val, schema), "test": parts["test"]}
    states = []
    for step in steps:
        entry = registry.STEPS[step.type]
        frames, state = fit_apply(frames, step, entry.fit, entry.apply, seed)
        states.append({"step": step.type, "state": json_state(state)})
    data = {
        name: Split.from_arrays(
            *to_arrays(*frames[name]), sample_weights(*frames[name]) if name == "train" else None
        )
        for name in frames
    }
    return data, frames["train"][1], states


@task(name="train_fold", **CACHED)
def train_fold(
    splits: ArtifactRef,
    fold: int,
    folds: int,
    steps: list[Any],
    model: Any,
    train: TrainSpec,
    seed: int,
    store: str,
    group_column: str | None = None,
) -> ArtifactRef:
    """Train and score one fold; keeps its test-set probabilities for ensembling."""
    data, schema, states = fold_data_and_states(splits, fold, folds, steps, seed, group_column)
    target = Store(store)
    with target.writer("model") as staging:
        net, result = train_into(
            staging,
            model,
            train,
            seed,
            data,
            schema.input_shape,
            schema.classes,
            aux_targets=schema.aux_targets,
        )
        val, _ = score(net, data["val"], len(schema.classes))
        test, probs = score(net, data["test"], len(schema.classes))
        np.save(staging / "test_probs.npy", probs.astype(np.float32), allow_pickle=False)
        np.save(staging / "test_labels.npy", data["test"].y.numpy(), allow_pickle=False)
        (staging / FOLD_STEPS).write_text(json.dumps(states, indent=1, sort_keys=True))
        (staging / "fold.json").write_text(
            json.dumps({"fold": fold, "val": val, "test": test}, indent=1, sort_keys=True)
        )
        return target.commit(
            staging,
            "model",
            count=len(data["train"]),
            schema={"classes": schema.classes, "input_shape": schema.input_shape},
            meta={"fold": fold, "val": val, "test": test, "best_epoch": result.best_epoch},
        )
