"""One rank of a data-parallel training, ddp or fsdp (`python -m trainflow.engine.ddp_worker
job.json`, started by torchrun from engine.ddp.launch): joins the process group, reads its
data, trains through engine.training.train_into (the one loop), and on rank 0 writes
result.json for the task. A failure leaves rank<N>.err (its traceback's last lines) beside the
job for the task's error message."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
from pydantic import TypeAdapter

from trainflow import registry
from trainflow.engine.data import Split
from trainflow.engine.ddp import EPOCHS, World
from trainflow.engine.state import load_resumable
from trainflow.engine.training import train_into
from trainflow.loader import Stream
from trainflow.shards import read_paths, read_split_checked
from trainflow.spec.train import TrainSpec


def read_data(job: dict, world: World) -> dict[str, Split | Stream]:
    """Training rows: streamed, this rank's shards (loader.Stream splits them by rank); in
    memory, every shard (each rank takes its share of every global batch). Validation: all."""
    stream = job["stream"]
    with whole_shards():
        if job["streamed"]:
            train: Split | Stream = Stream(
                **{**stream, "rank": world.rank, "world_size": world.size}
            )
        else:
            train = Split.from_arrays(*read_paths(stream["paths"], stream["input_shape"]))
        x, y, _ = read_split_checked(
            job["shards"], "val", job["on_corrupt"], Path(job["cache_dir"])
        )
    val = Split.from_arrays(x, y)
    if job["pooled"]:  # train.fit_on: train+validation (tasks/train.py held_out_none)
        val = Split.from_arrays(x[:0], y[:0])
    return {"train": train, "val": val}


@contextmanager
def whole_shards() -> Iterator[None]:
    """Hide torchrun's RANK and WORLD_SIZE while whole splits are read: webdataset reads them
    and refuses a reader without a node splitter (the stream splits by its own rank)."""
    saved = {name: os.environ.pop(name) for name in ("RANK", "WORLD_SIZE")}
    try:
        yield
    finally:
        os.environ.update(saved)


def run(job: dict, data: dict[str, Split | Stream]) -> None:
    world = World.current()
    train = TrainSpec.model_validate(job["train"])
    model = TypeAdapter(registry.union(registry.MODELS)).validate_python(job["model"])
    # rank 0 trains into the task's staging folder; the others' model.json goes to a
    # scratch folder that is dropped (their Outputs write nothing: engine.outputs)
    scratch = tempfile.TemporaryDirectory(prefix=f"trainflow-rank{world.rank}-")
    folder = Path(job["staging"]) if world.writes else Path(scratch.name)
    resume_dir = Path(job["resume_dir"])
    resume = load_resumable(resume_dir / "last.pt") if job["resume"] else None
    if world.sharded:  # fsdp: its own checkpoint folder, of any world size (engine.fsdp)
        from trainflow.engine import fsdp

        resume = fsdp.resume_point(resume_dir)
    rows = Path(job["work"]) / EPOCHS  # the task logs each as it comes (engine.ddp)
    _, result = train_into(
        folder,
        model,
        train,
        job["seed"],
        data,
        job["input_shape"],
        job["classes"],
        (lambda row: append_row(rows, row)) if world.writes else None,
        resume_dir,
        job["aux_targets"],
        resume,
    )
    scratch.cleanup()
    if world.writes:
        fields = ("history", "best_epoch", "stopped_early", "batch_size")
        out = {name: getattr(result, name) for name in fields}
        (Path(job["work"]) / "result.json").write_text(json.dumps(out))


def append_row(path: Path, row: dict) -> None:
    """One epoch's row, written whole in one call (the task reads only complete lines)."""
    with open(path, "a") as handle:
        handle.write(json.dumps(row) + "\n")


def watch_parent() -> None:
    """Exit when torchrun's agent is gone (killed by SIGKILL, it cannot stop its ranks)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="trainflow-parent-watch").start()


def main(path: str) -> None:
    watch_parent()
    job = json.loads(Path(path).read_text())
    rank = int(os.environ["RANK"])  # torchrun's
    torch.set_num_threads(job["threads"])
    with reported(job, rank):
        data = read_data(job, World(rank, int(os.environ["WORLD_SIZE"])))
        if job["backend"] == "nccl":  # one GPU a rank: "cuda" is then this rank's device
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group(job["backend"])
        run(job, data)


@contextmanager
def reported(job: dict, rank: int) -> Iterator[None]:
    """A rank's failure leaves rank<N>.err beside the job (its traceback's last lines, for
    the task's one message); the process group is closed either way. Every strategy's rank
    module runs its work inside this."""
    try:
        yield
    except BaseException:
        lines = traceback.format_exc().strip().splitlines()[-8:]
        (Path(job["work"]) / f"rank{rank}.err").write_text("\n".join(lines) + "\n")
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
