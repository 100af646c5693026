"""Adversarial examples (FGSM, PGD in the L-infinity ball) for adversarial training and for
measuring robust accuracy. Epsilon is in the units of the model's inputs (after the data
steps' normalization)."""

from __future__ import annotations

import torch
from torch import nn


def attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    method: str,
    epsilon: float,
    steps: int | None = None,
    step_size: float | None = None,
) -> torch.Tensor:
    """Inputs within `epsilon` (max-norm) of `x` that raise the model's loss on `y`.

    FGSM is one signed-gradient step of size epsilon; PGD starts at a random point of the
    ball and takes `steps` (default 7) signed steps of `step_size` (default 2.5 * epsilon / steps),
    projected back into the ball after each. The model is put in eval mode while attacking
    (no dropout, no batch-norm statistics updates) and restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        if method == "fgsm":
            return _signed_step(model, x, y, x, epsilon, epsilon)
        steps = steps or 7
        size = step_size or 2.5 * epsilon / steps
        adv = x + torch.empty_like(x).uniform_(-epsilon, epsilon)
        for _ in range(steps):
            adv = _signed_step(model, adv, y, x, size, epsilon)
        return adv
    finally:
        for module, training in modes:  # exactly as before (frozen norms stay in eval)
            module.training = training


def _signed_step(
    model: nn.Module,
    adv: torch.Tensor,
    y: torch.Tensor,
    origin: torch.Tensor,
    size: float,
    epsilon: float,
) -> torch.Tensor:
    adv = adv.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = nn.functional.cross_entropy(model(adv).float(), y)
        (grad,) = torch.autograd.grad(loss, adv)
    moved = adv.detach() + size * grad.sign()
    return torch.max(torch.min(moved, origin + epsilon), origin - epsilon)


def robust_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    method: str,
    epsilon: float,
    steps: int | None = None,
    step_size: float | None = None,
    batch_size: int = 256,
) -> float:
    """Accuracy on adversarial versions of (x, y) made against this model."""
    correct = 0
    for start in range(0, len(y), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        adv = attack(model, xb, yb, method, epsilon, steps, step_size)
        with torch.no_grad():
            correct += int((model(adv).argmax(1) == yb).sum())
    return correct / max(len(y), 1)
