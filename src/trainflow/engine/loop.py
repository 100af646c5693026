"""The training loop, as plain functions: seed, batches, train one epoch, evaluate, fit."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from trainflow.engine import checkpoint
from trainflow.engine import schedule, transfer
from trainflow.engine.augment import Augmenter
from trainflow.engine.batchsize import largest_batch, ramped
from trainflow.engine.distill import Distiller
from trainflow.engine.inference import aux_accuracy, predict
from trainflow.engine.resume import restore_rng, training_state
from trainflow.engine.data import (Split, balanced_weights, batches, weighted_loss,
                                   weights_from_counts)
from trainflow.engine.tracking import Tracker, debug_report
from trainflow.engine.update import Update
from trainflow.errors import TrainflowError
from trainflow.loader import Stream
from trainflow.models.multitask import MultiTask
from trainflow.spec.train import TrainSpec

log = logging.getLogger("trainflow")


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_state: dict | None = None
    stopped_early: bool = False
    batch_size: int = 0  # as trained (train.auto_batch may have chosen it)


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


@dataclass
class Position:
    """How far an epoch has got: batches consumed, the running loss sum and sample count, and
    (when resuming mid-epoch) the RNG states to restore once the consumed batches are passed."""

    batch: int = 0
    loss_sum: torch.Tensor | float = 0.0
    seen: int = 0
    rng: dict | None = None


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, data: Split, batch_size: int,
                generator: torch.Generator, device: torch.device,
                class_weights: torch.Tensor | None = None,
                sample_weights: torch.Tensor | None = None,
                augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
                mix: Callable | None = None, stream: Iterable | None = None,
                update: Update | None = None, start: Position | None = None,
                on_step: Callable[[Position], None] | None = None) -> float:
    """One pass over `data` (or over `stream`'s batches, already augmented in its workers);
    raises before any checkpoint of a non-finite epoch is written. `update` holds the knobs of
    the optimizer step (accumulation, clipping, precision, schedule, step budget).

    `start` resumes mid-epoch: its batches are passed over (their augmentation replayed, so
    the augmentation streams continue where they were), then the saved RNG states are
    restored. `on_step` sees the position after each optimizer step.
    """
    update = update or Update()
    model.train()
    transfer.hold_frozen_norms(model)
    optimizer.zero_grad(set_to_none=True)
    total, seen, pending = torch.zeros((), device=device), 0, 0
    skip = start.batch if start else 0
    if start:
        total, seen = total + start.loss_sum.to(device), start.seen
    smoothing = update.label_smoothing
    for index, (x, y, *w) in enumerate(
            stream if stream is not None else batches(data, batch_size, generator,
                                                      sample_weights)):
        if index < skip:  # resuming: consumed before the checkpoint
            if augment is not None:
                augment(x)
            if mix is not None:
                mix(x, y)
            continue
        if index == skip and start and start.rng:
            restore_rng(start.rng, generator)
            start.rng = None
        if update.done:
            break
        w = w[0].to(device, non_blocking=True) if w else None
        if augment is not None:
            x = augment(x)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        aux = None
        if y.dim() == 2:  # multi-task labels: the main target, then the auxiliary ones
            y, aux = y[:, 0], y[:, 1:]
        with update.autocast(device):
            x = update.perturb(model, x, y)  # adversarial examples, when declared
            if mix is not None:  # mixup: a convex blend of pairs, and of their losses
                x, y, partner, lam = mix(x, y)
                out = update.forward(model, x)
                loss = (lam * weighted_loss(out, y, class_weights, w, smoothing)
                        + (1 - lam) * weighted_loss(out, partner, class_weights, w, smoothing))
            elif aux is not None and update.task_weights is not None:
                out, heads = model(x, heads=True)
                loss = weighted_loss(out, y, class_weights, w, smoothing) + sum(
                    weight * nn.functional.cross_entropy(heads[task].float(), aux[:, i])
                    for i, (task, weight) in enumerate(update.task_weights.items()))
            else:
                out = update.forward(model, x)
                loss = weighted_loss(out, y, class_weights, w, smoothing)
            loss = update.distill(loss, out, x)  # soft targets, when a teacher is declared
        update.last_loss = loss.detach()
        update.backward(loss + update.penalty(model))
        pending += 1
        total += loss.detach() * len(y)
        seen += len(y)
        if pending == update.accumulate:
            update.step(model, optimizer)
            pending = 0
            if on_step:
                on_step(Position(index + 1, total, seen))
    if start and start.rng:  # the checkpoint was taken after the epoch's last step
        restore_rng(start.rng, generator)
    if pending:  # the epoch's last, smaller group of batches
        update.step(model, optimizer)
        if on_step:
            on_step(Position(index + 1, total, seen))
    return finite_mean(total, seen)


def finite_mean(total: torch.Tensor, seen: int) -> float:
    mean = total.item() / max(seen, 1)
    if not math.isfinite(mean):
        raise TrainflowError(f"training loss became non-finite ({mean}): lower train.lr, add "
                             "gradient clipping, or check the data for extreme values")
    return mean


def fit(model: nn.Module, train: Split | Stream, val: Split, spec: TrainSpec, seed: int,
        build_optimizer: Callable[[nn.Module], torch.optim.Optimizer], out_dir: Path | None = None,
        on_epoch: Callable[[dict], None] | None = None, resume: Path | dict | None = None,
        on_step: Callable[[int], None] | None = None,
        teacher: nn.Module | None = None) -> FitResult:
    """Train with early stopping on a validation metric; write metrics.jsonl and checkpoints.

    `resume` continues from a last.pt (or its loaded state) of the same spec and data:
    weights, optimizer, schedule, grad scaler, the batch position inside the epoch, every RNG
    state and the early-stopping bookkeeping are restored, so the run ends with the weights an
    uninterrupted run would have.
    `on_step` sees the optimizer step count after each step; `teacher` is the model to
    distill from (train.distill).
    """
    generator = seed_everything(seed)
    device = resolve_device(spec.device)
    model.to(device)
    optimizer = build_optimizer(model)
    stopping = spec.early_stopping
    monitor = stopping.monitor if stopping else "val_loss"
    sign = 1.0 if monitor == "val_loss" else -1.0  # compare as "lower is better"
    min_delta = stopping.min_delta if stopping else 0.0
    result, best, waited = FitResult(), math.inf, 0
    streamed = isinstance(train, Stream)
    if streamed:
        balanced = weights_from_counts(torch.tensor(train.class_counts))
        if spec.sampler == "weighted":
            raise TrainflowError("train.sampler: weighted draws rows from the whole training "
                                 "set in memory; with a streamed loader use class_weights: "
                                 "balanced, or set train.loader.mode: memory")
    else:
        num_classes = int(max(train.y.max().item(), val.y.max().item() if len(val) else 0)) + 1
        balanced = balanced_weights(train.y, num_classes)
    class_weights = balanced.to(device) if spec.class_weights == "balanced" else None
    sample_weights = balanced[train.y] if spec.sampler == "weighted" else None
    image_input = train.image_input if streamed else train.x.dim() == 4
    augmenter = Augmenter(spec.augment, seed, image_input) if spec.augment else None
    pin = spec.loader.pin_memory if spec.loader.pin_memory != "auto" else device.type == "cuda"
    batch_size = spec.batch_size
    if spec.auto_batch:
        if streamed:
            raise TrainflowError("train.auto_batch measures a training step on rows in "
                                 "memory; set train.loader.mode: memory or a batch_size")
        batch_size = largest_batch(model, train.x, spec.batch_size, spec.auto_batch.max,
                                   spec.auto_batch.memory_mb, device)
    result.batch_size = batch_size

    def size_at(epoch: int) -> int:
        ramp = spec.batch_ramp
        return ramped(epoch, ramp.start, batch_size, ramp.epochs) if ramp else batch_size

    per_epoch = schedule.steps_per_epoch(len(train), batch_size, spec.accumulate)
    ramping = min(spec.batch_ramp.epochs, spec.epochs) if spec.batch_ramp else 0  # then full
    planned = per_epoch * (spec.epochs - ramping) + sum(
        schedule.steps_per_epoch(len(train), size_at(e), spec.accumulate)
        for e in range(1, ramping + 1))
    total_steps = min(planned, spec.max_steps or planned)
    scheduler, plateau = schedule.build(spec.schedule, optimizer, spec.lr, per_epoch, total_steps)
    update = Update.from_spec(spec, device, scheduler)
    if isinstance(model, MultiTask):  # a loss weight per auxiliary head, 1 unless declared
        update.task_weights = {t: spec.task_weights.get(t, 1.0) for t in model.aux}
    if teacher is not None:
        update.distiller = Distiller(teacher, spec.distill.temperature,
                                     spec.distill.alpha).to(device)
    first_epoch, start, step_rows = 1, None, []
    digest = hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:16]
    if resume is not None:
        saved = resume if isinstance(resume, dict) else checkpoint.load_latest_good(resume)
        if saved.get("spec", digest) != digest:
            where = "its checkpoint" if isinstance(resume, dict) else resume
            raise TrainflowError(f"cannot resume from {where}: it was written by a different "
                                 "train spec (resuming needs the same knobs to reach the same "
                                 "weights); start afresh or restore the spec")
        written = saved.get("versions", {}).get("torch", str(torch.__version__))
        if written != str(torch.__version__):
            log.warning("resuming a checkpoint written by torch %s with torch %s: the run "
                        "continues, but may not be bit-identical to an uninterrupted one",
                        written, torch.__version__)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        for part, state in ((update.scheduler, saved["scheduler"]), (plateau, saved["plateau"]),
                            (update.scaler, saved["scaler"])):
            if part is not None and state:
                part.load_state_dict(state)
        update.steps = saved["steps"]
        restore_rng(saved["rng"], generator)
        run = saved["run"]
        best, waited, result.best_epoch = run["best"], run["waited"], run["best_epoch"]
        result.history, result.best_state = run["history"], run["best_state"]
        step_rows = run.get("step_rows", [])
        first_epoch = saved["epoch"] + 1
        if saved.get("position"):  # taken mid-epoch: that epoch continues from its batch
            mid = saved["position"]
            first_epoch, update.grad_norms = saved["epoch"], list(mid["grad_norms"])
            start = Position(mid["batch"], mid["loss_sum"], mid["seen"], saved["rng"])
            if update.layer_grads is not None and mid.get("layer_grads"):
                update.layer_grads.sums = dict(mid["layer_grads"]["sums"])
                update.layer_grads.count = mid["layer_grads"]["count"]
            generator.set_state(mid["order_rng"])  # the epoch's batch order, drawn again

    def last_state(epoch: int, position: dict | None = None) -> dict:
        return training_state(model, optimizer, epoch, generator, update, plateau,
                              {"best": best, "waited": waited, "best_epoch": result.best_epoch,
                               "history": result.history, "best_state": result.best_state,
                               "step_rows": step_rows},
                              position, digest)

    # torch.compile: the compiled module runs the batches; `model` keeps the state dicts.
    runner = torch.compile(model, mode=spec.compile_mode) if spec.compile else model
    tracker = Tracker(out_dir, spec.log.tensorboard, spec.log.every_steps, result.history,
                      step_rows)
    anomaly = (torch.autograd.detect_anomaly(check_nan=True) if spec.debug.detect_anomaly
               else nullcontext())
    writer = checkpoint.BackgroundWriter()
    saved_at, saved_epoch = time.monotonic(), 0
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    if spec.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it
        torch.use_deterministic_algorithms(True)
    try:
        for epoch in tqdm(range(first_epoch, spec.epochs + 1), desc="epochs", leave=False,
                          disable=None):
            began = time.perf_counter()
            if spec.freeze:
                transfer.apply_freeze(model, transfer.frozen_at(epoch, spec.freeze,
                                                                spec.unfreeze))
            order_rng = generator.get_state()  # draws this epoch's batch order

            def step_done(position: Position) -> None:
                nonlocal saved_at
                if (out_dir and spec.checkpoint_every_steps
                        and update.steps % spec.checkpoint_every_steps == 0
                        and time.monotonic() - saved_at >= spec.checkpoint_interval_s):
                    finite_mean(position.loss_sum, position.seen)  # never save a diverged run
                    grads = update.layer_grads
                    writer.save(out_dir / "last.pt", last_state(epoch, {
                        "batch": position.batch, "loss_sum": position.loss_sum.detach().cpu(),
                        "seen": position.seen, "order_rng": order_rng,
                        "grad_norms": list(update.grad_norms),
                        "layer_grads": {"sums": dict(grads.sums), "count": grads.count}
                        if grads else None}), spec.keep_last)
                    saved_at = time.monotonic()
                if tracker.wants_step(update.steps):
                    tracker.step({"step": update.steps, "epoch": epoch,
                                  "loss": float(update.last_loss),
                                  "lr": optimizer.param_groups[0]["lr"],
                                  **({"grad_norm": update.last_grad_norm}
                                     if update.last_grad_norm is not None else {})})
                if on_step:
                    on_step(update.steps)

            size = size_at(epoch)
            stream = train.epoch(epoch, size, seed, pin,
                                 augmenter.for_epoch if augmenter else None) if streamed else None
            try:
                with anomaly:
                    train_loss = train_epoch(
                        runner, optimizer, train, size, generator, device,
                        class_weights, sample_weights,
                        augmenter.for_epoch(epoch) if augmenter and not streamed else None,
                        augmenter.mixer(epoch) if augmenter else None, stream, update, start,
                        step_done)
            except RuntimeError as exc:
                if spec.debug.detect_anomaly and "nan values" in str(exc):
                    raise TrainflowError(f"train.debug.detect_anomaly: the backward pass made "
                                         f"NaN values in epoch {epoch}: {exc} (the warning "
                                         "above shows the forward operation that caused "
                                         "it)") from None
                raise
            start = None
            val_loss, probs = predict(runner, val, batch_size, device)
            val_acc = (probs.argmax(1) == val.y).float().mean().item() if len(val) else 0.0
            aux_acc = (aux_accuracy(runner, val, batch_size, device, update.task_weights)
                       if update.task_weights and val.aux is not None and len(val) else {})
            # metrics.jsonl holds only what the seed determines, so a rerun writes equal bytes
            row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                   "val_accuracy": val_acc, "lr": optimizer.param_groups[0]["lr"],
                   "steps": update.steps, "batch_size": size,
                   **{f"val_{task}_accuracy": acc for task, acc in aux_acc.items()}}
            if update.grad_norms:  # clipping by norm measures it: the epoch's mean, pre-clip
                row["grad_norm"] = sum(update.grad_norms) / len(update.grad_norms)
                update.grad_norms.clear()
            if plateau:
                plateau.step(row[spec.schedule.monitor])
            result.history.append(row)
            score = sign * row[monitor]
            if score < best - min_delta:
                best, waited, result.best_epoch = score, 0, epoch
                result.best_state = {k: v.detach().clone().cpu() for k, v in
                                     model.state_dict().items()}
            else:
                waited += 1
            seconds = time.perf_counter() - began
            tracker.epoch(row, seconds, len(train))
            if spec.debug.layer_norms or spec.debug.dead_units:
                tracker.debug_row(out_dir, {"epoch": epoch, **debug_report(
                    model, update.layer_grads, val.x if spec.debug.dead_units else None,
                    device)})
            if on_epoch:
                on_epoch({**row, "seconds": seconds, "samples_per_s": len(train) / seconds})
            if (out_dir and spec.checkpoint_every and epoch % spec.checkpoint_every == 0
                    and time.monotonic() - saved_at >= spec.checkpoint_interval_s):
                writer.save(out_dir / "last.pt", last_state(epoch), spec.keep_last)
                saved_at, saved_epoch = time.monotonic(), epoch
            if stopping and waited >= stopping.patience:
                result.stopped_early = True
                break
            if update.done:  # train.max_steps reached
                break
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        writer.close()
        tracker.close()
    if result.best_state is None:  # no finite validation score (e.g. no validation rows)
        result.best_epoch = len(result.history)
        result.best_state = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
    if out_dir:
        epochs_run = len(result.history)
        if saved_epoch != epochs_run and result.history:
            checkpoint.save_rotating(out_dir / "last.pt", last_state(result.history[-1]["epoch"]),
                                     spec.keep_last)
        checkpoint.save(out_dir / "best.pt", {"model": result.best_state,
                                              "epoch": result.best_epoch})
        checkpoint.drop_rotation(out_dir / "last.pt")
    return result
