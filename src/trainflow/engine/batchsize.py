"""Batch sizes that change: the largest batch that fits a memory budget (found before
training), and a ramp from a small batch up to the declared one over the first epochs."""

from __future__ import annotations

import torch
from torch import nn

from trainflow.errors import TrainflowError


def ramped(epoch: int, start: int, full: int, epochs: int) -> int:
    """The batch size of `epoch` (1-based): `start` in the first epoch, rising linearly to
    `full` at epoch `epochs + 1` and staying there."""
    if epoch > epochs:
        return full
    return round(start + (full - start) * (epoch - 1) / epochs)


def _saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward pass of one forward on `x`."""
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(x)
    return total


def largest_batch(
    model: nn.Module,
    x: torch.Tensor,
    start: int,
    maximum: int,
    memory_mb: float,
    device: torch.device,
) -> int:
    """The largest batch size start * 2^k (<= maximum, <= len(x)) whose training step fits
    in `memory_mb`: weights, gradients and two optimizer moments, plus the activations
    autograd saves, measured per sample at two batch sizes (so tensors saved once per batch,
    such as weights, are not counted per sample). On CUDA the choice is then tried for real,
    halving on out-of-memory. The model, its buffers and the RNG are left as they were."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    was_training = model.training
    model.train()
    try:
        k = max(1, min(8, len(x) // 2))
        one = _saved_bytes(model, x[:k].to(device))
        two = _saved_bytes(model, x[: 2 * k].to(device))
        per_sample = max(two - one, 0) / k + x[0].numel() * x.element_size()
        fixed = (
            one - per_sample * k + 4 * sum(p.numel() * p.element_size() for p in model.parameters())
        )
        budget = memory_mb * 2**20
        if fixed + per_sample * start > budget:
            raise TrainflowError(
                f"train.auto_batch: even batch_size {start} needs about "
                f"{(fixed + per_sample * start) / 2**20:.0f} MiB, over memory_mb {memory_mb:g}"
            )
        size = start
        while size * 2 <= min(maximum, len(x)) and fixed + per_sample * size * 2 <= budget:
            size *= 2
        while device.type == "cuda" and size > start and not _fits(model, x[:size], device):
            size //= 2
        return size
    finally:
        model.load_state_dict(state)
        model.train(was_training)
        torch.set_rng_state(rng)


def _fits(model: nn.Module, x: torch.Tensor, device: torch.device) -> bool:
    try:
        model(x.to(device)).float().sum().backward()
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
