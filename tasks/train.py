"""Train: fit the declared model on the training shards, early-stopped on validation."""

from __future__ import annotations

from typing import Any

from prefect import task

from trainflow.artifacts import ArtifactRef, Store
from trainflow.caching import CACHED
from trainflow.engine.bundle import train_into
from trainflow.engine.loop import Split
from trainflow.logs import run_logger
from trainflow.shards import read_split, read_split_checked
from trainflow.spec.train import TrainSpec


def load_splits(shards: ArtifactRef, names=("train", "val", "test")) -> dict[str, Split]:
    """Read splits into memory (shuffled per epoch by the loop); each shard is checked
    against the sha256 in its manifest as it is read."""
    return {name: Split.from_arrays(*read_split(shards.path, name)) for name in names}


def load_training_splits(shards: ArtifactRef, on_corrupt: str) -> tuple[dict[str, Split], int]:
    """train and val, skipping corrupt shards when told to; also the count of samples lost."""
    data, lost = {}, 0
    for name in ("train", "val"):
        x, y, missing = read_split_checked(shards.path, name, on_corrupt)
        data[name], lost = Split.from_arrays(x, y), lost + missing
    return data, lost


@task(name="train", **CACHED)
def train_model(shards: ArtifactRef, model: Any, train: TrainSpec, seed: int,
                store: str) -> ArtifactRef:
    """Train a model; the artifact holds best.pt, last.pt, metrics.jsonl and model.json."""
    logger = run_logger()
    data, lost = load_training_splits(shards, train.on_corrupt)
    if lost:
        logger.warning("%d training/validation samples lost to corrupt shards (on_corrupt: "
                       "skip)", lost)

    def log_epoch(row: dict) -> None:
        logger.info("epoch %(epoch)d  train_loss %(train_loss).4f  val_loss %(val_loss).4f  "
                    "val_accuracy %(val_accuracy).4f  (%(seconds).2fs)", row)

    target = Store(store)
    with target.writer("model") as staging:
        _, result = train_into(staging, model, train, seed, data, shards.data_schema["input_shape"],
                               shards.data_schema["classes"], log_epoch)
        best = result.history[result.best_epoch - 1]
        return target.commit(staging, "model", count=len(data["train"]),
                             schema=shards.data_schema,
                             meta={"best_epoch": result.best_epoch,
                                   "epochs_run": len(result.history),
                                   "samples_lost": lost,
                                   "stopped_early": result.stopped_early,
                                   "val_accuracy": best["val_accuracy"],
                                   "val_loss": best["val_loss"]})
