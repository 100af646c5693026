"""A trained model as a folder: model.json (how to build the network), best.pt (its
weights), and the network rebuilt from them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from trainflow import registry
from trainflow.artifacts import ArtifactRef
from trainflow.engine import checkpoint
from trainflow.errors import TrainflowError
from trainflow.models.multitask import MultiTask, share_parameters

WEIGHTS = "best.pt"


def build_model(
    model: Any,
    input_shape: list[int],
    num_classes: int,
    aux_targets: dict[str, list[str]] | None = None,
) -> nn.Module:
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


def describe(
    folder: Path, model: dict, input_shape: list[int], classes: list[str], **extra: Any
) -> None:
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
        raise TrainflowError(
            f"{where}: {folder}/model.json does not describe a model this version can build: {exc}"
        ) from None
    outputs = 1 if info.get("task") == "regression" else len(info["classes"])  # one number
    net = build_model(params, info["input_shape"], outputs, info.get("aux_targets"))
    if "quantized" in info:  # int8 weights load into the quantized form of the network
        kind = info["quantized"]
        params = registry.QUANTIZERS[kind].params(**info.get("quantize_params", {"type": kind}))
        net = registry.QUANTIZERS[kind].impl(net, params)
    net.load_state_dict(checkpoint.load(Path(folder) / WEIGHTS)["model"])
    return net.eval()
