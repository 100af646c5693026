"""A parameter server (train.distributed: parameter_server) on torch.distributed point-to-point
tensors (engine.ps_wire): rank 0 holds the parameters and the optimizer and applies the
updates; ranks 1..N-1 are trainers (`Trainer`, run by engine.ps_worker) that compute gradients
on the weights it sends.

The server drives, in one loop on rank 0. Each epoch it draws the one-process run's batch
order (its generator advances as one process's does) and sends that generator state to the
trainers, which draw the same batches; then it asks them for the gradients of batches by
index, sending the weights to compute them on.
- sync: every trainer computes its contiguous share of each global batch (engine.ddp's
  World.local); the server sums the gradients weighted by each share's rows (the one-process
  mean gradient, up to the order of float additions), steps once, and the new weights go out
  with the next batch.
- async: each global batch goes whole to the next free trainer, with the weights of that
  moment. Its gradient is applied when it arrives, unless more than `staleness` updates were
  applied since those weights were sent: then it is dropped and counted (no trainer ever
  waits). An epoch has at most the one-process count of updates, so planned schedules hold.
Validation, metrics.jsonl, last.pt and best.pt are the server's, written by the one-process
code (engine.setup, engine.loop.epoch_row, engine.outputs); a resume starts at an epoch.
Only flat tensors go between the ranks (gloo send/recv of raw bytes, whose layout both sides
know from the network they build): no Python object is ever unpickled from a peer."""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from pydantic import TypeAdapter
from torch import nn

from trainflow import registry
from trainflow.engine import compute, ps_wire, transfer
from trainflow.engine.augment import Augmenter, preview_png
from trainflow.engine.checks import check_model_and_training
from trainflow.engine.data import Split, batches
from trainflow.engine.ddp import World
from trainflow.engine.loop import EpochBatches, FitResult, epoch_row
from trainflow.engine.model_folder import build_model, describe
from trainflow.engine.outputs import Outputs
from trainflow.engine.setup import Setup, freeze_for, resolve_device, setup
from trainflow.engine.state import Position, TrainingState
from trainflow.engine.training import optimizer_factory, preview_images, probe_rows
from trainflow.errors import TrainflowError
from trainflow.spec.train import TrainSpec


def specs(job: dict) -> tuple[TrainSpec, Any]:
    """The job's train and model sections; device auto is the CPU (the ranks exchange CPU
    tensors over gloo)."""
    train = TrainSpec.model_validate(job["train"])
    if train.device == "auto":
        train = train.model_copy(update={"device": "cpu"})
    return train, TypeAdapter(registry.union(registry.MODELS)).validate_python(job["model"])


class Trainer:
    """A worker's copy of the network and of the training rows; it turns weights and a batch
    index into that batch's gradient (its share of it, in sync mode)."""

    def __init__(self, job: dict, data: dict, rank: int, workers: int):
        spec, model = specs(job)
        assert isinstance(data["val"], Split)  # (always in memory)
        self.net = build_model(model, job["input_shape"], len(job["classes"]), job["aux_targets"])
        run, _ = setup(self.net, data["train"], data["val"], spec, job["seed"],
                       optimizer_factory(spec))  # fmt: skip
        sync = spec.distributed is not None and spec.distributed.mode == "sync"
        self.run: Setup = replace(run, world=World(rank - 1, workers) if sync else World())
        self.batches: Any = iter(())

    def start_epoch(self, epoch: int, order: torch.Tensor) -> None:
        """The epoch's batches, in the order the server's generator state `order` draws."""
        run = self.run
        freeze_for(self.net, run.spec, epoch)
        self.mix = run.mix(epoch)
        drawn = run.batches(epoch, torch.Generator().set_state(order))
        self.batches = enumerate(EpochBatches(drawn, run.augment(epoch), self.mix))

    def gradient(self, index: int, weights: torch.Tensor) -> dict:
        """The gradient of batch `index` of the epoch (they come in order) at `weights` (the
        state_dict's bytes, ps_wire.raw), its rows, mean loss and the buffers the forward pass
        updated (batch-norm statistics)."""
        batch = next((b for at, b in self.batches if at == index), None)
        if batch is None:
            raise TrainflowError(f"parameter server: batch {index} is past the epoch's end")
        x, y, w = batch
        ps_wire.fill(list(self.net.state_dict().values()), weights)
        if not len(y):  # an epoch's last batch can leave a share empty
            return {"rows": 0}
        runner, update = self.run.runner, self.run.update
        runner.train()
        transfer.hold_frozen_norms(runner)
        loss, count = update.loss(runner, x, y, w, self.mix)
        update.backward(runner, loss)
        grads = [p.grad for p in self.net.parameters()]
        self.net.zero_grad(set_to_none=True)
        buffers = {k: b.detach().clone() for k, b in self.net.named_buffers()}
        return {"grads": grads, "rows": count, "loss": float(loss.detach()), "buffers": buffers}


