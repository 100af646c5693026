"""Setup: the train spec's knobs turned into the components of one training, once, before
its first epoch (the loop then only reads them)."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch
from torch import nn

from trainflow.engine import schedule, transfer
from trainflow.engine.augment import Augmenter
from trainflow.engine.averaging import averaged_model, swa_schedule
from trainflow.engine.batchsize import largest_batch, ramped
from trainflow.engine.data import Split, balanced_weights, batches, weights_from_counts
from trainflow.engine.ddp import World
from trainflow.engine.distill import Distiller
from trainflow.engine.state import TrainingState, spec_digest
from trainflow.engine.target_scale import Regression
from trainflow.engine.tracking import GradientNorms
from trainflow.engine.update import Update, grad_scaler
from trainflow.errors import TrainflowError
from trainflow.loader import Stream
from trainflow.models.multitask import MultiTask
from trainflow.spec.train import TrainSpec


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return the generator that orders the training batches."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainflowError("train.device: 'cuda' was requested but no CUDA device is available")
    if name == "mps" and not torch.backends.mps.is_available():
        raise TrainflowError("train.device: 'mps' was requested but MPS is not available")
    return torch.device(name)


@dataclass(frozen=True)
class Stopping:
    """train.early_stopping: the monitored metric, read in its mode (min or max) as a score
    where lower is better; without early stopping, the best epoch is the lowest val_loss."""

    monitor: str = "val_loss"
    mode: str = "min"
    min_delta: float = 0.0
    patience: int | None = None

    def score(self, row: dict) -> float:
        return row[self.monitor] if self.mode == "min" else -row[self.monitor]

    def stops(self, waited: int) -> bool:
        return self.patience is not None and waited >= self.patience


@dataclass(frozen=True)
class Setup:
    """What one training is made of besides its state."""

    spec: TrainSpec
    seed: int
    train: Split | Stream
    val: Split
    runner: nn.Module  # what batches run through (torch.compile's wrapper when compiled)
    update: Update
    batch_size: int  # as trained at full size (train.auto_batch may have chosen it)
    sample_weights: torch.Tensor | None  # train.sampler: weighted
    augmenter: Augmenter | None
    pin_memory: bool
    stopping: Stopping
    world: World = field(
        default_factory=World
    )  # train.distributed: this rank among the ranks (engine.ddp)

    @property
    def streamed(self) -> bool:
        return isinstance(self.train, Stream)

    @property
    def plateau_monitor(self) -> str:
        """The metric a plateau schedule (the one kind stepped per epoch) watches."""
        return getattr(self.spec.schedule, "monitor", "val_loss")

    def size_at(self, epoch: int) -> int:
        """The batch size of an epoch: train.batch_ramp grows it over the first epochs."""
        ramp = self.spec.batch_ramp
        return ramped(epoch, ramp.start, self.batch_size, ramp.epochs) if ramp else self.batch_size

    def batches(self, epoch: int, generator: torch.Generator) -> Iterator:
        """The epoch's training batches (a stream's already augmented in its workers)."""
        size, aug = self.size_at(epoch), self.augmenter
        if isinstance(self.train, Stream):
            return iter(
                self.train.epoch(  # (a stream gives each rank its own shards)
                    epoch,
                    size // self.world.size,
                    self.seed,
                    self.pin_memory,
                    aug.for_epoch if aug else None,
                )
            )
        assert isinstance(self.train, Split)
        # DDP: this rank's share of each of the one-process run's global batches
        return map(self.world.local, batches(self.train, size, generator, self.sample_weights))

    def augment(self, epoch: int) -> Callable | None:
        """In-memory batches' augmentation (a stream's runs in its workers)."""
        return self.augmenter.for_epoch(epoch) if self.augmenter and not self.streamed else None

    def mix(self, epoch: int) -> Callable | None:
        return self.augmenter.mixer(epoch) if self.augmenter else None


def setup(
    model: nn.Module,
    train: Split | Stream,
    val: Split,
    spec: TrainSpec,
    seed: int,
    build_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    teacher: nn.Module | None = None,
    regression: Regression | None = None,
) -> tuple[Setup, TrainingState]:
    """Every knob, one line each: the components of the run and its fresh state (a
    `regression` trains its numeric target with its loss; a classifier, cross-entropy)."""
    generator = seed_everything(seed)
    device = resolve_device(spec.device)
    model.to(device)
    world = World.current()  # train.distributed: rank and world size (one process: 0 of 1)
    world.shard(model, device)  # fsdp: parameters sharded in place, before the optimizer
    optimizer = build_optimizer(model)
    # (a regression has no classes to balance: validation refused the knobs that would)
    balanced = class_balance(train, val, spec) if regression is None else None
    batch_size = full_batch_size(model, train, spec, device)
    total_steps = planned_steps(len(train), batch_size, spec)
    per_epoch = schedule.steps_per_epoch(len(train), batch_size, spec.accumulate)
    scheduler, plateau = schedule.build(spec.schedule, optimizer, spec.lr, per_epoch, total_steps)
    class_weights = (
        balanced.to(device) if balanced is not None and spec.class_weights == "balanced" else None
    )
    task_weights = (
        {t: spec.task_weights.get(t, 1.0) for t in model.aux}
        if isinstance(model, MultiTask)
        else None
    )
    distiller = (
        Distiller(teacher, spec.distill.temperature, spec.distill.alpha).to(device)
        if teacher is not None and spec.distill
        else None
    )
    update = Update.from_spec(spec, device, class_weights, task_weights, distiller, regression)
    image_input = train.image_input if isinstance(train, Stream) else train.x.dim() == 4
    augmenter = Augmenter(spec.augment, seed, image_input) if spec.augment else None
    pin = spec.loader.pin_memory if spec.loader.pin_memory != "auto" else device.type == "cuda"
    weighted = spec.sampler == "weighted"  # (class_balance refused it for a stream)
    sample_weights = (
        balanced[train.y]
        if balanced is not None and weighted and isinstance(train, Split)
        else None
    )
    early = spec.early_stopping
    stopping = (
        Stopping(early.monitor, early.mode, early.min_delta, early.patience)
        if early
        else Stopping()
    )
    runner = world.wrap(model, device)  # DDP: backward averages the gradients across ranks
    # torch.compile: the compiled module runs the batches; `model` keeps the state dicts.
    runner = (
        cast(nn.Module, torch.compile(runner, mode=spec.compile_mode)) if spec.compile else runner
    )
    layer_grads = GradientNorms() if spec.debug.layer_norms else None
    state = TrainingState(
        model,
        optimizer,
        scheduler,
        plateau,
        grad_scaler(spec),
        generator,
        layer_grads,
        spec_digest(spec),
        device.type == "cuda",
        averaged_model(model, spec),  # train.swa / train.ema (after model.to(device))
        swa_schedule(optimizer, spec),  # train.swa
    )
    return Setup(
        spec,
        seed,
        train,
        val,
        runner,
        update,
        batch_size,
        sample_weights,
        augmenter,
        pin,
        stopping,
        world,
    ), state


def class_balance(train: Split | Stream, val: Split, spec: TrainSpec) -> torch.Tensor:
    """n / (classes * count) per class of the training rows (class weights, the sampler)."""
    if not isinstance(train, Stream):
        num_classes = int(max(train.y.max().item(), val.y.max().item() if len(val) else 0)) + 1
        return balanced_weights(train.y, num_classes)
    if spec.sampler == "weighted":
        raise TrainflowError(
            "train.sampler: weighted draws rows from the whole training set in "
            "memory; with a streamed loader use class_weights: balanced, or "
            "set train.loader.mode: memory"
        )
    return weights_from_counts(torch.tensor(train.class_counts))


def full_batch_size(
    model: nn.Module, train: Split | Stream, spec: TrainSpec, device: torch.device
) -> int:
    if not spec.auto_batch:
        return spec.batch_size
    if isinstance(train, Stream):
        raise TrainflowError(
            "train.auto_batch measures a training step on rows in memory; set "
            "train.loader.mode: memory or a batch_size"
        )
    return largest_batch(
        model, train.x, spec.batch_size, spec.auto_batch.max, spec.auto_batch.memory_mb, device
    )


def planned_steps(samples: int, batch_size: int, spec: TrainSpec) -> int:
    """Optimizer steps the run will take (the schedules span them): the ramp's epochs at
    their sizes, then full ones, at most train.max_steps."""
    ramp, planned = spec.batch_ramp, 0
    ramping = min(ramp.epochs, spec.epochs) if ramp else 0
    for epoch in range(1, ramping + 1):
        assert ramp is not None
        size = ramped(epoch, ramp.start, batch_size, ramp.epochs)
        planned += schedule.steps_per_epoch(samples, size, spec.accumulate)
    planned += schedule.steps_per_epoch(samples, batch_size, spec.accumulate) * (
        spec.epochs - ramping
    )
    return min(planned, spec.max_steps or planned)


def freeze_for(model: nn.Module, spec: TrainSpec, epoch: int) -> None:
    """train.freeze / train.unfreeze: which parameters train in this epoch."""
    if spec.freeze:
        transfer.apply_freeze(model, transfer.frozen_at(epoch, spec.freeze, spec.unfreeze))


@contextmanager
def deterministic(on: bool) -> Iterator[None]:
    """train.deterministic: torch's deterministic algorithms while the block runs."""
    was = torch.are_deterministic_algorithms_enabled()
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)


@contextmanager
def anomaly_detection(on: bool, epoch: int) -> Iterator[None]:
    """train.debug.detect_anomaly: a NaN made by the backward pass stops training, named."""
    try:
        with torch.autograd.detect_anomaly(check_nan=True) if on else nullcontext():
            yield
    except RuntimeError as exc:
        if on and "nan values" in str(exc):
            raise TrainflowError(
                f"train.debug.detect_anomaly: the backward pass made NaN "
                f"values in epoch {epoch}: {exc} (the warning above shows the "
                "forward operation that caused it)"
            ) from None
        raise
