"""Interrupt a training right after its optimizer step N, from outside the loop (the loop has
no hook for tests): torch's global optimizer-step hook counts the steps, and torch's global
forward pre-hook acts at the first forward pass after step N (the next batch, or the epoch's
validation). By then the loop has done all it does after a step: its checkpoint is written,
or handed to the background writer, and its per-step row is logged."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch.nn.modules.module import register_module_forward_pre_hook
from torch.optim.optimizer import register_optimizer_step_post_hook


@contextmanager
def after_step(step: int, action: Callable[[], None]) -> Iterator[None]:
    """Run `action` once, as the first forward pass after optimizer step `step` begins."""
    steps, fired = [0], [False]

    def count(optimizer, args, kwargs) -> None:
        steps[0] += 1

    def act(module, args) -> None:
        if steps[0] == step and not fired[0]:
            fired[0] = True
            action()

    counting = register_optimizer_step_post_hook(count)
    acting = register_module_forward_pre_hook(act)
    try:
        yield
    finally:
        counting.remove()
        acting.remove()
