"""Checks across the model and train sections that need the data's shape, made before any
training runs (the pipeline's preflight and the train task both call them)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from trainflow.errors import TrainflowError
from trainflow.spec.train import TrainSpec

RECURRENT = ("rnn", "lstm", "gru")
# The smallest input each architecture takes, for an estimate made before the data is read:
# a lower bound, so a model refused on it is too big for any data.
SMALLEST_INPUT = {
    "mlp": [1],
    "cnn": [1, 1, 1],
    "rnn": [1, 1],
    "lstm": [1, 1],
    "gru": [1, 1],
    "transformer": [1],
}
# The fields that make each architecture big, named in the message.
SIZE_FIELDS = {
    "mlp": ("hidden_layers", "units"),
    "cnn": ("channels", "hidden"),
    "rnn": ("hidden", "layers"),
    "lstm": ("hidden", "layers"),
    "gru": ("hidden", "layers"),
    "transformer": ("d_model", "ff", "layers"),
}
# fp32 bytes per parameter besides its weight, its gradient and the best weights kept.
OPTIMIZER_STATE = {"adam": 8, "adamw": 8, "adadelta": 8, "adagrad": 4}


def check_model_and_training(
    model: Any,
    train: TrainSpec,
    input_shape: list[int] | None,
    aux_targets: dict[str, list[str]] | None = None,
) -> None:
    """Raise TrainflowError naming the spec paths of a model/train combination that cannot
    work on data of `input_shape` (None: not known yet, checks that need it are skipped)."""
    unknown = sorted(set(train.task_weights) - set(aux_targets or {}))
    if unknown:
        raise TrainflowError(
            f"train.task_weights: {unknown} are not auxiliary targets of the "
            f"data (data.source.aux_targets: {sorted(aux_targets or {})})"
        )
    if aux_targets and train.tbptt is not None:
        raise TrainflowError(
            "train.tbptt: multi-task heads read the whole sequence; drop "
            "train.tbptt or the auxiliary targets"
        )
    if aux_targets and train.augment and train.augment.mixup:
        raise TrainflowError(
            "train.augment.mixup blends the main target only; it cannot "
            "train the auxiliary targets' heads"
        )
    check_model_size(model, train, input_shape)
    if train.tbptt is not None:
        if model.type not in RECURRENT:
            raise TrainflowError(
                f"train.tbptt: truncated backpropagation through time needs a "
                f"recurrent model ({', '.join(RECURRENT)}); model.type is "
                f"{model.type!r}"
            )
        if model.bidirectional:
            raise TrainflowError(
                "train.tbptt: a bidirectional model reads each sequence "
                "backwards too, so its state cannot be carried forward; set "
                "model.bidirectional: false or drop train.tbptt"
            )
        steps = input_shape[0] if input_shape else None
        if steps is not None and train.tbptt >= steps:
            raise TrainflowError(
                f"train.tbptt: the window ({train.tbptt} steps) is not shorter "
                f"than the sequences ({steps} steps), so nothing is truncated"
            )


def check_model_size(model: Any, train: TrainSpec, input_shape: list[int] | None) -> None:
    """Refuse a model whose training cannot fit this machine's memory, before any work: the
    parameters counted from the builder's shapes on the meta device (nothing allocated)."""
    params = count_parameters(model, input_shape or SMALLEST_INPUT.get(model.type, [1]))
    if params is None:
        return
    need = params * bytes_per_parameter(train)
    have, where = memory_available(train.device)
    if need <= have:
        return
    fields = ", ".join(
        f"model.{f}: {getattr(model, f)}"
        for f in SIZE_FIELDS.get(model.type, ())
        if hasattr(model, f)
    )
    lower = " or ".join(f"model.{f}" for f in SIZE_FIELDS.get(model.type, ("units",)))
    raise TrainflowError(
        f"model: this {model.type} has {params:,} parameters ({fields}); training it needs at "
        f"least {_size(need)} (fp32 weights, gradients, {train.optimizer.type} optimizer "
        f"state and the best weights kept) but {where} has {_size(have)} available; make the "
        f"model smaller (lower {lower})"
    )


def count_parameters(model: Any, input_shape: list[int], num_classes: int = 2) -> int | None:
    """Parameters of the declared architecture, built on the meta device (shapes only); None
    when the builder refuses the shape (the real build names that problem)."""
    import torch

    from trainflow import registry

    kwargs = model.builder_kwargs()
    # Neither changes the count; spectral norm's power iteration is slow even on meta tensors.
    kwargs.update({k: v for k, v in (("init", "default"), ("spectral_norm", False)) if k in kwargs})
    try:
        with torch.device("meta"):
            net = registry.MODELS[model.type].impl(list(input_shape), num_classes, **kwargs)
    except (ValueError, RuntimeError, NotImplementedError, TypeError):
        return None
    return sum(p.numel() for p in net.parameters())


def bytes_per_parameter(train: TrainSpec) -> int:
    optimizer = train.optimizer
    state = OPTIMIZER_STATE.get(optimizer.type, 0)
    if optimizer.type in ("sgd", "rmsprop") and getattr(optimizer, "momentum", 0):
        state += 4
    if optimizer.type == "rmsprop":
        state += 4 + (4 if optimizer.centered else 0)
    return 4 * 3 + state


def memory_available(device: str) -> tuple[int, str]:
    """Bytes training may use, and where: the CUDA device's memory when training runs there,
    else the memory the OS reports available."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        return torch.cuda.mem_get_info()[1], "the CUDA device"
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "this machine"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine"


def _size(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:,.0f} {unit}" if unit == "bytes" else f"{count:,.1f} {unit}"
        count /= 1024
    return f"{count:,.1f} PiB"
