"""ArtifactRef and the content-addressed store: atomic writes, fingerprints, verification."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from trainflow.errors import ArtifactError
from trainflow.remote import bucket_of

# the store's folder and its writes live in trainflow.storage; named here for the callers
from trainflow.storage import (  # noqa: F401
    MARKER,
    SHA256,
    STORE_FOLDERS,
    TMP_PREFIX,
    Kind,
    StoreError,
    StoreFullError,
    atomic_write_bytes,
    atomic_write_text,
    fsync_dir,
    full_error,
    open_store,
    out_of_space,
    sweep_temporaries,
)

VIEW_FILE = "view.json"  # an artifact holding this is a view over another artifact of its store
# The ref's numbers as the artifact itself holds them: covered by the fingerprint, so a ref whose
# count, schema or meta differs from its artifact's (an edited result record) fails verify().
REF_FILE = "ref.json"
BACKED = ("kind", "count", "data_schema", "meta")


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
        """Raise ArtifactError unless the artifact is present with the recorded fingerprint,
        holds this ref's count, schema and meta in its ref.json, and (for a view) the artifact
        it is a view over is intact too, recursively."""
        self._verify_content()
        differ = _differences(self.backed(), self._recorded())
        if differ:
            raise ArtifactError(
                f"{self.kind} artifact {self.path}: the ref's {', '.join(differ)} differ from "
                f"what the artifact holds in {REF_FILE} (an altered result record)"
            )

    def backed(self) -> dict[str, Any]:
        """The fields ref.json holds, in their JSON form."""
        return self.model_dump(mode="json", include=set(BACKED))

    def _verify_content(self) -> None:
        bucket = bucket_of(self.path.parent.parent)  # the store's, when it is a bucket's mirror
        if bucket is not None:  # the bucket is the truth: one that lost the artifact recomputes
            problem = bucket.problem(self.kind, self.fingerprint)
            if problem is not None:
                raise ArtifactError(problem)
            if not self.path.exists():  # another machine's, or a fresh mirror: fetch it
                bucket.fetch(self.kind, self.fingerprint, self.path)
        if not self.path.exists():
            raise ArtifactError(f"{self.kind} artifact is missing: {self.path}")
        actual = fingerprint_path(self.path)
        if actual != self.fingerprint and bucket is not None and self.path.is_dir():
            shutil.rmtree(self.path)  # a damaged mirror copy: the bucket's is whole, take it
            bucket.fetch(self.kind, self.fingerprint, self.path)
            actual = fingerprint_path(self.path)
            if actual != self.fingerprint:  # altered in the bucket: the recompute republishes
                bucket.unpublish(self.kind, self.fingerprint)
        if actual != self.fingerprint:
            raise ArtifactError(
                f"{self.kind} artifact {self.path} was altered: fingerprint {actual[:12]} "
                f"does not match the recorded {self.fingerprint[:12]}"
            )
        base = self.base()
        if base is not None:  # named by fingerprint only; its own ref.json is in that content
            base._verify_content()

    def _recorded(self) -> dict[str, Any]:
        file = self.path / REF_FILE
        try:
            recorded = json.loads(file.read_text())
        except FileNotFoundError:
            raise ArtifactError(
                f"{self.kind} artifact {self.path} has no {REF_FILE} (written "
                "by an older trainflow)"
            ) from None
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{file} is not readable JSON ({exc})") from None
        if not isinstance(recorded, dict):
            raise ArtifactError(f"{file} holds no ref fields")
        return recorded

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
            if not SHA256.fullmatch(fingerprint):
                raise ValueError(f"base fingerprint {fingerprint!r} is not a sha256")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(f"{view} is not a readable view ({exc})") from None
        return ArtifactRef(
            uri=str(self.path.parent.parent / kind / fingerprint),
            fingerprint=fingerprint,
            kind=kind,
        )

    def is_valid(self) -> bool:
        try:
            self.verify()
        except ArtifactError:
            return False
        return True


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _differences(claimed: dict[str, Any], recorded: dict[str, Any]) -> list[str]:
    """The ref fields (meta entries one by one) whose values differ from the recorded ones."""
    differ = []
    for field in BACKED:
        mine, theirs = claimed[field], recorded.get(field)
        if _canon(mine) == _canon(theirs):
            continue
        if field == "meta" and isinstance(theirs, dict):
            differ += [
                f"meta.{k}"
                for k in sorted(mine.keys() | theirs.keys())
                if k not in mine or k not in theirs or _canon(mine[k]) != _canon(theirs[k])
            ]
        else:
            differ.append(field)
    return differ


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


class Store:
    """A folder of immutable artifacts, each under `<kind>/<fingerprint>`, written atomically;
    for an object store (`s3://`), the local mirror whose commits are published to the bucket.

    Opening one creates (and marks) a missing or empty folder; the filesystem root, the home
    folder and any folder of the user's own are refused with a StoreError."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        open_store(self.root, STORE_FOLDERS)
        # a local mirror of an object store (trainflow.remote): commits are published there
        self.bucket = bucket_of(self.root)

    @contextmanager
    def writer(self, kind: Kind) -> Iterator[Path]:
        """Yield an empty temporary folder; on success it is moved to its content address.

        Use `commit` inside the block to obtain the ref; anything left when the block raises
        is removed, so a failed task leaves nothing half-written in the store. A write that
        runs out of space raises one StoreFullError naming the store (never retried).
        """
        staging = self.root / kind / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
        try:
            staging.mkdir(parents=True)
            yield staging
        except StoreFullError:
            raise
        except Exception as exc:
            reason = out_of_space(exc)
            if reason is None:
                raise
            raise full_error(reason, f"a {kind} artifact", self.root) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def commit(
        self,
        staging: Path,
        kind: Kind,
        count: int = 0,
        schema: dict | None = None,
        meta: dict | None = None,
    ) -> ArtifactRef:
        draft = ArtifactRef(
            uri="",
            fingerprint="",
            kind=kind,
            count=count,
            data_schema=schema or {},
            meta=meta or {},
        )
        if (staging / REF_FILE).exists():
            raise ArtifactError(f"{staging / REF_FILE}: {REF_FILE} is the store's own file")
        (staging / REF_FILE).write_text(json.dumps(draft.backed(), indent=1, sort_keys=True))
        with ThreadPoolExecutor(1) as pool:  # flushing to disk and hashing overlap
            synced = pool.submit(_fsync_files, staging)
            fingerprint = fingerprint_path(staging)
            synced.result()
        final = self.root / kind / fingerprint
        present = final.exists()
        if present and fingerprint_path(final) == fingerprint:
            shutil.rmtree(staging)
        else:
            if present:  # damaged copy of the same content: replace it
                shutil.rmtree(final)
            try:
                os.replace(staging, final)
            except OSError:  # a concurrent run committed the same content since the check
                if not (final.exists() and fingerprint_path(final) == fingerprint):
                    raise
                shutil.rmtree(staging)
            else:
                fsync_dir(final.parent)
        if self.bucket is not None:  # files first, manifest last; a no-op when it is there
            self.bucket.publish(final, kind, fingerprint)
        return draft.model_copy(update={"uri": str(final), "fingerprint": fingerprint})

    def sweep(self) -> int:
        return sweep_temporaries(self.root)