@dataclass
class Updates:
    """What became of the gradients: applied, dropped as too stale (async), the most stale
    one applied (in updates since its weights were sent)."""

    applied: int = 0
    dropped: int = 0
    most_stale: int = 0


@dataclass
class Server:
    """Rank 0's side: the run and its state (engine.setup), the trainers' ranks, the async
    staleness bound (None: sync), the update counts and the link to the trainers."""

    run: Setup
    state: TrainingState
    outputs: Outputs
    trainers: list[int]
    staleness: int | None
    updates: Updates
    link: ps_wire.Link

    def weights(self) -> torch.Tensor:
        """A copy of the weights' bytes to send (the optimizer steps while one is out)."""
        return ps_wire.raw(self.state.model.state_dict().values())

    def apply(self, results: list[dict], stale: int = 0) -> None:
        """One optimizer step on the row-weighted mean of the results' gradients, with the
        batch-norm buffers of the first (as DDP keeps rank 0's)."""
        done = [r for r in results if r["rows"]]
        total = sum(r["rows"] for r in done)
        for i, param in enumerate(self.state.model.parameters()):
            parts = [r["grads"][i] * (r["rows"] / total) for r in done if r["grads"][i] is not None]
            param.grad = torch.stack(parts).sum(0) if parts else None
        for name, buffer in self.state.model.named_buffers():
            buffer.copy_(done[0]["buffers"][name])
        norm = self.run.update.step(self.state)
        loss = sum(r["loss"] * r["rows"] for r in done) / total
        self.outputs.after_step(torch.tensor(loss), norm)
        self.updates.applied += 1
        self.updates.most_stale = max(self.updates.most_stale, stale)

    def sync_epoch(self, count: int) -> None:
        for index in range(count):
            if self.run.update.done(self.state.steps):
                return
            epoch = self.state.epoch
            self.link.to_all(self.trainers, ps_wire.GRADIENT, index, epoch, self.weights())
            model = self.state.model
            results = [self.link.receive(model, t)[1] for t in self.trainers]
            self.count_rows(results)
            self.apply(results)

    def async_epoch(self, count: int) -> None:
        indices = iter(range(count))
        sent: dict[int, int] = {}  # a busy trainer's rank: the update count its weights had

        def give(trainer: int) -> int:
            index = next(indices, None)
            if index is None or self.run.update.done(self.state.steps):
                return 0
            sent[trainer] = self.state.steps
            epoch = self.state.epoch
            self.link.to_all([trainer], ps_wire.GRADIENT, index, epoch, self.weights())
            return 1

        busy = sum(give(trainer) for trainer in self.trainers)
        while busy:  # each reply is taken from whichever trainer finishes first
            trainer, result = self.link.receive(self.state.model, None)
            version = sent.pop(trainer)
            self.count_rows([result])
            stale = self.state.steps - version
            assert self.staleness is not None
            if self.run.update.done(self.state.steps):
                pass  # train.max_steps reached while it was out
            elif stale > self.staleness:
                self.updates.dropped += 1
            elif result["rows"]:
                self.apply([result], stale)
            busy += give(trainer) - 1

    def count_rows(self, results: list[dict]) -> None:
        """The epoch's training loss sums every computed batch's rows (dropped ones too)."""
        position = self.state.position
        for r in results:
            if r["rows"]:
                position.loss_sum += r["loss"] * r["rows"]
                position.seen += r["rows"]

    def epoch(self, epoch: int) -> None:
        """Draw the epoch's order, have the trainers compute it, then validate, record and
        checkpoint as one process does (engine.loop.run_epoch)."""
        run, state, began = self.run, self.state, time.perf_counter()
        state.epoch = epoch
        freeze_for(state.model, run.spec, epoch)
        order = state.generator.get_state()
        state.position = Position(order_rng=order)
        assert isinstance(run.train, Split)  # (a streamed split is refused: ps_worker)
        drawn = batches(run.train, run.size_at(epoch), state.generator)  # (as one process)
        count = sum(1 for _ in drawn)
        self.link.to_all(self.trainers, ps_wire.EPOCH, 0, epoch, order)
        if self.staleness is None:
            self.sync_epoch(count)
        else:
            self.async_epoch(count)
        row = epoch_row(run, state, state.position.mean_loss())  # (raises when diverged)
        if state.plateau:
            state.plateau.step(row[run.plateau_monitor])
        state.run.history.append(row)
        state.run.observe(run.stopping.score(row), epoch, state.model, run.stopping.min_delta)
        state.position = Position()
        self.outputs.after_epoch(row, time.perf_counter() - began)


