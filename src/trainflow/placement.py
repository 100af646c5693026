"""Where each task of a pipeline run ran: host, process, runner worker, device, threads.

A Prefect completion hook (`Recorder`, added by `task_options.step` while a pipeline run
records) writes one small JSON file per task run, in the process that ran it: a Dask worker
for the data steps of `runner.data`, the flow's own process for training. The records live
beside the run folders (`outputs.runs`), never in the store: they differ from run to run, and
an artifact (and so its fingerprint and cache key) must not. The report task reads them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The folder the current pipeline run records into (None: not recording).
_FOLDER: ContextVar[str | None] = ContextVar("trainflow_placement", default=None)
RECORDS = ".placement"  # under outputs.runs/<pipeline>/, one folder per run, while it runs


@contextmanager
def recording(runs: str, pipeline: str) -> Iterator[str]:
    """Record where each task of the block's run runs; yields the records' folder, which
    lasts as long as the block (the report task copies the records into the run folder)."""
    folder = (Path(runs) / pipeline / RECORDS / uuid.uuid4().hex[:16]).resolve()
    made = [p for p in (folder.parent, folder.parent.parent, folder.parents[2]) if not p.exists()]
    folder.mkdir(parents=True)
    token = _FOLDER.set(str(folder))
    try:
        yield str(folder)
    finally:
        _FOLDER.reset(token)
        shutil.rmtree(folder, ignore_errors=True)
        for made_here in made:  # a failed run leaves no empty folders of ours behind
            try:
                made_here.rmdir()
            except OSError:  # not empty: a run folder, or another run recording
                break


def current() -> str | None:
    return _FOLDER.get()


def recorder(name: str, trains: bool, data: bool, train: Any) -> Recorder | None:
    """The hook of task `name` while a pipeline run records (None when none does): training
    tasks resolve `train.device`; data steps and the others use the CPU."""
    folder = current()
    if folder is None:
        return None
    if not trains:
        return Recorder(folder, data=data)
    launched = ranks(train) if name == "train" else None  # the one task that starts ranks
    return Recorder(folder, train.device, augmentation(train), ranks=launched)


@dataclass(frozen=True)
class Recorder:
    """A task's completion hook. It travels with the task to a Dask worker (cloudpickle, by
    reference to this module), so it carries what it needs: the folder, how the task's
    device is chosen (`device`: train.device for training tasks; None for the others) and
    where a training task augments its batches (`augment`, from `augmentation`); `data`:
    a data step (polars' threads, where a scoring step counts torch's); `ranks`: the
    processes the train task starts (train.distributed, from `ranks`)."""

    folder: str
    device: str | None = None
    augment: str | None = None
    data: bool = False
    ranks: str | None = None

    def __call__(self, task: Any, task_run: Any, state: Any) -> None:
        record = {
            "task": task.name,
            "task_run": task_run.name,
            "state": state.name,
            "started": task_run.start_time.isoformat() if task_run.start_time else None,
            "ended": time.time(),  # a cached task has no start: records sort by their end
            **where(),
            "ranks": self.ranks,
            **device_of(self.device, self.data),
            "augmentation": self.augment,
            "tags": sorted(task.tags),  # the device tag a concurrency limit counts
        }
        folder = Path(self.folder)
        if not folder.is_dir():  # the run has ended, or a worker that does not share it
            return
        temporary = folder / f".{task_run.id}.tmp"
        temporary.write_text(json.dumps(record, sort_keys=True))
        os.replace(temporary, folder / f"{task_run.id}.json")


def where() -> dict[str, Any]:
    """The runner and worker of the calling process: a Dask worker (its address and name),
    else the flow's own process (the thread pool, or a task called inline)."""
    place = {"host": socket.gethostname(), "pid": os.getpid()}
    distributed = sys.modules.get("distributed")  # imported in every Dask worker
    if distributed is not None:
        try:
            worker = distributed.get_worker()
        except ValueError:  # not inside a worker: a client of one (the flow's process)
            pass
        else:
            named = f"{worker.address} (worker {worker.name}, pid {place['pid']})"
            return {**place, "runner": "dask", "worker": named}
    return {**place, "runner": "flow process", "worker": f"pid {place['pid']}"}


def device_of(requested: str | None, data: bool = False) -> dict[str, Any]:
    """The device a task used and how it was chosen: data and scoring steps use the CPU
    (polars' threads or torch's); a training task resolves train.device (auto: CUDA, then
    MPS, then CPU) exactly as the training engine does."""
    if requested is None:
        return {"device": "cpu", "requested": "cpu", "threads": cpu_threads(data)}
    import torch

    from trainflow.engine.setup import resolve_device

    try:
        device = resolve_device(requested).type
    except Exception:  # noqa: BLE001 - the task itself reported the device it could not use
        device = "unavailable"
    return {"device": device, "requested": requested, "threads": torch.get_num_threads()}


def cpu_threads(data: bool) -> int | None:
    """The threads of the library a CPU step computes with: polars' pool for a data step,
    torch's for the others (scoring, compressing), where the process has loaded it."""
    polars, torch = sys.modules.get("polars"), sys.modules.get("torch")
    if data:
        return polars.thread_pool_size() if polars is not None else None
    return torch.get_num_threads() if torch is not None else None


def read(folder: str | None) -> list[dict]:
    """The records of a run, in the order the tasks ended (unreadable ones skipped: a
    record is a report's figure, never a reason to fail the run)."""
    if not folder or not Path(folder).is_dir():
        return []
    records = []
    for path in Path(folder).glob("*.json"):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(records, key=lambda r: (r.get("ended") or 0.0, r.get("task_run", "")))


def augmentation(train: Any) -> str | None:
    """Where training batches are augmented (None: no augmentation): in the DataLoader's
    CPU worker processes when streamed with loader.workers, else in the training process."""
    augment = train.augment
    if augment is None or not (augment.transforms or augment.gaussian_noise):
        return None  # (mixup mixes whole batches in the training process)
    loader = train.loader
    workers = f"{loader.workers} CPU loader worker processes feeding the device"
    if loader.mode == "memory" or loader.workers == 0:
        why = "in memory" if loader.mode == "memory" else "loader.workers: 0"
        return f"in the training process ({why})"
    if loader.mode == "stream":
        return f"in {workers} (streamed)"
    return (
        f"in {workers} when the training shards exceed loader.memory_limit_mb "
        f"({loader.memory_limit_mb} MB) and stream, else in the training process"
    )


def ranks(train: Any) -> str | None:
    """The processes a distributed training starts beside the task's (None: it trains in
    the task's own process)."""
    d = train.distributed
    if d is None:
        return None
    nodes = f" on each of {d.nnodes} nodes" if d.nnodes > 1 else ""
    return f"{d.nproc_per_node} torchrun ranks ({d.strategy}){nodes}"
