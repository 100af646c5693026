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
from trainflow.engine.target_scale import Regression, regression_from_spec, training_target
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
    task: str = "classification",
) -> tuple[nn.Module, FitResult]:
    """Build, train and save a model (best weights restored) into `folder`; a `task` of
    regression has one output, trained on the scaled target (engine.target_scale).

    With `resume_dir`, training writes its checkpoints there (a folder that outlives a crash)
    and continues from `resume`, a state loaded from it (state.load_resumable); on
    success the files move into `folder` and the resume folder is removed.
    """
    check_model_and_training(model, train, input_shape, aux_targets)
    torch.manual_seed(seed)
    regression = fitted_regression(train, data["train"]) if task == "regression" else None
    net = build_model(model, input_shape, 1 if regression else len(classes), aux_targets)
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
    probe = probe_rows(data)
    if regression is not None:  # the probe times a cross-entropy step: a one-class one
        probe = Split(probe.x, torch.zeros(len(probe), dtype=torch.int64))
    choice = compute.choose(net, train, probe, resolve_device(train.device))
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
            regression=regression,
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
        **(regression_info(regression) if regression else {}),
    )
    return net, result


def fitted_regression(train: TrainSpec, rows: Split | Stream) -> Regression:
    """The regression's loss and its target's scaling, fitted on the training rows only."""
    if isinstance(rows, Split):
        return regression_from_spec(train, rows.y.numpy())
    return regression_from_spec(train, training_target(rows.epoch(0, 4096, seed=0)))


def regression_info(regression: Regression) -> dict:
    """What model.json records of a regression: a package predicts in the target's units."""
    return {
        "task": "regression",
        "target_scale": regression.scale.to_json(),
        "loss": {"type": regression.loss, "delta": regression.delta},
    }


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
