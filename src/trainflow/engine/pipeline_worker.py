"""One rank of a pipeline-parallel training (`python -m trainflow.engine.pipeline_worker
job.json`, started by torchrun from engine.ddp.launch): reads the data, builds the whole
model as a one-process run would (same seed, same initial weights), keeps its own stage of
the cut (engine.pipeline_parallel), joins the process group and trains its stage; rank 0
also holds the assembled model, validates it each epoch and writes the model folder in a
one-process run's format, and result.json for the task. A failure leaves rank<N>.err."""

from __future__ import annotations

import json
import os
import shutil
import sys
from contextlib import ExitStack
from pathlib import Path

import torch
import torch.distributed as dist
from pydantic import TypeAdapter

from trainflow import registry
from trainflow.engine import checkpoint, compute, transfer
from trainflow.engine import pipeline_parallel as pp
from trainflow.engine.augment import Augmenter, preview_png
from trainflow.engine.checks import check_model_and_training
from trainflow.engine.data import Split
from trainflow.engine.ddp import World
from trainflow.engine.ddp_worker import read_data, reported, watch_parent
from trainflow.engine.model_folder import build_model, describe
from trainflow.engine.monitor import check_monitor
from trainflow.engine.outputs import Outputs
from trainflow.engine.setup import deterministic, resolve_device, setup
from trainflow.engine.state import TrainingState
from trainflow.engine.training import optimizer_factory, preview_images, probe_rows
from trainflow.errors import TrainflowError
from trainflow.loader import Stream
from trainflow.spec.train import TrainSpec


def prepare(job: dict, data: dict[str, Split | Stream], rank: int, size: int) -> dict:
    """Everything this rank trains with, built before the process group exists (so that
    engine.setup sees one process and wraps nothing): the whole model from the seed, the
    cut, this rank's stage, its optimizer, schedule and the run's components."""
    if job["resume"] and not Checkpoints.left(Path(job["resume_dir"]), rank):
        raise TrainflowError(
            f"cannot resume the interrupted training in {job['resume_dir']}: no pipeline "
            f"run left it (stage {rank}'s checkpoint is not there); rerun with the strategy "
            "that left it to resume it, or delete the folder to train afresh"
        )
    train = TrainSpec.model_validate(job["train"])
    model = TypeAdapter(registry.union(registry.MODELS)).validate_python(job["model"])
    shape, classes = job["input_shape"], job["classes"]
    check_model_and_training(model, train, shape, job["aux_targets"])
    torch.manual_seed(job["seed"])  # as engine.training.train_into: the same initial weights
    net = build_model(model, shape, len(classes))
    assert isinstance(net, torch.nn.Sequential)  # (pipeline_parallel.check, in the task)
    if train.pretrained:
        given = transfer.read_state_dict(train.pretrained.path, "train.pretrained.path")
        transfer.warm_start(net, given, train.pretrained.replace_head, "train.pretrained")
    val = data["val"]
    assert isinstance(val, Split)  # (validation is always in memory)
    choice = compute.choose(net, train, probe_rows(data), resolve_device(train.device))
    parts = pp.cut(net, size)
    shapes = pp.boundary_shapes(net, parts, shape)
    stage = pp.stage_module(net, parts[rank])
    whole = net if rank == 0 else None  # (the other ranks drop every layer but their own)
    build = optimizer_factory(train)
    run, state = setup(
        whole or stage,
        data["train"],
        val,
        compute.applied(train, choice),
        job["seed"],
        lambda _: build(stage),  # this stage's parameters only
    )
    if whole is not None:  # (rank 0 validates)
        check_monitor(run, state)
    spec = train.distributed
    assert spec is not None
    pipe = pp.Pipeline(stage, rank, shapes, spec.microbatches, spec.schedule, run.update)
    return {
        "train": train,
        "model": model,
        "choice": choice,
        "parts": parts,
        "whole": whole,
        "run": run,
        "state": state,
        "pipe": pipe,
    }


