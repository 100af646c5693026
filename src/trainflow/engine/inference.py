"""Evaluation on a split held in memory: mean loss and class probabilities, classification
metrics, and the accuracy of each auxiliary head of a multi-task model."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from trainflow.engine.data import Split
from trainflow.engine.setup import resolve_device
from trainflow.metrics import classification_metrics


@torch.no_grad()
def predict(
    model: nn.Module, data: Split, batch_size: int, device: torch.device
) -> tuple[float, torch.Tensor]:
    """Mean cross-entropy and class probabilities (N, classes) on CPU."""
    model.eval()
    losses, probs = [], []
    for start in range(0, len(data), batch_size):
        x, y = data.x[start : start + batch_size], data.y[start : start + batch_size]
        logits = model(x.to(device))
        losses.append(nn.functional.cross_entropy(logits, y.to(device), reduction="sum"))
        probs.append(torch.softmax(logits.float(), dim=1).cpu())
    loss = torch.stack(losses).sum().item() / max(len(data), 1) if losses else float("nan")
    return loss, torch.cat(probs) if probs else torch.zeros(0)


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
    net: nn.Module, data: Split, num_classes: int, batch_size: int = 256, device: str = "cpu"
) -> tuple[dict, np.ndarray]:
    """Classification metrics and class probabilities of `net` on `data`."""
    loss, probs = predict(net, data, batch_size, resolve_device(device))
    metrics = classification_metrics(data.y.numpy(), probs.numpy(), num_classes)
    return {"loss": loss, **metrics}, probs.numpy()
