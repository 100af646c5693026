"""Distillation as a compression step: a smaller student trained from the trained model as
teacher, on the same prepared data, through the one training loop (engine.training.train_into)
with train.distill's loss (engine.distill.Distiller)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainflow import channel_prune
from trainflow.engine.data import Split
from trainflow.engine.loop import FitResult
from trainflow.engine.model_folder import build_model
from trainflow.engine.training import train_into
from trainflow.errors import TrainflowError
from trainflow.loader import Stream
from trainflow.spec.compress import DistillSpec
from trainflow.spec.train import Distill, TrainSpec

WHERE = "compress.distill.model"


def student_spec(train: TrainSpec, params: DistillSpec, teacher: Path, used: dict | None):
    """The train section the student trains with: the run's (optimizer, lr, batch size, early
    stopping...) for `params.epochs`, distilled from the `teacher` folder at the declared
    temperature and alpha. Left out: a warm start and frozen layers (they name the teacher's
    parameters), another teacher, and distributed ranks (the student trains in this process).
    The threads and precision are those the teacher's training resolved `auto` to (its
    model.json `compute`), so no probe runs and every run trains the student alike."""
    threads = used["threads"] if used and train.threads == "auto" else train.threads
    precision = used["precision"] if used and train.precision == "auto" else train.precision
    swa = train.swa if train.swa and train.swa.start_epoch <= params.epochs else None
    return train.model_copy(
        update={
            "epochs": params.epochs,
            "fit_epochs": None,  # (train+validation: the student's epochs are params.epochs)
            "distill": Distill(
                teacher=str(teacher), temperature=params.temperature, alpha=params.alpha
            ),
            "pretrained": None,
            "freeze": [],
            "unfreeze": {},
            "distributed": None,
            "swa": swa,  # (one starting after the student's last epoch would average nothing)
            "threads": 1 if threads == "auto" else threads,  # a model from before the probe
            "precision": "fp32" if precision == "auto" else precision,
            "qat": None,  # train.qat is the teacher's: the student trains in fp32 (its epochs)
        }
    )


def check_task(schema: dict) -> None:
    """The soft targets are class probabilities: a regression's one output has none."""
    if schema.get("task", "classification") != "classification":
        raise TrainflowError(
            f"compress.distill: the data's task is {schema['task']}, and distillation "
            "matches the teacher's class probabilities (classification only): remove "
            "compress.distill"
        )


def check_student(
    student: Any, teacher: nn.Module, input_shape: list[int], classes: int, aux: dict | None
) -> dict:
    """The teacher's and the student's parameters and FLOPs per sample; TrainflowError where
    the student cannot read the teacher's inputs, predict its classes, or is not smaller."""
    try:
        net = build_model(student, input_shape, classes, aux)
        with torch.no_grad():
            out = net.eval()(torch.zeros(2, *input_shape))
    except (ValueError, RuntimeError, TypeError) as exc:
        raise TrainflowError(
            f"{WHERE}: a {student.type} student cannot read the trained model's inputs "
            f"(shape {input_shape}): {str(exc)[:200]}; choose a student family and sizes "
            "that take this data (the trained model's family does)"
        ) from None
    if tuple(out.shape) != (2, classes):
        raise TrainflowError(
            f"{WHERE}: the {student.type} student outputs shape {list(out.shape[1:])} per "
            f"row, the trained model {classes} classes: give a student that predicts classes"
        )
    sizes = {
        "before": channel_prune.sizes(teacher, input_shape),
        "after": channel_prune.sizes(net, input_shape),
    }
    ours, theirs = sizes["after"]["parameters"], sizes["before"]["parameters"]
    if ours >= theirs:
        raise TrainflowError(
            f"{WHERE}: the {student.type} student has {ours} parameters and the trained "
            f"model {theirs}: distillation compresses only into a smaller student; give "
            f"{WHERE} fewer layers or units (or remove compress.distill)"
        )
    return sizes


def train_student(
    folder: Path,
    student: Any,
    train: TrainSpec,
    seed: int,
    data: dict[str, Split | Stream],
    schema: dict,
    on_epoch: Callable[[dict], None] | None = None,
) -> tuple[nn.Module, FitResult]:
    """Train the student into `folder` (best.pt, model.json...), as the train task trains a
    model; `train` is student_spec's, whose distill names the teacher."""
    return train_into(
        folder,
        student,
        train,
        seed,
        data,
        schema["input_shape"],
        schema["classes"],
        on_epoch,
        aux_targets=schema.get("aux_targets"),
    )
