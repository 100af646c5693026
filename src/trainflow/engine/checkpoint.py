"""Checkpoints: atomic torch.save, loaded with weights_only=True only; resumable training
state rotates through last.pt and last.prev.pt, each with a sha256 beside it."""

from __future__ import annotations

import io
import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from trainflow.artifacts import atomic_write_bytes, atomic_write_text, sha256_file
from trainflow.errors import ArtifactError

log = logging.getLogger("trainflow")


def save(path: Path, payload: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load(path: Path) -> dict[str, Any]:
    if not Path(path).is_file():
        raise ArtifactError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for damaged or unsafe files
        raise ArtifactError(f"cannot load checkpoint {path}: {exc}") from None
    if not isinstance(payload, dict) or "model" not in payload:
        raise ArtifactError(f"{path} is not a trainflow checkpoint (no 'model' state)")
    return payload


def _previous(path: Path) -> Path:
    return path.with_name(path.stem + ".prev" + path.suffix)


def _digest(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def save_rotating(path: Path, payload: dict[str, Any]) -> None:
    """Write `path` with its sha256, keeping the checkpoint it replaces as `<name>.prev.pt`."""
    path = Path(path)
    if path.is_file() and _digest(path).is_file():
        os.replace(_digest(path), _digest(_previous(path)))
        os.replace(path, _previous(path))
    save(path, payload)
    atomic_write_text(_digest(path), sha256_file(path))


def load_latest_good(path: Path) -> dict[str, Any]:
    """The newest intact checkpoint of a rotation: `path` if its sha256 matches, else the
    previous one, with a warning; an ArtifactError when neither is usable."""
    path, problems = Path(path), []
    for candidate in (path, _previous(path)):
        digest = _digest(candidate)
        if not candidate.is_file() or not digest.is_file():
            problems.append(f"{candidate}: missing")
        elif sha256_file(candidate) != digest.read_text().strip():
            problems.append(f"{candidate}: damaged (sha256 differs)")
        else:
            if problems:
                log.warning("checkpoint %s; resuming from the previous one, %s",
                            problems[0], candidate)
            return load(candidate)
    raise ArtifactError("no intact checkpoint to resume from: " + "; ".join(problems))


def drop_rotation(path: Path) -> None:
    """After a finished run: only `path` stays (the previous copy and digests were for
    recovering from a crash)."""
    for extra in (_previous(path), _digest(path), _digest(_previous(path))):
        Path(extra).unlink(missing_ok=True)


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
        self._pending = self._pool.submit(save_rotating, path, snapshot(payload))

    def wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown()
