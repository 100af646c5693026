"""Train: fit the declared model on the training shards, early-stopped on validation."""

from __future__ import annotations

from typing import Any

from prefect import task

from trainflow.artifacts import ArtifactRef, Store
from trainflow.caching import CACHED
from trainflow.engine.bundle import train_into
from trainflow.engine.loop import Split
from trainflow.logs import run_logger
from trainflow.shards import read_split
from trainflow.spec.train import TrainSpec


def load_splits(shards: ArtifactRef, names=("train", "val", "test")) -> dict[str, Split]:
    """Read splits into memory (shuffled per epoch by the loop); each shard is checked
    against the sha256 in its manifest as it is read."""
    return {name: Split.from_arrays(*read_split(shards.path, name)) for name in names}


@task(name="train", **CACHED)
def train_model(shards: ArtifactRef, model: Any, train: TrainSpec, seed: int,
                store: str) -> ArtifactRef:
    """Train a model; the artifact holds best.pt, last.pt, metrics.jsonl and model.json."""
    logger = run_logger()
    data = load_splits(shards, ("train", "val"))

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
                                   "stopped_early": result.stopped_early,
                                   "val_accuracy": best["val_accuracy"],
                                   "val_loss": best["val_loss"]})
