"""A regression's target as the loss sees it: scaled by the training rows' mean and standard
deviation (train.target_scaling: standard), and its loss (train.loss: mse, huber, l1).

The network learns the scaled target (a unit-scale output trains at the usual learning
rates whatever the target's units); every metric and prediction is turned back into the
target's own units (`original`), and model.json keeps the two numbers, so a package
predicts in those units too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from trainflow.errors import TrainflowError

LOSSES: dict[str, Callable[..., Any]] = {
    "mse": nn.functional.mse_loss,
    "l1": nn.functional.l1_loss,
    "huber": nn.functional.huber_loss,
}


@dataclass(frozen=True)
class TargetScale:
    """y_scaled = (y - mean) / std; `none` is mean 0, std 1."""

    mean: float = 0.0
    std: float = 1.0

    @classmethod
    def fit(cls, y: np.ndarray, method: str) -> TargetScale:
        """Fitted on the training rows' target only (never validation or test)."""
        y = np.asarray(y, np.float64)
        if method == "none" or not len(y):
            return cls()
        if not np.isfinite(y).all():
            raise TrainflowError(
                f"the training target holds {int((~np.isfinite(y)).sum())} missing or "
                "infinite value(s): add a `clean` step before `split` (it drops rows "
                "without a label)"
            )
        std = float(y.std())
        return cls(float(y.mean()), std if std > 0 else 1.0)  # a constant target: shift only

    @classmethod
    def from_json(cls, saved: dict | None) -> TargetScale:
        return cls(**saved) if saved else cls()

    def to_json(self) -> dict:
        return asdict(self)

    def scaled(self, y: torch.Tensor) -> torch.Tensor:
        """float32 (y - mean) / std, computed in float64 (a target far from zero keeps its
        digits)."""
        return ((y.double() - self.mean) / self.std).float()

    def original(self, z: torch.Tensor | np.ndarray) -> np.ndarray:
        """The network's outputs (N, 1) or (N,) as the target's own numbers, float64 (N,)."""
        z = z.detach().cpu().numpy() if isinstance(z, torch.Tensor) else np.asarray(z)
        return np.asarray(z, np.float64).reshape(len(z)) * self.std + self.mean


@dataclass(frozen=True)
class Regression:
    """What a regression trains with: its target's scaling and its loss."""

    scale: TargetScale
    loss: str = "mse"
    delta: float = 1.0  # huber's

    def loss_of(
        self, out: torch.Tensor, target: torch.Tensor, w: torch.Tensor | None
    ) -> torch.Tensor:
        """The batch's mean loss against `target`, the scaled target (`scale.scaled`, taken
        on the CPU in float64: MPS has no float64), weighted by `w` where given."""
        predicted, target = out.float().reshape(len(out)), target.float()
        extra = {"delta": self.delta} if self.loss == "huber" else {}
        if w is None:
            return LOSSES[self.loss](predicted, target, **extra)
        per_row = LOSSES[self.loss](predicted, target, reduction="none", **extra)
        return (per_row * w).sum() / w.sum().clamp_min(1e-12)


def regression_from_spec(train, y: np.ndarray) -> Regression:
    """The train section's loss and scaling (fitted on the training target `y`)."""
    loss = train.loss.type if train.loss is not None else "mse"
    delta = train.loss.delta if train.loss is not None and train.loss.delta else 1.0
    return Regression(TargetScale.fit(y, train.target_scaling), loss, delta)


def training_target(batches: Iterable) -> np.ndarray:
    """The target of every training row, from a stream's batches (x, y, ...)."""
    found = [np.asarray(batch[1], np.float64) for batch in batches]
    return np.concatenate(found) if found else np.zeros(0)


def epoch_figures(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """val_rmse, val_mae and val_r2 of one epoch (numpy: the loop computes them per epoch;
    the evaluate task's figures come from scikit-learn, trainflow.metrics)."""
    if not len(truth):
        return {"val_rmse": float("nan"), "val_mae": float("nan"), "val_r2": float("nan")}
    error = predicted - truth
    spread = float(((truth - truth.mean()) ** 2).sum())
    return {
        "val_rmse": float(np.sqrt(np.mean(error**2))),
        "val_mae": float(np.mean(np.abs(error))),
        "val_r2": 1.0 - float((error**2).sum()) / spread if spread > 0 else float("nan"),
    }


def regression_of(info: dict) -> Regression | None:
    """A model folder's regression (its model.json), or None for a classifier."""
    if info.get("task") != "regression":
        return None
    loss = info.get("loss") or {}
    return Regression(
        TargetScale.from_json(info.get("target_scale")),
        loss.get("type", "mse"),
        loss.get("delta", 1.0),
    )
