"""Train: fit the declared model on the training shards (early-stopped on validation), or on
train + validation for a fixed count of epochs (train.fit_on)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import task

from trainflow.artifacts import ArtifactRef, Store
from trainflow.caching import CACHED
from trainflow.engine import (
    checkpoint,
    ddp,
    ddp_worker,
    pipeline_parallel,
    pipeline_worker,
    ps_worker,
)
from trainflow.engine.data import Split
from trainflow.engine.loop import FitResult
from trainflow.engine.setup import resolve_device
from trainflow.engine.state import load_resumable
from trainflow.engine.training import train_into
from trainflow.errors import ArtifactError
from trainflow.loader import DEFAULT_CACHE, Stream
from trainflow.logs import Progress, run_logger
from trainflow.remote import shards_url
from trainflow.shards import read_paths, read_split, read_split_checked, shard_paths
from trainflow.spec.fit_on import POOLED
from trainflow.spec.train import LoaderSpec, TrainSpec


def load_splits(shards: ArtifactRef, names=("train", "val", "test")) -> dict[str, Split]:
    """Read splits into memory (shuffled per epoch by the loop); each shard is checked
    against the sha256 in its manifest as it is read."""
    return {name: Split.from_arrays(*read_split(shards.path, name)) for name in names}


def training_stream(
    base: str | Path, spec: LoaderSpec, on_corrupt: str, cache_dir: Path
) -> tuple[Stream, int]:
    """The training split as a Stream over its verified shards, and the samples lost.

    The rank and world size come from torch's launcher variables (RANK, WORLD_SIZE)."""
    paths, lost, manifest = shard_paths(base, "train", on_corrupt, cache_dir)
    counts = manifest["splits"]["train"]["classes"]
    return Stream(
        paths,
        manifest["splits"]["train"]["samples"] - lost,
        [counts[c] for c in manifest["classes"]],
        manifest["input_shape"],
        spec.workers,
        spec.prefetch,
        spec.shuffle_buffer,
        spec.resampled,
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
    ), lost


def load_training_splits(
    shards: ArtifactRef | str, on_corrupt: str, loader: LoaderSpec | None = None
) -> tuple[dict[str, Split | Stream], int]:
    """train (in memory or streamed, as the loader spec says) and val (in memory), skipping
    corrupt shards when told to; also the count of samples lost."""
    loader = loader or LoaderSpec(mode="memory")
    base = shards.path if isinstance(shards, ArtifactRef) else shards
    if isinstance(shards, ArtifactRef) and loader.mode == "stream":  # an s3:// store's shards
        base = shards_url(shards.path.parent.parent, shards.fingerprint) or base  # (cache_dir)
    cache_dir = Path(loader.cache_dir) if loader.cache_dir else DEFAULT_CACHE
    stream, lost = training_stream(base, loader, on_corrupt, cache_dir)
    in_memory = loader.mode == "memory" or (
        loader.mode == "auto"
        and sum(Path(p).stat().st_size for p in stream.paths) <= loader.memory_limit_mb * 2**20
    )
    x, y, missing = read_split_checked(base, "val", on_corrupt, cache_dir)
    val = Split.from_arrays(x, y)
    if in_memory:
        x, y, w = read_paths(stream.paths, stream.input_shape)
        return {"train": Split.from_arrays(x, y, w), "val": val}, lost + missing
    return {"train": stream, "val": val}, lost + missing


def resume_folder(
    store: Store, shards: ArtifactRef, model: Any, train: TrainSpec, seed: int
) -> Path:
    """Where an interrupted training of exactly these inputs left its checkpoints."""
    inputs = json.dumps(
        {
            "shards": shards.fingerprint,
            "model": model.model_dump(mode="json"),
            # (not the world size: a run on another one finds the folder and is told)
            "train": train.model_dump(mode="json", exclude={"distributed"}),
            "seed": seed,
        },
        sort_keys=True,
    )
    return store.root / "resume" / hashlib.sha256(inputs.encode()).hexdigest()[:24]


