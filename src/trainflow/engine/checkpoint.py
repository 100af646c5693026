"""Checkpoints: atomic torch.save, loaded with weights_only=True only."""

from __future__ import annotations

import io
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
