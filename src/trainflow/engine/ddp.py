"""Data-parallel training (train.distributed: ddp) on torchrun and torch.distributed.

The train task writes a job file and starts the ranks with torchrun (`launch`); each rank runs
trainflow.engine.ddp_worker, which trains through the one loop (engine.loop.fit). The loop
sees the rank only through `World`: setup wraps the model in DistributedDataParallel and
takes this rank's share of each global batch, outputs write on rank 0 alone, and the epoch's
training loss is the mean over every rank's rows.

The rule for the batch: train.batch_size is the global batch. Each in-memory global batch
(the one-process run's, drawn by the same generator) is cut into nproc_per_node equal
contiguous parts, one per rank, and the gradients are summed weighted by each part's share
of the batch's rows (`World.wrap`'s comm hook; DDP's own hook averages, which is the same
for equal parts, and not for an epoch's last, uneven batch): the one-process mean gradient,
up to the order of float additions, wherever the loss is an unweighted mean (with class or
sample weights each rank normalizes by its own rows' weights: close, not equal). A streamed
loader gives each rank its own shards and batches of batch_size / nproc_per_node rows (the
same global batch size, another order). An epoch's last batch needs at least one row per rank.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from trainflow.errors import SpecError, TrainflowError
from trainflow.spec.distributed import Distributed

STRATEGY = "TRAINFLOW_DISTRIBUTED_STRATEGY"  # the ranks' environment: which strategy they run


@dataclass
class World:
    """This process's place among the ranks: rank 0 of 1 without torch.distributed; `share`
    is this rank's fraction of the rows of the global batch running now."""

    rank: int = 0
    size: int = 1
    share: float = 1.0
    device: torch.device = torch.device("cpu")  # where its collectives' tensors live (NCCL: CUDA)
    strategy: str = "ddp"  # train.distributed.strategy, told to the ranks by `launch`

    @classmethod
    def current(cls) -> World:
        if dist.is_available() and dist.is_initialized():
            strategy, size = os.environ.get(STRATEGY, "ddp"), dist.get_world_size()
            # (`local` sets the share of each in-memory batch; a stream's are equal parts)
            return cls(dist.get_rank(), size, 1 / size, strategy=strategy)
        return cls()

    @property
    def sharded(self) -> bool:
        """fsdp: parameters, gradients and optimizer state sharded (engine.fsdp), on any
        number of ranks (one, too: it reads a checkpoint of more)."""
        return self.strategy == "fsdp"

    @property
    def writes(self) -> bool:
        """Rank 0 alone writes checkpoints, metrics and artifacts."""
        return self.rank == 0

    def shard(self, model: nn.Module, device: torch.device) -> None:
        """fsdp: shard `model` in place (before the optimizer takes its parameters)."""
        if self.sharded:
            from trainflow.engine import fsdp  # (only ranks of fsdp load FSDP and DCP)

            self.device = device
            fsdp.shard(model, device, lambda: self.share * self.size)

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """DistributedDataParallel around `model` (its backward averages the gradients);
        one process, or fsdp (sharded by `shard`), trains `model` itself."""
        if self.size == 1 or self.sharded:
            return model
        self.device = device
        ids = [torch.cuda.current_device()] if device.type == "cuda" else None  # (ddp_worker)
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        wrapped.register_comm_hook(self, weighted_sum)
        return wrapped

    def local(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """This rank's contiguous share of a global batch (x, y and any weights)."""
        if self.size == 1:
            return batch
        parts = tuple(column.tensor_split(self.size)[self.rank] for column in batch)
        self.share = len(parts[0]) / max(len(batch[0]), 1)
        return parts

    def mean_loss(self, loss_sum: torch.Tensor, seen: int, local: float) -> float:
        """The epoch's training loss over every rank's rows (`local`: this rank's mean)."""
        if self.size == 1:
            return local
        total = torch.tensor([loss_sum.item(), float(seen)], dtype=torch.float64)
        total = total.to(loss_sum.device)  # (NCCL reduces CUDA tensors only)
        dist.all_reduce(total)
        return float(total[0] / total[1].clamp_min(1))

    def agree(self, flag: bool) -> bool:
        """Rank 0's `flag` on every rank (whether a mid-epoch checkpoint is due)."""
        told = torch.tensor([int(flag)], device=self.device)
        dist.broadcast(told, 0)
        return bool(told.item())

    def pooled(self, position: Any) -> dict | None:
        """A mid-epoch position's loss sum and row count over every rank, for the
        checkpoint (one process: None, the position is saved as it is)."""
        if self.size == 1:
            return None
        sums = [position.loss_sum.item(), float(position.seen)]
        total = torch.tensor(sums, dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return {"loss_sum": total[0].float().cpu(), "seen": int(total[1])}

    def resumed(self, position: Any) -> None:
        """After a mid-epoch resume every rank holds the pooled sums: rank 0 keeps them."""
        if self.rank:
            position.loss_sum, position.seen = torch.zeros(()), 0


def weighted_sum(world: World, bucket):  # (unannotated: DDP checks the real classes)
    """DDP's gradient reduction of a dist.GradBucket: each rank's mean gradient times its
    share of the rows, summed over the ranks (the mean gradient over all the batch's rows)."""
    grads = bucket.buffer().mul_(world.share)
    work = dist.all_reduce(grads, async_op=True)
    assert work is not None
    return work.get_future().then(lambda done: done.value()[0])


def backend(spec: Distributed, device: str) -> str:
    """distributed.backend: auto is NCCL on CUDA, gloo on CPU."""
    if spec.backend != "auto":
        return spec.backend
    return "nccl" if device == "cuda" else "gloo"


def check_ranks(spec: Distributed, device: str) -> None:
    """nproc_per_node against what this machine has: CUDA devices, or usable CPU cores."""
    if spec.nnodes > 1:
        return  # (every node checks its own at its launch)
    if device == "cuda":
        have, what = torch.cuda.device_count(), "CUDA devices"
    else:
        have, what = len(os.sched_getaffinity(0)), "usable CPU cores"
    if spec.nproc_per_node > have:
        raise SpecError(
            "train.distributed",
            [
                (
                    "train.distributed.nproc_per_node",
                    f"{spec.nproc_per_node} ranks is more than this machine's {have} {what}; "
                    f"set nproc_per_node to at most {have}",
                )
            ],
        )


def check_world(saved: dict | None, spec: Distributed | None, folder: Path) -> None:
    """Exact resume holds for the same world size only: refuse another one, naming both."""
    if saved is None or (spec is not None and spec.strategy == "fsdp"):
        return  # (fsdp resumes its own checkpoint folder on any world size: engine.fsdp)
    was, now = int(saved.get("world_size", 1)), spec.nproc_per_node * spec.nnodes if spec else 1
    if was != now:
        raise TrainflowError(
            f"cannot resume the interrupted training in {folder}: it ran on {was} rank(s), "
            f"this run has {now} (exact resume needs the same world size). Rerun with "
            f"train.distributed giving {was} rank(s) to resume it, or delete {folder} to "
            "train afresh"
        )


def command(spec: Distributed, job: Path, entry: str) -> list[str]:
    """torchrun's argv (no shell): a standalone rendezvous, or the given c10d endpoint."""
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={spec.nproc_per_node}",
    ]
    if spec.rdzv_endpoint is None:
        argv.append("--standalone")
    else:
        argv += [f"--nnodes={spec.nnodes}", "--rdzv_backend=c10d"]
        wait = join_seconds()  # (torchrun's own: 600 s to join, 60 s to reach the store)
        argv += [f"--rdzv_endpoint={spec.rdzv_endpoint}"]
        argv += [f"--rdzv_conf=join_timeout={wait},read_timeout={wait}"]
    return [*argv, "-m", entry, str(job)]


RDZV_TIMEOUT = "TRAINFLOW_RDZV_TIMEOUT_S"  # how long the nodes may take to meet


def join_seconds() -> int:
    """TRAINFLOW_RDZV_TIMEOUT_S: the seconds a node waits at the rendezvous for the others
    (and to reach its store), 300 unless set."""
    text = os.environ.get(RDZV_TIMEOUT, "300")
    if not text.isdigit() or int(text) < 1:
        raise TrainflowError(f"{RDZV_TIMEOUT} must be a whole number of seconds >= 1, got {text!r}")
    return int(text)


def unmet(spec: Distributed, work: Path, output: str) -> str | None:
    """The rendezvous at rdzv_endpoint that did not answer, or not every node joined within
    the timeout (torchrun failed before any rank started), named; else None."""
    if spec.rdzv_endpoint is None or any(work.glob("rank*.err")):
        return None
    signs = ("RendezvousTimeoutError", "DistStoreError", "RendezvousConnectionError")
    if not any(sign in output for sign in signs):
        return None
    return (
        f"the rendezvous at train.distributed.rdzv_endpoint {spec.rdzv_endpoint} did not "
        f"gather its {spec.nnodes} nodes within {join_seconds()} s (the endpoint does not "
        "answer, or the other nodes did not join): check the host:port is reachable from "
        f"every node and start the others, or raise {RDZV_TIMEOUT}"
    )


def launch(spec: Distributed, job: dict[str, Any], work: Path, threads: int, entry: str) -> dict:
    """Run the ranks (module `entry`, trainflow.engine.ddp_worker) on `job` (written to
    work/job.json), wait for them, and return rank 0's result; a failed rank becomes one
    TrainflowError with its last error lines."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / "job.json"
    path.write_text(json.dumps(job))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), STRATEGY: spec.strategy}
    with open(work / "torchrun.log", "w+") as log:  # (a file: no pipe fills while we wait)
        ranks = subprocess.Popen(
            command(spec, path, entry),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=stop_with_parent,  # noqa: PLW1509 (a prctl only, before exec)
        )
        follow_epochs(ranks, work / EPOCHS)
        log.seek(0)
        output = log.read()
    if ranks.returncode:
        raise TrainflowError(unmet(spec, work, output) or failure(work, spec, output))
    if not (work / "result.json").is_file() and spec.nnodes > 1:
        raise OtherNodeWrites(
            f"this node's {spec.nproc_per_node} rank(s) trained in the {spec.nnodes}-node "
            f"rendezvous at {spec.rdzv_endpoint}, and the node holding rank 0 wrote the model "
            "there: this node has no model to store (its run stops here; node 0's goes on)"
        )
    return json.loads((work / "result.json").read_text())


class OtherNodeWrites(TrainflowError):
    """A multi-node training ended well, and another node (rank 0's) wrote its model."""


EPOCHS = "epochs.jsonl"  # rank 0 appends each epoch's row (ddp_worker) as the task follows it


def follow_epochs(ranks: subprocess.Popen, rows: Path) -> None:
    """Until the ranks exit, log each epoch row rank 0 appends to `rows` in the train task's
    log, as a one-process training logs them."""
    from trainflow.logs import run_logger  # (the task's Prefect logger, or "trainflow")

    logger, done = run_logger(), 0
    while True:
        ended = ranks.poll() is not None
        lines = rows.read_text().splitlines(keepends=True) if rows.is_file() else []
        for line in lines[done:]:
            if not line.endswith("\n"):  # (rank 0 is writing it)
                break
            done += 1
            logger.info(
                "epoch %(epoch)d  train_loss %(train_loss).4f  val_loss %(val_loss).4f  "
                "val_accuracy %(val_accuracy).4f  (%(seconds).2fs, %(samples_per_s).0f "
                "samples/s)",
                json.loads(line),
            )
        if ended:
            return
        time.sleep(0.5)


def stop_with_parent() -> None:
    """torchrun gets SIGTERM when the task's process dies (killed, even by SIGKILL), and
    then stops its ranks: none outlives the task to write into a folder a rerun resumes."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def failure(work: Path, spec: Distributed, output: str) -> str:
    """The first rank to fail (its error file is the oldest; the others fail after it, when
    torchrun stops them or their peer's connection closes) and its last lines."""
    errors = sorted(work.glob("rank*.err"), key=lambda p: p.stat().st_mtime)
    if errors:
        rank = errors[0].stem.removeprefix("rank")
        lines = errors[0].read_text().strip().splitlines()[-6:]
    else:  # killed before it could write (a signal, out of memory): torchrun's own lines
        rank, lines = "?", output.strip().splitlines()[-6:]
    return (
        f"distributed training ({spec.strategy}, {spec.nproc_per_node} ranks per node) "
        f"failed on rank {rank}: " + "\n".join(lines)
    )


def job(
    train: Any,
    model: Any,
    seed: int,
    stream: Any,
    streamed: bool,
    schema: dict,
    where: dict[str, Any],
) -> dict[str, Any]:
    """The job file's inputs: the spec sections, the shards (`stream`: the training split's
    verified paths and loader knobs) and the folders in `where` (shards, cache_dir,
    on_corrupt, pooled, staging, resume_dir, resume, work). threads and precision `auto` are
    fixed before the ranks start: one thread each (they share the cores), and fp32, since a
    probe on each rank could choose differently and the ranks must train alike."""
    if streamed and not train.loader.resampled:
        raise TrainflowError(
            "train.distributed with a streamed training split needs train.loader.resampled: "
            "true (each rank then gets the same number of batches per epoch; without it a "
            "rank that runs out first leaves the others waiting), or train.loader.mode: memory"
        )
    if train.distributed.strategy == "fsdp":  # (before any rank starts)
        from trainflow.engine import fsdp
        from trainflow.engine.model_folder import build_model

        net = build_model(
            model, schema["input_shape"], len(schema["classes"]), schema.get("aux_targets")
        )
        fsdp.check_shardable(net, train.distributed.world_size)
    threads = train.threads if train.threads != "auto" else 1
    precision = train.precision if train.precision != "auto" else "fp32"
    fixed = train.model_copy(update={"threads": threads, "precision": precision})
    return {
        "train": fixed.model_dump(mode="json"),
        "model": model.model_dump(mode="json"),
        "seed": seed,
        "stream": {k: v for k, v in vars(stream).items() if k not in ("rank", "world_size")},
        "streamed": streamed,
        "input_shape": schema["input_shape"],
        "classes": schema["classes"],
        "aux_targets": schema.get("aux_targets"),
        "backend": backend(train.distributed, where.pop("device")),
        "threads": threads,
        **{k: str(v) if isinstance(v, Path) else v for k, v in where.items()},
    }
