"""Checkpoints: atomic torch.save, loaded with weights_only=True only."""

from __future__ import annotations

import io
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from trainflow.artifacts import atomic_write_bytes
from trainflow.errors import ArtifactError


def save(path: Path, payload: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load(path: Path) -> dict[str, Any]:
    if not Path(path).is_file():
        raise ArtifactError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for damaged or unsafe files
        raise ArtifactError(f"cannot load checkpoint {path}: {exc}") from None


def snapshot(value: Any) -> Any:
    """A copy of a (nested) state dict whose tensors training can no longer change."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: snapshot(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(snapshot(v) for v in value)
    return value


class BackgroundWriter:
    """Writes checkpoints on one background thread, so training does not wait for the disk.

    At most one write is in flight; `save` waits for the previous one, and `close` for the last.
    A write's error surfaces at the next `save` or at `close`.
    """

    def __init__(self):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._pending: Future | None = None

    def save(self, path: Path, payload: dict[str, Any]) -> None:
        self.wait()
        self._pending = self._pool.submit(save, path, snapshot(payload))

    def wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown()
