"""Checks across the model and train sections that need the data's shape, made before any
training runs (the pipeline's preflight and the train task both call them)."""

from __future__ import annotations

from typing import Any

from trainflow.errors import TrainflowError
from trainflow.spec.train import TrainSpec

RECURRENT = ("rnn", "lstm", "gru")


def check_model_and_training(model: Any, train: TrainSpec, input_shape: list[int] | None,
                             aux_targets: dict[str, list[str]] | None = None) -> None:
    """Raise TrainflowError naming the spec paths of a model/train combination that cannot
    work on data of `input_shape` (None: not known yet, checks that need it are skipped)."""
    unknown = sorted(set(train.task_weights) - set(aux_targets or {}))
    if unknown:
        raise TrainflowError(f"train.task_weights: {unknown} are not auxiliary targets of the "
                             f"data (data.source.aux_targets: {sorted(aux_targets or {})})")
    if aux_targets and train.tbptt is not None:
        raise TrainflowError("train.tbptt: multi-task heads read the whole sequence; drop "
                             "train.tbptt or the auxiliary targets")
    if aux_targets and train.augment and train.augment.mixup:
        raise TrainflowError("train.augment.mixup blends the main target only; it cannot "
                             "train the auxiliary targets' heads")
    if train.tbptt is not None:
        if model.type not in RECURRENT:
            raise TrainflowError(f"train.tbptt: truncated backpropagation through time needs a "
                                 f"recurrent model ({', '.join(RECURRENT)}); model.type is "
                                 f"{model.type!r}")
        if model.bidirectional:
            raise TrainflowError("train.tbptt: a bidirectional model reads each sequence "
                                 "backwards too, so its state cannot be carried forward; set "
                                 "model.bidirectional: false or drop train.tbptt")
        steps = input_shape[0] if input_shape else None
        if steps is not None and train.tbptt >= steps:
            raise TrainflowError(f"train.tbptt: the window ({train.tbptt} steps) is not shorter "
                                 f"than the sequences ({steps} steps), so nothing is truncated")
