"""Checkpoints: atomic torch.save, loaded with weights_only=True only; resumable training
state rotates through last.pt, last.prev.pt, last.prev2.pt, ... (the K most recent), each with
a sha256 beside it."""

from __future__ import annotations

import io
import logging
import os
import time
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
        raise ArtifactError(f"cannot load checkpoint {path}: {_why(exc)}") from None
    if not isinstance(payload, dict) or "model" not in payload:
        raise ArtifactError(f"{path} is not a trainflow checkpoint (no 'model' state)")
    return payload


def _why(exc: Exception) -> str:
    """torch's reason in one line; for a refused object, without its advice to load with
    weights_only=False (that would run whatever the file holds)."""
    text = str(exc).strip()
    if "Weights only load failed" in text:
        detail = text.partition("WeightsUnpickler error:")[2].strip().split(". ")[0]
        return (
            "it holds an object that weights_only loading refuses"
            + (f" ({detail.splitlines()[0]})" if detail else "")
            + "; trainflow loads tensors and plain data only"
        )
    return text.splitlines()[0] if text else type(exc).__name__


def older(path: Path, age: int) -> Path:
    """The rotation's file `age` checkpoints back: last.pt, last.prev.pt, last.prev2.pt, ..."""
    if age == 0:
        return path
    return path.with_name(f"{path.stem}.prev{age if age > 1 else ''}{path.suffix}")


def _digest(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def rotation(path: Path) -> list[Path]:
    """The rotation's files (or their digests) that exist, newest first."""
    ages = {0} if path.is_file() or _digest(path).is_file() else set()
    prefix = f"{path.stem}.prev"
    for found in path.parent.glob(f"{prefix}*{path.suffix}*"):
        tag = found.name[len(prefix) :].split(".")[0]
        if tag == "" or tag.isdigit():
            ages.add(int(tag or 1))
    return [older(path, age) for age in sorted(ages)]


def save_rotating(path: Path, payload: dict[str, Any], keep: int = 2) -> None:
    """Write `path` with its sha256, keeping the `keep - 1` checkpoints before it as
    `<name>.prev.pt`, `<name>.prev2.pt`, ... (older ones are deleted)."""
    path = Path(path)
    for stale in rotation(path):
        if stale != path and int(stale.stem.rsplit("prev", 1)[1] or 1) >= keep - 1:
            stale.unlink(missing_ok=True)  # it would be shifted beyond `keep`
            _digest(stale).unlink(missing_ok=True)
    for age in range(keep - 1, 0, -1):  # shift each one back, oldest first
        source, target = older(path, age - 1), older(path, age)
        if source.is_file() and _digest(source).is_file():
            os.replace(_digest(source), _digest(target))
            os.replace(source, target)
    save(path, payload)
    atomic_write_text(_digest(path), sha256_file(path))


def load_latest_good(path: Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The newest intact checkpoint of a rotation: one whose sha256 matches and that loads
    (weights_only) with every `required` key (state.TrainingState.PIECES for a resume). Older
    ones stand in for damaged ones, with a warning; an ArtifactError lists every file's
    problem when none is usable."""
    path, problems = Path(path), []
    for candidate in rotation(path) or [path]:
        problem, payload = _check(candidate, required)
        if problem:
            problems.append(f"{candidate}: {problem}")
            continue
        assert payload is not None  # (no problem: loaded)
        if problems:
            log.warning(
                "checkpoint %s; resuming from the previous one, %s", "; ".join(problems), candidate
            )
        return payload
    raise ArtifactError("no intact checkpoint to resume from: " + "; ".join(problems))


def _check(candidate: Path, required: tuple[str, ...]) -> tuple[str | None, dict | None]:
    """(what is wrong with a rotation file, None) or (None, its loaded state)."""
    digest = _digest(candidate)
    if not candidate.is_file() or not digest.is_file():
        return "missing", None
    if digest.read_bytes().strip() != sha256_file(candidate).encode():
        return "damaged (sha256 differs)", None
    try:
        payload = load(candidate)
    except ArtifactError as exc:
        reason = str(exc).removeprefix(f"cannot load checkpoint {candidate}: ")
        return f"unreadable ({reason})", None
    absent = [key for key in required if key not in payload]
    if absent:
        return f"not a resumable training state (no {', '.join(absent)})", None
    return None, payload


def set_aside(folder: Path) -> Path:
    """Rename a resume folder that holds no usable checkpoint to a name beside it
    (`<name>.broken-<UTC time>`), so that the next run starts afresh and nothing is lost for
    a look at what went wrong."""
    folder = Path(folder)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = folder.with_name(f"{folder.name}.broken-{stamp}")
    suffix = 1
    while aside.exists():
        aside, suffix = folder.with_name(f"{folder.name}.broken-{stamp}-{suffix}"), suffix + 1
    os.replace(folder, aside)
    return aside


def drop_rotation(path: Path) -> None:
    """After a finished run: only `path` stays (the older copies and digests were for
    recovering from a crash)."""
    for extra in rotation(path):
        if extra != path:
            extra.unlink(missing_ok=True)
        _digest(extra).unlink(missing_ok=True)


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

    def save(self, path: Path, payload: dict[str, Any], keep: int = 2) -> None:
        self.wait()
        self._pending = self._pool.submit(save_rotating, path, snapshot(payload), keep)

    def wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown()