@contextmanager
def held_alone(folder: Path, logger: logging.Logger | logging.LoggerAdapter) -> Iterator[None]:
    """Hold the resume folder's lock (`<folder>.lock` beside it) while the block runs, so that
    two runs training the same inputs on one store never share its checkpoints: the second
    waits for the first, then trains (or resumes a run that died) alone. The lock is flock's:
    the kernel releases it when its holder dies, even by kill -9."""
    lock = folder.with_name(folder.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:  # the file stays: unlinking it would let two hold it
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info(
                "waiting for another run that is training the same model on the same "
                "data in this store (it holds %s)",
                lock,
            )
            fcntl.flock(handle, fcntl.LOCK_EX)
            logger.info("the other run's training is over; training here")
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def resume_point(folder: Path, logger: logging.Logger | logging.LoggerAdapter) -> dict | None:
    """The state an interrupted training left in `folder`: its newest intact checkpoint, or
    None to train from the start. When no checkpoint there is usable, the folder is set aside
    (renamed, named in a warning) so that no rerun dead-ends on it. Logs where training
    starts, in every case."""
    last = folder / "last.pt"
    if not checkpoint.rotation(last):
        say_start(sharded_point(folder), folder, logger)
        return None
    try:
        saved = load_resumable(last)
    except ArtifactError as exc:
        aside = checkpoint.set_aside(folder)
        logger.warning(
            "%s. The folder is set aside as %s (its files are kept, to look at or "
            "delete) and training starts from the beginning",
            exc,
            aside,
        )
        say_start(None, folder, logger)
        return None
    say_start(saved, folder, logger)
    return saved


def sharded_point(folder: Path) -> dict | None:
    """fsdp's ranks resume from their own checkpoint folder, not last.pt (engine.fsdp)."""
    if not any(folder.glob("last.dcp*")):
        return None
    from trainflow.engine import fsdp

    return fsdp.resume_point(folder)


def say_start(
    saved: dict | None, folder: Path, logger: logging.Logger | logging.LoggerAdapter
) -> None:
    """One line on where training starts: the checkpoint it resumes, or epoch 1."""
    if saved is None:
        logger.info("no checkpoint yet: starting from epoch 1")
        return
    epoch = saved["epoch"] + (0 if saved["position"] else 1)  # mid-epoch: that one again
    logger.warning("resuming from epoch %d (step %d) of %s", epoch, saved["steps"], folder)


def fitted_spec(train: TrainSpec) -> TrainSpec:
    """The train section the loop runs: as given, or for fit_on: train+validation (whose
    training part the data flow pooled, tasks/pool.py) fit_epochs epochs, no early stopping."""
    if train.fit_on != POOLED:
        return train
    epochs = train.fit_epochs or train.epochs
    return train.model_copy(update={"epochs": epochs, "early_stopping": None})


def held_out_none(val: Split) -> Split:
    """No validation rows: the pooled training part holds them, so a score on them would
    pick an epoch by rows the model trained on. Without a score the loop keeps its last
    epoch (engine.loop.fit), and the metrics rows carry val_loss NaN."""
    return Split.from_arrays(val.x[:0].numpy(), val.y[:0].numpy())


def train_ranks(
    staging: Path,
    shards: ArtifactRef,
    model: Any,
    train: TrainSpec,
    seed: int,
    data: dict[str, Split | Stream],
    resume_dir: Path,
    saved: dict | None,
) -> FitResult:
    """train.distributed: torchrun starts the ranks on a job file (engine.ddp); each reads its
    own shards and trains through the one loop; rank 0 writes into `staging`."""
    spec, device = train.distributed, resolve_device(train.device).type
    assert spec is not None
    if spec.strategy != "parameter_server":  # (it counts its trainers: spec.distributed)
        ddp.check_ranks(spec, device)
    loader = train.loader
    cache = Path(loader.cache_dir) if loader.cache_dir else DEFAULT_CACHE
    stream, _ = training_stream(shards.path, loader, train.on_corrupt, cache)
    where = {
        "shards": shards.path,
        "cache_dir": cache,
        "on_corrupt": train.on_corrupt,
        "pooled": train.fit_on == POOLED,
        "staging": staging,
        "resume_dir": resume_dir,
        "resume": saved is not None,
        "device": device,
    }
    with tempfile.TemporaryDirectory(prefix="trainflow-ddp-") as work:
        streamed = isinstance(data["train"], Stream)
        if spec.strategy == "pipeline":  # a model it cannot cut is refused before any rank
            pipeline_parallel.check(model, spec.world_size, shards.data_schema, streamed)
        job = ddp.job(train, model, seed, stream, streamed, shards.data_schema, where)
        job["work"] = work
        entry = RANK_MODULES[spec.strategy].__name__
        out = ddp.launch(spec, job, Path(work), job["threads"], entry)
        return FitResult(**out)


# The module each strategy's ranks run (imported here: its code is in this task's cache key).
RANK_MODULES = {
    "ddp": ddp_worker,
    "fsdp": ddp_worker,  # (the same rank: engine.ddp.World shards the model instead)
    "pipeline": pipeline_worker,
    "parameter_server": ps_worker,
}


def best_figures(task: str) -> tuple[str, ...]:
    """The best epoch's validation figures the model artifact's meta carries."""
    if task == "regression":
        return ("val_loss", "val_rmse", "val_mae", "val_r2")
    return ("val_accuracy", "val_loss")


@task(name="train", **CACHED)
def train_model(
    shards: ArtifactRef, model: Any, train: TrainSpec, seed: int, store: str
) -> ArtifactRef:
    """Train a model; the artifact holds best.pt, last.pt, metrics.jsonl and model.json."""
    logger = run_logger()
    data, lost = load_training_splits(shards, train.on_corrupt, train.loader)
    if lost:
        logger.warning(
            "%d training/validation samples lost to corrupt shards (on_corrupt: skip)", lost
        )
    given, train = train, fitted_spec(train)  # `given`: as the spec says (the resume key)
    if train.fit_on == POOLED:
        val = data["val"]
        assert isinstance(val, Split)  # (validation is always read into memory)
        data["val"] = held_out_none(val)

    progress = Progress("train-progress", f"training: up to {train.epochs} epochs")
    task = shards.data_schema.get("task", "classification")
    figure = "val_rmse" if task == "regression" else "val_accuracy"  # in the log line

    def log_epoch(row: dict) -> None:
        progress.update(row["epoch"] / train.epochs)
        logger.info(
            "epoch %(epoch)d  train_loss %(train_loss).4f  val_loss %(val_loss).4f  "
            f"{figure} %({figure}).4f  (%(seconds).2fs, %(samples_per_s).0f samples/s)",
            row,
        )

    target = Store(store)
    resume_dir = resume_folder(target, shards, model, given, seed)
    with held_alone(resume_dir, logger), target.writer("model") as staging:
        saved = resume_point(resume_dir, logger)
        ddp.check_world(saved, train.distributed, resume_dir)  # exact resume: same world size
        if train.distributed:  # the ranks train (torchrun); rank 0 writes into staging
            result = train_ranks(staging, shards, model, train, seed, data, resume_dir, saved)
        else:
            _, result = train_into(
                staging,
                model,
                train,
                seed,
                data,
                shards.data_schema["input_shape"],
                shards.data_schema["classes"],
                log_epoch,
                resume_dir,
                shards.data_schema.get("aux_targets"),
                saved,
                task,
            )
        progress.update(1.0)  # early stopping ends before the last epoch
        best = result.history[result.best_epoch - 1]
        held_out = train.fit_on != POOLED  # else no validation score: the last epoch's model
        return target.commit(
            staging,
            "model",
            count=len(data["train"]),
            schema=shards.data_schema,
            meta={
                "best_epoch": result.best_epoch,
                "epochs_run": len(result.history),
                "samples_lost": lost,
                "batch_size": result.batch_size,
                "stopped_early": result.stopped_early,
                **{f: best.get(f) if held_out else None for f in best_figures(task)},
                "fit_on": train.fit_on,
                "compute": json.loads((staging / "model.json").read_text())["compute"],
            },
        )  # the threads and precision used
