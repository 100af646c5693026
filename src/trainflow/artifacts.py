"""ArtifactRef and the content-addressed store: atomic writes, fingerprints, verification."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from trainflow.errors import ArtifactError

Kind = Literal["table", "splits", "shards", "model", "folds", "report", "metrics"]
TMP_PREFIX = ".tmp-"
VIEW_FILE = "view.json"  # an artifact holding this is a view over another artifact of its store


class ArtifactRef(BaseModel):
    """What tasks pass to each other: where an artifact is and what it holds, never the data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str
    fingerprint: str
    kind: Kind
    count: int = 0
    data_schema: dict[str, Any] = {}
    meta: dict[str, Any] = {}

    @property
    def path(self) -> Path:
        return Path(self.uri.removeprefix("file://"))

    def verify(self) -> None:
        """Raise ArtifactError unless the artifact is present with the recorded fingerprint
        (for a view: and the artifact it is a view over, recursively)."""
        if not self.path.exists():
            raise ArtifactError(f"{self.kind} artifact is missing: {self.path}")
        actual = fingerprint_path(self.path)
        if actual != self.fingerprint:
            raise ArtifactError(
                f"{self.kind} artifact {self.path} was altered: fingerprint {actual[:12]} "
                f"does not match the recorded {self.fingerprint[:12]}"
            )
        base = self.base()
        if base is not None:
            base.verify()

    def base(self) -> ArtifactRef | None:
        """The artifact this one is a view over (same store), or None for stored data.

        A view holds a step's fitted state instead of its output rows; readers apply the step
        to the base's rows. Its `view.json` names the base by kind and fingerprint only, so a
        store can move without breaking its views."""
        view = self.path / VIEW_FILE
        if not view.is_file():
            return None
        try:
            base = json.loads(view.read_text())["base"]
            kind, fingerprint = base["kind"], base["fingerprint"]
            if not re.fullmatch(r"[0-9a-f]{64}", fingerprint):
                raise ValueError(f"base fingerprint {fingerprint!r} is not a sha256")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(f"{view} is not a readable view ({exc})") from None
        return ArtifactRef(uri=str(self.path.parent.parent / kind / fingerprint),
                           fingerprint=fingerprint, kind=kind)

    def is_valid(self) -> bool:
        try:
            self.verify()
        except ArtifactError:
            return False
        return True


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fingerprint_path(path: Path) -> str:
    """sha256 of a file, or of the sorted (relative path, file sha256) list of a folder."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def _fsync_files(folder: Path) -> None:
    for file in folder.rglob("*"):
        if file.is_file():
            with open(file, "rb+") as handle:
                os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, fsync, rename: old file or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_temporaries(folder: Path) -> int:
    """Remove temporaries left by processes that no longer run; returns how many were removed."""
    removed = 0
    if not folder.exists():
        return 0
    for tmp in folder.rglob(f"{TMP_PREFIX}*"):
        try:
            pid = int(tmp.name[len(TMP_PREFIX):].split("-", 1)[0])
        except ValueError:
            continue
        if pid == os.getpid() or _pid_alive(pid):
            continue
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        removed += 1
    return removed


class Store:
    """A folder of immutable artifacts, each under `<kind>/<fingerprint>`, written atomically."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    @contextmanager
    def writer(self, kind: Kind) -> Iterator[Path]:
        """Yield an empty temporary folder; on success it is moved to its content address.

        Use `commit` inside the block to obtain the ref; anything left when the block raises
        is removed, so a failed task leaves nothing half-written in the store.
        """
        staging = self.root / kind / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
        staging.mkdir(parents=True)
        try:
            yield staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def commit(self, staging: Path, kind: Kind, count: int = 0, schema: dict | None = None,
               meta: dict | None = None) -> ArtifactRef:
        with ThreadPoolExecutor(1) as pool:  # flushing to disk and hashing overlap
            synced = pool.submit(_fsync_files, staging)
            fingerprint = fingerprint_path(staging)
            synced.result()
        final = self.root / kind / fingerprint
        if final.exists() and fingerprint_path(final) == fingerprint:
            shutil.rmtree(staging)
        else:
            if final.exists():  # damaged copy of the same content: replace it
                shutil.rmtree(final)
            os.replace(staging, final)
            _fsync_dir(final.parent)
        return ArtifactRef(uri=str(final), fingerprint=fingerprint, kind=kind, count=count,
                           data_schema=schema or {}, meta=meta or {})

    def sweep(self) -> int:
        return sweep_temporaries(self.root)
