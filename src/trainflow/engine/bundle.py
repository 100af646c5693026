"""A trained model as an artifact folder: model.json (how to build it) + weights + metrics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from trainflow import registry
from trainflow.artifacts import ArtifactRef
from trainflow.engine import checkpoint, compute, optim, transfer
from trainflow.engine.checks import check_model_and_training
from trainflow.engine.distill import load_teacher
from trainflow.errors import TrainflowError
from trainflow.engine.augment import Augmenter, preview_png
from trainflow.engine.data import Split
from trainflow.engine.inference import predict
from trainflow.engine.loop import FitResult, fit, resolve_device
from trainflow.loader import Stream
from trainflow.metrics import classification_metrics
from trainflow.models.multitask import MultiTask, share_parameters
from trainflow.spec.train import TrainSpec

WEIGHTS = "best.pt"


def build_model(model: Any, input_shape: list[int], num_classes: int,
                aux_targets: dict[str, list[str]] | None = None) -> nn.Module:
    """The declared architecture, its shared parameters tied, and one more head per
    auxiliary target (multi-task) when the data has them."""
    net = registry.MODELS[model.type].impl(input_shape, num_classes, **model.builder_kwargs())
    if model.share:
        try:
            share_parameters(net, model.share)
        except ValueError as exc:
            raise TrainflowError(f"model.{exc}") from None
    if aux_targets:
        net = MultiTask(net, {task: len(classes) for task, classes in aux_targets.items()})
    return net


def optimizer_factory(train: TrainSpec, lr: float | None = None) -> Callable:
    entry = registry.OPTIMIZERS[train.optimizer.type]
    rate = lr or train.lr
    return lambda net: entry.impl(
        optim.param_groups(net, rate, train.weight_decay, train.no_decay, train.lr_multipliers),
        train.optimizer, rate)


def train_into(folder: Path, model: Any, train: TrainSpec, seed: int,
               data: dict[str, Split | Stream],
               input_shape: list[int], classes: list[str],
               on_epoch: Callable[[dict], None] | None = None,
               resume_dir: Path | None = None,
               aux_targets: dict[str, list[str]] | None = None,
               resume: dict | None = None) -> tuple[nn.Module, FitResult]:
    """Build, train and save a model (best weights restored) into `folder`.

    With `resume_dir`, training writes its checkpoints there (a folder that outlives a crash)
    and continues from `resume`, a state loaded from it (checkpoint.load_latest_good); on
    success the files move into `folder` and the resume folder is removed.
    """
    check_model_and_training(model, train, input_shape, aux_targets)
    torch.manual_seed(seed)
    net = build_model(model, input_shape, len(classes), aux_targets)
    if train.pretrained:
        transfer.warm_start(net, transfer.read_state_dict(train.pretrained.path,
                                                          "train.pretrained.path"),
                            train.pretrained.replace_head, "train.pretrained")
    transfer.check_globs(net, train.freeze, train.unfreeze)
    teacher = load_teacher(train.distill.teacher, input_shape, classes) if train.distill else None
    work = resume_dir or folder
    work.mkdir(parents=True, exist_ok=True)
    choice = compute.choose(net, train, data["val"], resolve_device(train.device))
    with compute.threads_set(choice.threads):
        result = fit(net, data["train"], data["val"], compute.applied(train, choice), seed,
                     optimizer_factory(train), work, on_epoch,
                     resume=resume if resume_dir else None, teacher=teacher)
    if resume_dir:
        for name in ("metrics.jsonl", "last.pt", "best.pt"):
            shutil.copy2(work / name, folder / name)
        shutil.rmtree(work)
    net.load_state_dict(result.best_state)
    if train.augment and len(input_shape) == 3 and train.augment.transforms:
        preview = preview_png(Augmenter(train.augment, seed, True), preview_images(data["train"]))
        (folder / "augment_preview.png").write_bytes(preview)
    describe(folder, model.model_dump(mode="json"), input_shape, classes,
             best_epoch=result.best_epoch, epochs_run=len(result.history),
             stopped_early=result.stopped_early, batch_size=result.batch_size,
             compute=compute.record(choice),
             **({"aux_targets": aux_targets} if aux_targets else {}),
             **({"adversarial": train.adversarial.model_dump()} if train.adversarial else {}))
    return net, result


def preview_images(train: Split | Stream, count: int = 8) -> torch.Tensor:
    if isinstance(train, Split):
        return train.x[:count]
    return next(iter(train.epoch(0, count, seed=0)))[0]


def describe(folder: Path, model: dict, input_shape: list[int], classes: list[str],
             **extra: Any) -> None:
    info = {"model": model, "input_shape": input_shape, "classes": classes, **extra}
    (folder / "model.json").write_text(json.dumps(info, indent=1, sort_keys=True))


def load_model(ref: ArtifactRef) -> tuple[nn.Module, dict]:
    """Rebuild a model artifact's network and load its weights (weights_only)."""
    ref.verify()
    return build_from_folder(ref.path, "model"), json.loads((ref.path / "model.json").read_text())


def build_from_folder(folder: Path, where: str) -> nn.Module:
    """The network a model folder describes (model.json), with its best.pt weights, in eval
    mode; `where` names the spec field that pointed at it, for errors."""
    info = json.loads((Path(folder) / "model.json").read_text())
    try:
        params = registry.MODELS[info["model"]["type"]].params(**info["model"])
    except (KeyError, ValueError) as exc:
        raise TrainflowError(f"{where}: {folder}/model.json does not describe a model this "
                             f"version can build: {exc}") from None
    net = build_model(params, info["input_shape"], len(info["classes"]), info.get("aux_targets"))
    if "quantized" in info:  # int8 weights load into the quantized form of the network
        kind = info["quantized"]
        net = registry.QUANTIZERS[kind].impl(net, registry.QUANTIZERS[kind].params(type=kind))
    net.load_state_dict(checkpoint.load(Path(folder) / WEIGHTS)["model"])
    return net.eval()


def score(net: nn.Module, data: Split, num_classes: int, batch_size: int = 256,
          device: str = "cpu") -> tuple[dict, np.ndarray]:
    """Classification metrics and class probabilities of `net` on `data`."""
    loss, probs = predict(net, data, batch_size, resolve_device(device))
    metrics = classification_metrics(data.y.numpy(), probs.numpy(), num_classes)
    return {"loss": loss, **metrics}, probs.numpy()
