"""The training loop: fit reads as its table of contents; an epoch trains, validates,
records and checkpoints; train_epoch turns batches into optimizer steps."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from trainflow.engine import qat, transfer
from trainflow.engine.averaging import average_epoch, final_weights
from trainflow.engine.data import Split
from trainflow.engine.inference import aux_accuracy, predict, predict_values
from trainflow.engine.monitor import check_monitor, monitored
from trainflow.engine.outputs import Outputs
from trainflow.engine.setup import Setup, anomaly_detection, deterministic, freeze_for, setup
from trainflow.engine.state import Position, TrainingState, weights
from trainflow.engine.target_scale import Regression, epoch_figures
from trainflow.engine.update import Update
from trainflow.loader import Stream
from trainflow.spec.train import TrainSpec


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_state: dict | None = None
    stopped_early: bool = False
    batch_size: int = 0  # as trained (train.auto_batch may have chosen it)


def fit(
    model: nn.Module,
    train: Split | Stream,
    val: Split,
    spec: TrainSpec,
    seed: int,
    build_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    out_dir: Path | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    resume: Path | dict | None = None,
    teacher: nn.Module | None = None,
    regression: Regression | None = None,
) -> FitResult:
    """Train with early stopping on a validation metric; write metrics.jsonl and checkpoints.

    `resume` continues from a last.pt (or its loaded state) of the same spec and data: the
    whole TrainingState is restored, so the run ends with the weights an uninterrupted run
    would have. `on_epoch` sees each epoch's row with its seconds and samples per second;
    `teacher` is the model to distill from (train.distill); a `regression` trains a numeric
    target (its rows record val_rmse, val_mae and val_r2 instead of val_accuracy).
    """
    run, state = setup(model, train, val, spec, seed, build_optimizer, teacher, regression)
    check_monitor(run, state)
    if resume is not None:
        state.resume(qat.resumed(run, state, resume))  # train.qat: past the switch, prepared
        run.world.resumed(state.position)  # DDP: the saved sums count once, on rank 0
    result = FitResult(batch_size=run.batch_size)
    with Outputs(out_dir, run, state, on_epoch) as outputs, deterministic(spec.deterministic):
        for epoch in tqdm(
            range(state.next_epoch, spec.epochs + 1), desc="epochs", leave=False, disable=None
        ):
            run_epoch(run, state, outputs, epoch)
            if run.stopping.stops(state.run.waited) and qat.may_stop(run, state):
                result.stopped_early = True
                break
            if run.update.done(state.steps):  # train.max_steps reached
                break
    record = state.run
    if record.best_state is None:  # no finite validation score (e.g. no validation rows)
        record.best_epoch = len(record.history)
        record.best_state = weights(model)
    result.best_state, result.best_epoch = record.best_state, record.best_epoch
    if state.averaged is not None:  # train.swa / train.ema: the average is the model
        result.best_state, result.best_epoch = averaged_weights(run, state), state.epoch
    result.best_state, quantizing = qat.split(run, state, result.best_state)  # train.qat
    outputs.finish(result.best_state, result.best_epoch, **quantizing)
    result.history = record.history
    return result


def averaged_weights(run: Setup, state: TrainingState) -> dict:
    """The averaged model's weights; SWA's batch-norm statistics recomputed over the training
    batches (drawn in a fixed order, so a resumed run recomputes the same)."""
    assert state.averaged is not None
    order = torch.Generator().manual_seed(run.seed)
    batches = run.batches(state.epoch, order) if run.spec.swa else []
    return final_weights(run.spec, state.averaged, batches, run.update.device, state.epoch)


def run_epoch(run: Setup, state: TrainingState, outputs: Outputs, epoch: int) -> None:
    """Train one epoch (a resumed one from its batch position), validate, keep the best
    weights, then report and checkpoint it."""
    began = time.perf_counter()
    state.epoch = epoch
    run = qat.at_epoch(run, state, epoch)  # train.qat: fake quantization from its epoch
    freeze_for(state.model, run.spec, epoch)
    if not state.position.batch:  # a fresh epoch: remember what draws its batch order
        state.position = Position(order_rng=state.generator.get_state())
    batches = EpochBatches(
        run.batches(epoch, state.generator), run.augment(epoch), run.mix(epoch), state
    )
    with anomaly_detection(run.spec.debug.detect_anomaly, epoch):
        train_loss = train_epoch(run.runner, state, batches, run.update, outputs.after_step)
    pos = state.position  # DDP: the mean over every rank's rows
    train_loss = run.world.mean_loss(pos.loss_sum, pos.seen, train_loss)
    if run.update.swa_phase(epoch) and state.averaged and state.swa_lr:
        average_epoch(state.averaged, state.swa_lr, state.model)  # train.swa
    row = epoch_row(run, state, train_loss)
    if state.plateau and not run.update.swa_phase(epoch):
        state.plateau.step(row[run.plateau_monitor])
    state.run.history.append(row)
    state.run.observe(run.stopping.score(row), epoch, state.model, run.stopping.min_delta)
    state.position = Position()  # between epochs
    outputs.after_epoch(row, time.perf_counter() - began)


class EpochBatches:
    """An epoch's training batches (x, y, loss weights or None) from the state's position
    on. A resumed epoch's consumed batches are drawn again and passed over, their
    augmentation and mixup replayed so those streams continue where they were; then the
    saved RNG states come back (TrainingState.replayed)."""

    def __init__(
        self,
        source: Iterable,
        augment: Callable | None = None,
        mix: Callable | None = None,
        state: TrainingState | None = None,
    ):
        self.source, self.augment, self.mix, self.state = source, augment, mix, state

    def __iter__(self):
        skip = self.state.position.batch if self.state else 0
        for index, (x, y, *w) in enumerate(self.source):
            if index < skip:  # resuming: consumed before the checkpoint
                if self.augment is not None:
                    self.augment(x)
                if self.mix is not None:
                    self.mix(x, y)
                continue
            if index == skip and self.state:
                self.state.replayed()
            yield (self.augment(x) if self.augment is not None else x), y, (w[0] if w else None)
        if self.state:  # the checkpoint was taken after the epoch's last step
            self.state.replayed()


def train_epoch(
    model: nn.Module,
    state: TrainingState,
    batches: EpochBatches,
    update: Update,
    after_step: Callable[[torch.Tensor, float | None], None] | None = None,
) -> float:
    """One pass over `batches` through `model` (the state's model, or its compiled runner):
    the epoch's mean training loss; a non-finite one raises. `after_step` sees each
    optimizer step's last batch loss and measured gradient norm."""
    model.train()
    transfer.hold_frozen_norms(model)
    state.optimizer.zero_grad(set_to_none=True)
    position, device, pending = state.position, update.device, 0
    position.loss_sum = position.loss_sum.to(device)
    for x, y, w in batches:
        if update.done(state.steps):
            break
        if update.regression is not None:  # the loss's target: scaled here, on the CPU
            y = update.regression.scale.scaled(y)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        w = w.to(device, non_blocking=True) if w is not None else None
        loss, count = update.loss(model, x, y, w, batches.mix)
        update.backward(model, loss, state.scaler)
        position.batch, pending = position.batch + 1, pending + 1
        position.loss_sum += loss.detach() * count
        position.seen += count
        if pending == update.accumulate:
            pending = 0
            norm = update.step(state)
            if after_step:
                after_step(loss.detach(), norm)
    if pending:  # the epoch's last, smaller group of batches
        norm = update.step(state)
        if after_step:
            after_step(loss.detach(), norm)
    return position.mean_loss()


def epoch_row(run: Setup, state: TrainingState, train_loss: float) -> dict:
    """The epoch's metrics.jsonl row: only what the seed determines, so a rerun writes equal
    bytes."""
    val, device, tasks = run.val, run.update.device, run.update.task_weights
    if run.update.regression is not None:
        return regression_row(run, state, train_loss, run.update.regression)
    val_loss, probs = predict(run.runner, val, run.batch_size, device)
    val_acc = (probs.argmax(1) == val.y).float().mean().item() if len(val) else 0.0
    aux_acc = (
        aux_accuracy(run.runner, val, run.batch_size, device, tasks)
        if tasks and val.aux is not None and len(val)
        else {}
    )
    row = {
        "epoch": state.epoch,
        "train_loss": train_loss,
        "val_loss": val_loss,
        "val_accuracy": val_acc,
        **monitored(run.stopping.monitor, val, probs),
        **progress(run, state),
        **{f"val_{task}_accuracy": acc for task, acc in aux_acc.items()},
    }
    return row


def progress(run: Setup, state: TrainingState) -> dict:
    """Where training stands at an epoch's end, in every epoch's row: the learning rate, the
    optimizer steps, the batch size, and the mean pre-clip gradient norm where clipping by
    norm measured it."""
    row = {
        "lr": state.optimizer.param_groups[0]["lr"],
        "steps": state.steps,
        "batch_size": run.size_at(state.epoch),
    }
    norms = state.position.grad_norms
    if norms:
        row["grad_norm"] = sum(norms) / len(norms)
    return row


def regression_row(
    run: Setup, state: TrainingState, train_loss: float, regression: Regression
) -> dict:
    """A regression epoch's row: the losses on the scaled target, the validation figures in
    the target's own units (every monitor a regression may name: val_rmse, val_mae, val_r2)."""
    val = run.val
    val_loss, predicted = predict_values(
        run.runner, val, run.batch_size, run.update.device, regression
    )
    row = {
        "epoch": state.epoch,
        "train_loss": train_loss,
        "val_loss": val_loss,
        **epoch_figures(val.y.numpy().astype("float64"), predicted),
        **progress(run, state),
    }
    return row
