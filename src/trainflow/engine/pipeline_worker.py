"""One rank of a pipeline-parallel training (`python -m trainflow.engine.pipeline_worker
job.json`, started by torchrun from engine.ddp.launch): reads the data, builds the whole
model as a one-process run would (same seed, same initial weights), keeps its own stage of
the cut (engine.pipeline_parallel), joins the process group and trains its stage; rank 0
also holds the assembled model, validates it each epoch and writes the model folder in a
one-process run's format, and result.json for the task. A failure leaves rank<N>.err."""

from __future__ import annotations

import json
import os
import sys
import traceback
from contextlib import ExitStack
from pathlib import Path

import torch
import torch.distributed as dist
from pydantic import TypeAdapter

from trainflow import registry
from trainflow.engine import compute, transfer
from trainflow.engine import pipeline_parallel as pp
from trainflow.engine.augment import Augmenter, preview_png
from trainflow.engine.checks import check_model_and_training
from trainflow.engine.data import Split
from trainflow.engine.ddp import World
from trainflow.engine.ddp_worker import read_data, watch_parent
from trainflow.engine.model_folder import build_model, describe
from trainflow.engine.monitor import check_monitor
from trainflow.engine.outputs import Outputs
from trainflow.engine.setup import deterministic, resolve_device, setup
from trainflow.engine.training import optimizer_factory, preview_images, probe_rows
from trainflow.errors import TrainflowError
from trainflow.loader import Stream
from trainflow.spec.train import TrainSpec


def prepare(job: dict, data: dict[str, Split | Stream], rank: int, size: int) -> dict:
    """Everything this rank trains with, built before the process group exists (so that
    engine.setup sees one process and wraps nothing): the whole model from the seed, the
    cut, this rank's stage, its optimizer, schedule and the run's components."""
    if job["resume"]:
        raise TrainflowError(
            f"a pipeline run does not resume: {job['resume_dir']} holds an interrupted "
            "training of these inputs under another strategy; rerun with that strategy to "
            "resume it, or delete the folder to train afresh with strategy: pipeline"
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


def train_stage(job: dict, data: dict[str, Split | Stream], ready: dict) -> None:
    """Train (the process group is up); rank 0 writes the model folder and result.json."""
    run, state, pipe, whole = ready["run"], ready["state"], ready["pipe"], ready["whole"]
    train, model, parts = ready["train"], ready["model"], ready["parts"]
    report = pp.stage_report(pipe.stage, state.optimizer, parts[pipe.index])
    folder = Path(job["staging"])
    with ExitStack() as stack:
        stack.enter_context(compute.threads_set(ready["choice"].threads))
        stack.enter_context(deterministic(train.deterministic))
        outputs = stack.enter_context(Outputs(folder, run, state)) if whole else None
        result = pp.fit(run, state, pipe, whole, parts, outputs)
    if whole is None:
        return
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
    try:
        data = read_data(job, World(rank, size))
        ready = prepare(job, data, rank, size)
        dist.init_process_group(job["backend"])
        train_stage(job, data, ready)
    except BaseException:
        lines = traceback.format_exc().strip().splitlines()[-8:]
        (Path(job["work"]) / f"rank{rank}.err").write_text("\n".join(lines) + "\n")
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
