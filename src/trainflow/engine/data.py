"""Training data in memory and what the loss makes of it: splits, mini-batches, class and
sample weights."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class Split:
    """One in-memory split: features (N, *shape) float32, labels (N,) int64, when the data
    has a weight column per-sample loss weights (N,) float32, and for multi-task data the
    auxiliary targets' labels (N, tasks) int64."""

    x: torch.Tensor
    y: torch.Tensor
    w: torch.Tensor | None = None
    aux: torch.Tensor | None = None

    @classmethod
    def from_arrays(cls, x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> Split:
        """From arrays as the shards hold them: labels (N,), or (N, 1 + tasks) with the main
        target first."""
        labels = torch.from_numpy(y)
        aux = labels[:, 1:].contiguous() if labels.dim() == 2 else None
        main = labels[:, 0].contiguous() if labels.dim() == 2 else labels
        return cls(torch.from_numpy(x), main, torch.from_numpy(w) if w is not None else None, aux)

    def __len__(self) -> int:
        return len(self.y)


def balanced_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """n / (classes * count) per class, as scikit-learn's compute_class_weight("balanced")."""
    return weights_from_counts(torch.bincount(labels, minlength=num_classes))


def weights_from_counts(counts: torch.Tensor) -> torch.Tensor:
    counts = counts.float()
    present = int((counts > 0).sum())
    return torch.where(counts > 0, counts.sum() / (present * counts.clamp(min=1)), 0.0)


def batches(
    data: Split,
    batch_size: int,
    generator: torch.Generator | None = None,
    sample_weights: torch.Tensor | None = None,
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Mini-batches (x, y), or (x, y, w) with loss weights, in a random order drawn from
    `generator`, or in order without one.

    With `sample_weights`, an epoch is len(data) draws with replacement, each row drawn with
    probability proportional to its weight (a weighted random sampler).
    """
    n = len(data)
    if sample_weights is not None:
        order = torch.multinomial(sample_weights, n, replacement=True, generator=generator)
    else:
        order = torch.randperm(n, generator=generator) if generator is not None else None
    labels = data.y if data.aux is None else torch.cat([data.y[:, None], data.aux], dim=1)
    columns = (data.x, labels) if data.w is None else (data.x, labels, data.w)
    for start in range(0, n, batch_size):
        if order is None:
            yield tuple(c[start : start + batch_size] for c in columns)
        else:
            index = order[start : start + batch_size]
            yield tuple(c[index] for c in columns)


def weighted_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    class_weights: torch.Tensor | None,
    w: torch.Tensor | None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy, weighted per class and per sample and normalized by the total weight (with
    all sample weights 1 it equals cross_entropy's weighted mean)."""
    logits = logits.float()  # the loss in fp32 also under autocast
    if w is None:
        return nn.functional.cross_entropy(
            logits, y, weight=class_weights, label_smoothing=label_smoothing
        )
    per_sample = nn.functional.cross_entropy(
        logits, y, weight=class_weights, reduction="none", label_smoothing=label_smoothing
    )
    total = w * class_weights[y] if class_weights is not None else w
    return (per_sample * w).sum() / total.sum().clamp_min(1e-12)
