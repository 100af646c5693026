"""Knowledge distillation: a student learns from a teacher's softened class probabilities,
mixed with the hard-label loss (Hinton et al. 2015)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from trainflow.engine.model_folder import build_from_folder
from trainflow.errors import TrainflowError


def load_teacher(path: str | Path, input_shape: list[int], classes: list[str]) -> nn.Module:
    """The teacher model from a trainflow model folder (model.json + best.pt), checked to
    read the same inputs and predict the same classes as the student."""
    folder = Path(path)
    if not (folder / "model.json").is_file():
        raise TrainflowError(
            f"train.distill.teacher: {folder} is not a trainflow model folder "
            "(no model.json); give the folder of a trained model artifact"
        )
    info = json.loads((folder / "model.json").read_text())
    if len(info["classes"]) != len(classes):
        raise TrainflowError(
            f"train.distill.teacher: the teacher predicts "
            f"{len(info['classes'])} classes {info['classes']}, the student "
            f"{len(classes)} {classes}: their outputs must have the same size"
        )
    if info["classes"] != classes:
        raise TrainflowError(
            f"train.distill.teacher: the teacher's classes {info['classes']} "
            f"differ from the data's {classes} (names or order)"
        )
    if info["input_shape"] != list(input_shape):
        raise TrainflowError(
            f"train.distill.teacher: the teacher reads inputs of shape "
            f"{info['input_shape']}, the data has {list(input_shape)}"
        )
    teacher = build_from_folder(folder, "train.distill.teacher")
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher.eval()


class Distiller:
    """loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * hard loss, where
    `_T` are softmax probabilities at temperature T (T^2 keeps the soft gradients' scale)."""

    def __init__(self, teacher: nn.Module, temperature: float, alpha: float):
        self.teacher, self.temperature, self.alpha = teacher, temperature, alpha

    def to(self, device: torch.device) -> Distiller:
        self.teacher.to(device)
        return self

    def __call__(self, hard: torch.Tensor, student: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        with torch.no_grad():
            soft_targets = torch.log_softmax(self.teacher(x).float() / t, dim=1)
        soft = (
            nn.functional.kl_div(
                torch.log_softmax(student.float() / t, dim=1),
                soft_targets,
                reduction="batchmean",
                log_target=True,
            )
            * t
            * t
        )
        return self.alpha * soft + (1 - self.alpha) * hard