def fit_server(
    net: nn.Module,
    job: dict,
    data: dict,
    spec: TrainSpec,
    work: Path,
    resume: dict | None,
    link: ps_wire.Link,
) -> tuple[FitResult, Updates]:
    """engine.loop.fit with the server's epochs on the trainers (ranks 1..N-1, waiting for
    its commands), which are released at the end."""
    distributed = spec.distributed
    assert distributed is not None
    run, state = setup(net, data["train"], data["val"], spec, job["seed"], optimizer_factory(spec))
    run = replace(run, world=World(0, distributed.world_size))  # (last.pt names the world)
    if resume is not None:
        state.resume(resume)
    trainers = list(range(1, distributed.world_size))
    staleness = distributed.staleness if distributed.mode == "async" else None
    result = FitResult(batch_size=run.batch_size)
    with Outputs(work, run, state) as outputs:
        server = Server(run, state, outputs, trainers, staleness, Updates(), link)
        for epoch in range(state.next_epoch, spec.epochs + 1):
            server.epoch(epoch)
            if run.stopping.stops(state.run.waited):
                result.stopped_early = True
                break
            if run.update.done(state.steps):
                break
        record = state.run
        if record.best_state is None:  # no finite validation score
            record.best_epoch = len(record.history)
            record.best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        result.best_state, result.best_epoch = record.best_state, record.best_epoch
        outputs.finish(result.best_state, result.best_epoch)
    link.to_all(trainers, ps_wire.STOP)  # (they exit: the job is done)
    result.history = record.history
    return result, server.updates


def train_server(
    folder: Path, job: dict, data: dict, resume: dict | None, link: ps_wire.Link
) -> FitResult:
    """engine.training.train_into on the server: build (and warm-start) the network, train it
    with the trainers, and leave the one-process model folder in `folder`."""
    spec, model = specs(job)
    check_model_and_training(model, spec, job["input_shape"], job["aux_targets"])
    torch.manual_seed(job["seed"])
    net = build_model(model, job["input_shape"], len(job["classes"]), job["aux_targets"])
    if spec.pretrained:
        given = transfer.read_state_dict(spec.pretrained.path, "train.pretrained.path")
        transfer.warm_start(net, given, spec.pretrained.replace_head, "train.pretrained")
    transfer.check_globs(net, spec.freeze, spec.unfreeze)
    work = Path(job["resume_dir"])
    work.mkdir(parents=True, exist_ok=True)
    choice = compute.choose(net, spec, probe_rows(data), resolve_device(spec.device))
    with compute.threads_set(choice.threads):
        applied = compute.applied(spec, choice)
        result, updates = fit_server(net, job, data, applied, work, resume, link)
    for name in ("metrics.jsonl", "last.pt", "best.pt"):
        shutil.copy2(work / name, folder / name)
    shutil.rmtree(work)
    if spec.augment and len(job["input_shape"]) == 3 and spec.augment.transforms:
        preview = preview_png(
            Augmenter(spec.augment, job["seed"], True), preview_images(data["train"])
        )
        (folder / "augment_preview.png").write_bytes(preview)  # (as train_into writes it)
    assert spec.distributed is not None
    describe(
        folder,
        model.model_dump(mode="json"),
        job["input_shape"],
        job["classes"],
        best_epoch=result.best_epoch,
        epochs_run=len(result.history),
        stopped_early=result.stopped_early,
        batch_size=result.batch_size,
        compute=compute.record(choice),
        parameter_server={"mode": spec.distributed.mode, "staleness": spec.distributed.staleness,
                          "workers": spec.distributed.world_size - 1, **asdict(updates)},
        **({"aux_targets": job["aux_targets"]} if job["aux_targets"] else {}),
    )  # fmt: skip
    return result
