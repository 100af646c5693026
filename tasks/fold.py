"""Cross-validation fold: re-fit the post-split steps on the fold's training rows, train, score."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from prefect import task

from trainflow import registry
from trainflow.artifacts import ArtifactRef, Store
from trainflow.caching import CACHED
from trainflow.engine.data import Split
from trainflow.engine.inference import score, score_regression
from trainflow.engine.target_scale import regression_of
from trainflow.engine.training import train_into
from trainflow.spec.train import TrainSpec
from trainflow.steps import fit_apply, json_state, read_parts
from trainflow.tables import sample_weights, to_arrays
from trainflow.tasks.split import fold_indices

FOLD_STEPS = "steps.json"  # the post-split steps' states as fitted in the fold
FEATURES_MB = 64  # a fold keeps its held-out and test inputs up to this size (model soups)


@dataclass(frozen=True)
class FoldData:
    """One fold's data as its training sees it, and what its package and ensembles need."""

    data: dict[str, Split]  # train/val from the train+val pool, and the test part
    schema: Any  # the schema after the post-split steps
    states: list[dict]  # each step's state fitted on the fold's training rows
    held: np.ndarray  # the held-out rows' positions in the train+val pool
    train_rows: np.ndarray | None = None  # the training rows' positions in that pool
    test_rows: np.ndarray | None = None  # nested CV: the outer fold's rows scored as test


def fold_data(
    splits: ArtifactRef,
    fold: int,
    folds: int,
    steps: list[Any],
    seed: int,
    group_column: str | None = None,
    outer: tuple[int, int] | None = None,
    rows: str = "train+validation",
) -> FoldData:
    """Fold train/val from the train+val pool and the test part, each step fitted on fold train.

    Nothing learned from the fold's held-out rows or from the test part reaches training;
    the states are kept because a fold model's package applies them to the rows it scores.
    With `outer` (nested CV: outer folds, outer fold), the folds are drawn from that outer
    fold's training rows only and its held-out rows take the test part's place. With
    `rows` all (evaluate.cv.rows) the pool holds the test part too, and each fold's held-out
    rows are also its test rows: no row stays outside the folds.
    """
    parts = read_parts(splits)
    schema = parts["train"][1]
    pooled = ("train", "val", "test") if rows == "all" else ("train", "val")
    pool = pl.concat([parts[name][0] for name in pooled])
    within, test_rows = np.arange(len(pool)), None
    if outer is not None:
        within, test_rows = fold_indices(pool, schema, *outer, seed, group_column)
    source = pool if outer is None else pool[within]
    train_rows, held = (
        within[r] for r in fold_indices(source, schema, folds, fold, seed, group_column)
    )
    train, val = pool[train_rows], pool[held]
    test = parts["test"] if test_rows is None else (pool[test_rows], schema)
    if rows == "all":
        test = (val, schema)
    frames = {"train": (train, schema), "val": (val, schema), "test": test}
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
    return FoldData(data, frames["train"][1], states, held, train_rows, test_rows)


def save_out_of_fold(
    folder: Path, probs: np.ndarray, val: Split, held: np.ndarray, name: str = "val_probs"
) -> None:
    """The fold model's predictions on its held-out rows, their labels and their positions
    in the train+val pool: the out-of-fold predictions weighted and stacking ensembles fit
    on (not when a step dropped held-out rows: their positions are then unknown)."""
    np.save(folder / f"{name}.npy", probs.astype(np.float32), allow_pickle=False)
    np.save(folder / "val_labels.npy", val.y.numpy(), allow_pickle=False)
    if len(val) == len(held):
        np.save(folder / "val_rows.npy", held.astype(np.int64), allow_pickle=False)


def save_features(folder: Path, data: dict[str, Split]) -> None:
    """The held-out and test rows as the fold's steps made them (the model's inputs): a
    model soup scores its candidates on them. Left out past FEATURES_MB (no soup then)."""
    if sum(data[name].x.numel() for name in ("val", "test")) * 4 > FEATURES_MB * 2**20:
        return
    for name in ("val", "test"):
        np.save(folder / f"{name}_x.npy", data[name].x.float().numpy(), allow_pickle=False)


def score_fold(
    net: Any, staging: Path, data: dict[str, Split], held: np.ndarray
) -> tuple[dict, dict]:
    """The fold model's validation and test metrics; its test predictions (class
    probabilities, or a regression's numbers in the target's units: test_preds.npy) and
    the true labels or values beside them, and its out-of-fold predictions."""
    info = json.loads((staging / "model.json").read_text())
    regression = regression_of(info)
    if regression is None:
        classes = len(info["classes"])
        val, val_probs = score(net, data["val"], classes)
        test, probs = score(net, data["test"], classes)
        np.save(staging / "test_probs.npy", probs.astype(np.float32), allow_pickle=False)
        np.save(staging / "test_labels.npy", data["test"].y.numpy(), allow_pickle=False)
        save_out_of_fold(staging, val_probs, data["val"], held)
        return val, test
    val, val_preds = score_regression(net, data["val"], regression, where="the held-out fold")
    test, preds = score_regression(net, data["test"], regression, where="the test part")
    np.save(staging / "test_preds.npy", preds.astype(np.float64), allow_pickle=False)
    truth = data["test"].y.numpy().astype(np.float64)
    np.save(staging / "test_labels.npy", truth, allow_pickle=False)
    save_out_of_fold(staging, val_preds, data["val"], held, "val_preds")
    return val, test


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
    rows: str = "train+validation",
) -> ArtifactRef:
    """Train and score one fold; keeps its test-set probabilities for ensembling."""
    prepared = fold_data(splits, fold, folds, steps, seed, group_column, rows=rows)
    data, schema = prepared.data, prepared.schema
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
            task=schema.task,
        )
        val, test = score_fold(net, staging, data, prepared.held)
        save_features(staging, data)
        (staging / FOLD_STEPS).write_text(json.dumps(prepared.states, indent=1, sort_keys=True))
        (staging / "fold.json").write_text(
            json.dumps({"fold": fold, "val": val, "test": test}, indent=1, sort_keys=True)
        )
        return target.commit(
            staging,
            "model",
            count=len(data["train"]),
            schema={"classes": schema.classes, "input_shape": schema.input_shape}
            | ({"task": "regression"} if schema.task == "regression" else {}),
            meta={
                "fold": fold,
                "val": val,
                "test": test,
                "best_epoch": result.best_epoch,
                "rows": rows,  # the rows the folds were drawn from (evaluate.cv.rows)
                "pool": int(len(prepared.held) + len(prepared.train_rows)),
            },
        )
