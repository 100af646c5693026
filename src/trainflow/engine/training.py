"""Training a model into a folder: build the declared network, warm-start it, fit it and
save the best weights with the model.json that rebuilds it (engine.model_folder)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainflow import registry
from trainflow.engine import compute, optim, transfer
from trainflow.engine.augment import Augmenter, preview_png
from trainflow.engine.checks import check_model_and_training
from trainflow.engine.data import Split
from trainflow.engine.ddp import World
from trainflow.engine.distill import load_teacher
from trainflow.engine.loop import FitResult, fit
from trainflow.engine.model_folder import build_model, describe
from trainflow.engine.setup import resolve_device
from trainflow.loader import Stream
from trainflow.spec.train import TrainSpec


def optimizer_factory(train: TrainSpec) -> Callable[[nn.Module], torch.optim.Optimizer]:
    """The optimizer train.optimizer names, over parameter groups, at train.lr: the one rate
    the optimizer and the schedule (whose peak it is) both read."""
    entry = registry.OPTIMIZERS[train.optimizer.type]
    return lambda net: entry.impl(
        optim.param_groups(net, train.lr, train.weight_decay, train.no_decay, train.lr_multipliers),
        train.optimizer,
        train.lr,
    )


def train_into(
    folder: Path,
    model: Any,
    train: TrainSpec,
    seed: int,
    data: dict[str, Split | Stream],
    input_shape: list[int],
    classes: list[str],
    on_epoch: Callable[[dict], None] | None = None,
    resume_dir: Path | None = None,
    aux_targets: dict[str, list[str]] | None = None,
    resume: dict | None = None,
) -> tuple[nn.Module, FitResult]:
    """Build, train and save a model (best weights restored) into `folder`.

    With `resume_dir`, training writes its checkpoints there (a folder that outlives a crash)
    and continues from `resume`, a state loaded from it (state.load_resumable); on
    success the files move into `folder` and the resume folder is removed.
    """
    check_model_and_training(model, train, input_shape, aux_targets)
    torch.manual_seed(seed)
    net = build_model(model, input_shape, len(classes), aux_targets)
    if train.pretrained:
        transfer.warm_start(
            net,
            transfer.read_state_dict(train.pretrained.path, "train.pretrained.path"),
            train.pretrained.replace_head,
            "train.pretrained",
        )
    transfer.check_globs(net, train.freeze, train.unfreeze)
    teacher = load_teacher(train.distill.teacher, input_shape, classes) if train.distill else None
    work = resume_dir or folder
    work.mkdir(parents=True, exist_ok=True)
    choice = compute.choose(net, train, probe_rows(data), resolve_device(train.device))
    with compute.threads_set(choice.threads):
        result = fit(
            net,
            data["train"],
            data["val"],
            compute.applied(train, choice),
            seed,
            optimizer_factory(train),
            work,
            on_epoch,
            resume=resume if resume_dir else None,
            teacher=teacher,
        )
    if resume_dir and World.current().writes:  # DDP: rank 0 alone wrote the checkpoints
        for name in ("metrics.jsonl", "last.pt", "best.pt"):
            shutil.copy2(work / name, folder / name)
        shutil.rmtree(work)
    net.load_state_dict(result.best_state)
    if train.augment and len(input_shape) == 3 and train.augment.transforms:
        preview = preview_png(Augmenter(train.augment, seed, True), preview_images(data["train"]))
        (folder / "augment_preview.png").write_bytes(preview)
    describe(
        folder,
        model.model_dump(mode="json"),
        input_shape,
        classes,
        best_epoch=result.best_epoch,
        epochs_run=len(result.history),
        stopped_early=result.stopped_early,
        batch_size=result.batch_size,
        compute=compute.record(choice),
        **({"aux_targets": aux_targets} if aux_targets else {}),
        **({"adversarial": train.adversarial.model_dump()} if train.adversarial else {}),
    )
    return net, result


def probe_rows(data: dict[str, Split | Stream]) -> Split:
    """The rows the threads/precision probe times a step on: validation rows, or training
    rows where there are none (train.fit_on: train+validation trains on them)."""
    val, train = data["val"], data["train"]
    assert isinstance(val, Split)
    if len(val) or not len(train):
        return val
    if isinstance(train, Split):
        return train
    x, y = next(iter(train.epoch(0, 256, seed=0)))[:2]
    return Split(x, y if y.dim() == 1 else y[:, 0])


def preview_images(train: Split | Stream, count: int = 8) -> torch.Tensor:
    if isinstance(train, Split):
        return train.x[:count]
    return next(iter(train.epoch(0, count, seed=0)))[0]