class Checkpoints:
    """Each rank's state at the end of its epochs (train.checkpoint_every, and the last), in
    the resume folder: rank 0's as last.pt (the whole model, its stage's optimizer, the run's
    record, the world size: what the train task's resume finds and checks), the others' as
    stage<k>.pt, each a rotation of train.keep_last files."""

    def __init__(self, folder: Path, rank: int, size: int, spec: TrainSpec):
        self.path = folder / Checkpoints.name(rank)
        self.rank, self.size, self.spec, self.saved = rank, size, spec, 0

    @staticmethod
    def name(rank: int) -> str:
        return "last.pt" if rank == 0 else f"stage{rank}.pt"

    @staticmethod
    def left(folder: Path, rank: int) -> bool:
        """Whether a pipeline run left this rank's checkpoint in `folder`."""
        found = checkpoint.rotation(folder / Checkpoints.name(rank))
        return bool(found) and (rank > 0 or "pipeline_stage" in checkpoint.load(found[0]))

    def save(self, state: TrainingState, last: bool, outputs: Outputs | None) -> None:
        every = self.spec.checkpoint_every
        if self.saved != state.epoch and (last or (every and state.epoch % every == 0)):
            payload = {**state.state_dict(), "world_size": self.size, "pipeline_stage": self.rank}
            checkpoint.save_rotating(self.path, payload, self.spec.keep_last)
            self.saved = state.epoch
        if outputs is not None:  # (its own last.pt, of one process, is then not written)
            outputs.saved_epoch = self.saved

    def resume(self, state: TrainingState) -> None:
        """Continue from the newest epoch every rank saved (a kill between two ranks' writes
        leaves one a rotation ahead: it takes its previous file)."""
        newest = checkpoint.load_latest_good(self.path, TrainingState.PIECES)
        common = torch.tensor([int(newest["epoch"])], device=pp.near())
        dist.all_reduce(common, op=dist.ReduceOp.MIN)
        for candidate in checkpoint.rotation(self.path):
            saved = newest if candidate == self.path else checkpoint.load(candidate)
            if saved["epoch"] == common.item():
                state.resume(saved)
                self.saved = state.epoch
                return
        raise TrainflowError(
            f"cannot resume from {self.path}: no checkpoint of epoch {common.item()}, the "
            "newest every stage saved; delete the folder to train afresh"
        )


def train_stage(job: dict, data: dict[str, Split | Stream], ready: dict) -> None:
    """Train (the process group is up); rank 0 writes the model folder and result.json."""
    run, state, pipe, whole = ready["run"], ready["state"], ready["pipe"], ready["whole"]
    train, model, parts = ready["train"], ready["model"], ready["parts"]
    report = pp.stage_report(pipe.stage, state.optimizer, parts[pipe.index])
    folder, work = Path(job["staging"]), Path(job["resume_dir"])
    work.mkdir(parents=True, exist_ok=True)
    saves = Checkpoints(work, pipe.index, pipe.count, train)
    if job["resume"]:
        saves.resume(state)
    with ExitStack() as stack:
        stack.enter_context(compute.threads_set(ready["choice"].threads))
        stack.enter_context(deterministic(train.deterministic))
        outputs = stack.enter_context(Outputs(work, run, state)) if whole else None
        if outputs is not None:
            outputs.every = 0  # (the epochs' checkpoints are Checkpoints', with the stage's)
        result = pp.fit(
            run, state, pipe, whole, parts, outputs, lambda last: saves.save(state, last, outputs)
        )
    dist.barrier()  # every stage's last checkpoint is written: the folder can go
    if whole is None:
        return
    for name in ("metrics.jsonl", "last.pt", "best.pt"):
        shutil.copy2(work / name, folder / name)
    shutil.rmtree(work)
    whole.load_state_dict(result.best_state)
    shape = job["input_shape"]
    if train.augment and len(shape) == 3 and train.augment.transforms:
        augmenter = Augmenter(train.augment, job["seed"], True)
        preview = preview_png(augmenter, preview_images(data["train"]))
        (folder / "augment_preview.png").write_bytes(preview)
    d = train.distributed
    describe(
        folder,
        model.model_dump(mode="json"),
        shape,
        job["classes"],
        best_epoch=result.best_epoch,
        epochs_run=len(result.history),
        stopped_early=result.stopped_early,
        batch_size=result.batch_size,
        compute=compute.record(ready["choice"]),
        pipeline={"schedule": d.schedule, "microbatches": d.microbatches, "stages": report},
    )
    fields = ("history", "best_epoch", "stopped_early", "batch_size")
    out = {name: getattr(result, name) for name in fields}
    (Path(job["work"]) / "result.json").write_text(json.dumps(out))


def main(path: str) -> None:
    watch_parent()
    job = json.loads(Path(path).read_text())
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])  # torchrun's
    torch.set_num_threads(job["threads"])
    if job["backend"] == "nccl":  # one GPU a rank ("cuda" then names this rank's)
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    with reported(job, rank):
        data = read_data(job, World(rank, size))
        ready = prepare(job, data, rank, size)
        dist.init_process_group(job["backend"])
        train_stage(job, data, ready)


if __name__ == "__main__":
    main(sys.argv[1])
