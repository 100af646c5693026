"""The store's folder on disk: atomic writes, the marker that makes a folder a store, the
sweep of the store's own temporaries, and the one error a full disk gives."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import uuid
from collections.abc import Collection
from pathlib import Path
from typing import Literal, get_args

from trainflow.errors import TrainflowError

# A name only the store writes: the sweep removes these and nothing else.
TMP_PREFIX = ".trainflow-tmp-"
TMP_NAME = re.compile(r"\.trainflow-tmp-(\d+)-[0-9a-f]{8,32}(?:-.+)?")
SHA256 = re.compile(r"[0-9a-f]{64}")
# The kinds of artifact a store holds, each in its own folder (and `resume`, the folders of
# interrupted trainings): what a store's top level may hold.
Kind = Literal["table", "splits", "shards", "model", "folds", "report", "metrics", "package"]
STORE_FOLDERS = frozenset({*get_args(Kind), "resume"})
MARKER = ".trainflow-store"  # in every store trainflow created: it may write and sweep there
STORE_VERSION = 1
# errno values of a write that ran out of room: disk full, file size limit, quota
FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


class StoreError(TrainflowError):
    """The folder named as the store cannot be one (the filesystem root, the home folder, a
    folder of the user's own)."""


class StoreFullError(StoreError):
    """A write into the store ran out of space; nothing half-written was left behind."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def out_of_space(exc: BaseException) -> str | None:
    """Why `exc` (or an error it was raised from) is a write that ran out of room, or None.

    Python and pyarrow raise OSError with the errno; polars wraps it in its own error naming
    `(os error N)`; NumPy reports a short write without an errno."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in FULL:
            return os.strerror(seen.errno)
        text = str(seen)
        for number in FULL:
            if f"(os error {number})" in text:
                return os.strerror(number)
        if isinstance(seen, OSError) and re.search(r"\d+ requested and \d+ written", text):
            return "short write"
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    return None


def full_error(reason: str, what: str, folder: Path) -> StoreFullError:
    return StoreFullError(
        f"no space to write {what} ({reason}): free space on the disk that holds {folder} "
        "(or point outputs.store at a disk with room) and rerun; nothing was half-written and "
        "the artifacts already stored are intact"
    )


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, fsync, rename: old file or new, never half."""
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        reason = out_of_space(exc)
        if reason is None:
            raise
        raise full_error(reason, str(path), store_of(path.parent) or path.parent) from None
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:  # beyond any pid: no such process
        return False
    return True


def sweep_temporaries(root: Path) -> int:
    """Remove the store's own temporaries left by processes that no longer run; returns how
    many were removed. Only inside a marked store, only names the store writes, never
    following a link; artifacts are renamed whole from staging, so none is looked into."""
    root = Path(root)
    if not (root / MARKER).is_file():
        return 0
    removed = 0
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not SHA256.fullmatch(d)]
        for name in (*dirs, *files):
            match = TMP_NAME.fullmatch(name)
            if match is None or int(match[1]) == os.getpid() or _pid_alive(int(match[1])):
                continue
            path = Path(folder) / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed += 1
        dirs[:] = [d for d in dirs if not TMP_NAME.fullmatch(d)]
    return removed


# What a store written before stores were marked holds: it is adopted (marked) on first use.
_LEGACY_ENTRY = re.compile(r"[0-9a-f]{64}|\.tmp-\d+-[0-9a-f]{12}")


def _unused(root: Path) -> bool:
    """Empty, or holding only what a store writes as it is created (a concurrent run's)."""
    return all(entry.name.startswith(".trainflow-") for entry in root.iterdir())


def _legacy_store(root: Path, folders: Collection[str]) -> bool:
    return all(
        entry.is_dir()
        and not entry.is_symlink()
        and entry.name in folders
        and (
            entry.name == "resume"
            or all(_LEGACY_ENTRY.fullmatch(item.name) for item in entry.iterdir())
        )
        for entry in root.iterdir()
    )


def _refusal(root: Path, folders: Collection[str]) -> str | None:
    """Why `root` cannot be a store, or None."""
    try:
        home = Path.home().resolve()
    except (RuntimeError, KeyError):  # no home folder known
        home = None
    if root == Path(root.anchor):
        return "is the filesystem root"
    if root == home:
        return "is your home folder"
    if (root / MARKER).is_file():
        return _check_marker(root / MARKER)
    if root.exists() and not root.is_dir():
        return "is a file, not a folder"
    if root.is_dir() and not (_unused(root) or _legacy_store(root, folders)):
        return (
            f"is an existing folder that trainflow did not create (it holds files and no "
            f"{MARKER} marker)"
        )
    return None


def _check_marker(marker: Path) -> str | None:
    try:
        version = json.loads(marker.read_text())["trainflow_store"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"holds a {MARKER} that is not trainflow's store marker"
    if not isinstance(version, int) or version > STORE_VERSION:
        return (
            f"is a store of a newer trainflow (format {version!r}; this one reads "
            f"{STORE_VERSION}): upgrade trainflow"
        )
    return None


def open_store(root: Path, folders: Collection[str]) -> None:
    """Make sure `root` is a trainflow store: create and mark a missing or empty folder (or
    one holding only the `folders` of an unmarked store of an older trainflow), refuse any
    other: the sweep and the writers then touch only what the store wrote."""
    refusal = _refusal(root, folders)
    if refusal is not None:
        example = (root if root.is_dir() else root.parent) / ".trainflow"
        raise StoreError(
            f"outputs.store: {root} {refusal}; trainflow keeps its artifacts in a "
            "folder of its own: set outputs.store to a new or empty folder (for "
            f"example {example})"
        )
    if (root / MARKER).is_file():
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = out_of_space(exc)
        if reason is not None:
            raise full_error(reason, f"the store folder {root}", root.parent) from None
        raise StoreError(
            f"outputs.store: cannot create the store folder {root} "
            f"({exc.strerror or exc}): choose a folder you may write to"
        ) from None
    atomic_write_text(root / MARKER, json.dumps({"trainflow_store": STORE_VERSION}) + "\n")


def store_of(path: Path) -> Path | None:
    """The store a path lies in (the nearest folder above it with the marker), or None."""
    for folder in (path, *path.parents):
        if (folder / MARKER).is_file():
            return folder
    return None
