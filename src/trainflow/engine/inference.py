"""Evaluation on a split held in memory: mean loss and class probabilities, classification
metrics, the accuracy of each auxiliary head of a multi-task model, and a regression's
predictions in the target's units."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from trainflow.calibration import Decision, decide
from trainflow.engine.data import Split
from trainflow.engine.setup import resolve_device
from trainflow.engine.target_scale import Regression
from trainflow.metrics import classification_metrics, regression_metrics


@torch.no_grad()
def predict_logits(
    model: nn.Module, data: Split, batch_size: int, device: torch.device
) -> tuple[float, torch.Tensor]:
    """Mean cross-entropy and float logits (N, classes) on CPU."""
    model.eval()
    losses, logits = [], []
    for start in range(0, len(data), batch_size):
        x, y = data.x[start : start + batch_size], data.y[start : start + batch_size]
        z = model(x.to(device))
        losses.append(nn.functional.cross_entropy(z, y.to(device), reduction="sum"))
        logits.append(z.float().cpu())
    loss = torch.stack(losses).sum().item() / max(len(data), 1) if losses else float("nan")
    return loss, torch.cat(logits) if logits else torch.zeros(0)


def predict(
    model: nn.Module, data: Split, batch_size: int, device: torch.device
) -> tuple[float, torch.Tensor]:
    """Mean cross-entropy and class probabilities (N, classes) on CPU."""
    loss, logits = predict_logits(model, data, batch_size, device)
    return loss, torch.softmax(logits, dim=1) if len(logits) else logits


@torch.no_grad()
def predict_values(
    model: nn.Module, data: Split, batch_size: int, device: torch.device, regression: Regression
) -> tuple[float, np.ndarray]:
    """A regression's mean loss (on the scaled target, as training computes it) and its
    predictions in the target's own units, float64 (N,)."""
    model.eval()
    total, outputs = 0.0, []
    for start in range(0, len(data), batch_size):
        x, y = data.x[start : start + batch_size], data.y[start : start + batch_size]
        z = model(x.to(device)).float().cpu()
        total += regression.loss_of(z, regression.scale.scaled(y), None).item() * len(y)
        outputs.append(z)
    loss = total / len(data) if len(data) else float("nan")
    return loss, regression.scale.original(torch.cat(outputs)) if outputs else np.zeros(0)


def score_regression(
    net: nn.Module,
    data: Split,
    regression: Regression,
    batch_size: int = 256,
    device: str = "cpu",
    extra: Iterable[str] = (),
    where: str = "the rows scored",
) -> tuple[dict, np.ndarray]:
    """A regression's metrics (RMSE, MAE, R², MAPE and `extra` of the metric table, in the
    target's units) and its predictions on `data`."""
    loss, predicted = predict_values(net, data, batch_size, resolve_device(device), regression)
    metrics = regression_metrics(data.y.numpy(), predicted, extra, where)
    return {"loss": loss, **metrics}, predicted


@torch.no_grad()
def aux_accuracy(
    model: nn.Module, data: Split, batch_size: int, device: torch.device, tasks: dict[str, float]
) -> dict[str, float]:
    """Accuracy of each auxiliary head on `data`."""
    assert data.aux is not None  # (multi-task data only)
    model.eval()
    correct = torch.zeros(len(tasks))
    for start in range(0, len(data), batch_size):
        _, heads = model(data.x[start : start + batch_size].to(device), heads=True)
        truth = data.aux[start : start + batch_size]
        correct += torch.stack(
            [(heads[t].argmax(1).cpu() == truth[:, i]).sum() for i, t in enumerate(tasks)]
        )
    return {t: (correct[i] / len(data)).item() for i, t in enumerate(tasks)}


def score(
    net: nn.Module,
    data: Split,
    num_classes: int,
    batch_size: int = 256,
    device: str = "cpu",
    extra: Iterable[str] = (),
    decision: Decision | None = None,
    where: str = "the rows scored",
) -> tuple[dict, np.ndarray]:
    """Classification metrics (the BASE ones, and `extra` of the metric table) and class
    probabilities of `net` on `data`; with a `decision`, of its temperature's probabilities
    and its threshold's predictions (the loss is then the calibrated probabilities')."""
    decision = decision or Decision()
    loss, logits = predict_logits(net, data, batch_size, resolve_device(device))
    if decision.temperature != 1.0 and len(logits):
        logits = logits / decision.temperature
        loss = nn.functional.cross_entropy(logits, data.y).item()
    probs = (torch.softmax(logits, dim=1) if len(logits) else logits).numpy()
    y_pred = decide(probs, decision.threshold, decision.positive) if len(probs) else None
    metrics = classification_metrics(data.y.numpy(), probs, num_classes, extra, y_pred, where)
    return {"loss": loss, **metrics}, probs
