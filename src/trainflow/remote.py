"""An object-store store (`outputs.store: s3://bucket/prefix`, or gs://): a local mirror folder
where tasks write and read as in a folder store, and the bucket every committed artifact is
published to, through fsspec (s3fs, gcsfs).

Publication uploads an artifact's files under `<prefix>/<kind>/<fingerprint>/` and then, last,
its manifest (PUBLISHED, one PUT: atomic on S3): a reader accepts an artifact only when the
manifest is there, names the fingerprint and every file it lists is present with its size, so
a publication cut short is never taken for an artifact (the next commit publishes it again).
The bucket is the truth: verifying an artifact checks its manifest and fetches a copy the
mirror lacks (another machine, a fresh cache) or holds damaged; an artifact the bucket lost (or
holds altered: then unpublished) is not valid, so the cache policy recomputes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from trainflow.errors import ArtifactError, TrainflowError
from trainflow.spec.after_training import OutputsSpec
from trainflow.storage import (
    STORE_FOLDERS,
    TMP_PREFIX,
    atomic_write_text,
    fsync_dir,
    open_store,
)

SCHEMES = {"s3": "s3fs", "gs": "gcsfs"}  # scheme -> the fsspec backend that reads it
EXTRA = {"s3": "pip install 'trainflow[s3]'", "gs": "pip install gcsfs"}
REMOTE_FILE = ".trainflow-remote.json"  # in a mirror: the bucket URL and options it mirrors
PUBLISHED = ".trainflow-published.json"  # in the bucket, in an artifact's prefix, written last
MARKER_OBJECT = ".trainflow-store"  # at the store's prefix, as in a folder store
MIRRORS = Path.home() / ".cache" / "trainflow" / "stores"
CREDENTIALS_FIX = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or key and secret in "
    "outputs.store_options (anon: true for a public bucket)"
)
CONNECT_TIMEOUT = 10  # s3: seconds before an endpoint that does not answer is named


def is_remote_store(store: str) -> bool:
    return urlparse(store).scheme in SCHEMES


def mirror_folder(url: str, mirror: str | None) -> Path:
    """The local copy of an object store: `outputs.mirror`, else one folder per URL."""
    if mirror:
        return Path(mirror).expanduser().resolve()
    return MIRRORS / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


class Bucket:
    """One object-store prefix and the fsspec options that reach it."""

    def __init__(self, url: str, options: dict[str, Any] | None = None):
        parsed = urlparse(url)
        if parsed.scheme not in SCHEMES:
            raise TrainflowError(f"outputs.store: {url!r} is not an s3:// or gs:// URL")
        if not parsed.netloc:
            raise TrainflowError(
                f"outputs.store: {url!r} names no bucket: write {parsed.scheme}://BUCKET/PREFIX"
            )
        self.scheme = parsed.scheme
        self.url = url.rstrip("/")
        self.root = f"{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/")
        self.options = dict(options or {})
        self._fs: tuple[int, Any] | None = None

    @property
    def fs(self) -> Any:
        """The fsspec filesystem, made afresh in a forked child (the warm worker forks; an
        async filesystem's event loop does not survive that)."""
        if self._fs is None or self._fs[0] != os.getpid():
            self._fs = (os.getpid(), self._filesystem())
        return self._fs[1]

    def _filesystem(self) -> Any:
        try:
            import fsspec

            cls = fsspec.get_filesystem_class(self.scheme)
        except ImportError:
            raise TrainflowError(
                f"outputs.store: {self.url} needs {SCHEMES[self.scheme]}, which is not "
                f"installed: {EXTRA[self.scheme]}"
            ) from None
        options = dict(self.options)
        if self.scheme == "s3":  # an endpoint that does not answer is named within seconds
            config = dict(options.get("config_kwargs") or {})
            config.setdefault("connect_timeout", CONNECT_TIMEOUT)
            config.setdefault("retries", {"max_attempts": 2})
            options["config_kwargs"] = config
        return cls(**options)

    def key(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    def check(self) -> None:
        """Raise one TrainflowError naming the URL and the fix unless the bucket answers, the
        credentials are accepted and the store's marker is (or can be) there."""
        marker = self.key(MARKER_OBJECT)
        fs = self.fs  # the backend is installed (else the error names the extra)
        fs.invalidate_cache(marker)
        missing = self._no_credentials()
        if missing is not None:
            raise TrainflowError(f"outputs.store: {self.url}: {missing}")
        try:
            try:
                fs.info(marker)
            except FileNotFoundError:
                fs.pipe_file(marker, json.dumps({"trainflow_store": 1}).encode())
        except Exception as exc:  # botocore, aiohttp and fsspec errors come in many types
            raise TrainflowError(f"outputs.store: {self.url}: {unreachable(exc)}") from None

    def _no_credentials(self) -> str | None:
        """Why S3 would get no credentials, or None. s3fs sends unsigned requests when it
        finds none, which S3 answers with a bare access denied: the chain it reads (env,
        profiles, instance roles) is asked here, so that the message can say what to set."""
        given = ("anon", "key", "profile", "token", "session")
        if self.scheme != "s3" or any(self.options.get(name) for name in given):
            return None
        import botocore.session  # s3fs's own dependency, through aiobotocore

        if botocore.session.Session().get_credentials() is not None:
            return None
        return f"no credentials (none were found): {CREDENTIALS_FIX}"

    def publish(self, folder: Path, kind: str, fingerprint: str) -> None:
        """Upload a committed artifact (files first, manifest last), unless already there."""
        if self.problem(kind, fingerprint) is None:  # content-addressed: the same bytes
            return
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        names = [p.relative_to(folder).as_posix() for p in files]
        manifest = {
            "trainflow_published": 1,
            "kind": kind,
            "fingerprint": fingerprint,
            "files": {n: p.stat().st_size for n, p in zip(names, files)},
        }
        try:
            if files:
                self.fs.put(
                    [str(p) for p in files], [self.key(kind, fingerprint, n) for n in names]
                )
            self.fs.pipe_file(self.key(kind, fingerprint, PUBLISHED), json.dumps(manifest).encode())
        except Exception as exc:
            raise ArtifactError(
                f"publishing {kind} artifact {fingerprint[:12]} to {self.url} failed "
                f"({unreachable(exc)}); nothing a reader accepts was left, rerun to publish it"
            ) from None

    def unpublish(self, kind: str, fingerprint: str) -> None:
        """Remove the manifest of an artifact whose bytes in the bucket were found altered, so
        that no reader accepts them and the next commit of its content publishes it again."""
        self.fs.rm_file(self.key(kind, fingerprint, PUBLISHED))

    def problem(self, kind: str, fingerprint: str) -> str | None:
        """Why the bucket does not hold this artifact whole, or None when it does."""
        prefix = self.key(kind, fingerprint)
        where = f"{self.scheme}://{prefix}"
        try:
            self.fs.invalidate_cache(prefix)  # another machine may have changed it since
            listing = self.fs.find(prefix, detail=True)
            sizes = {k[len(prefix) + 1 :]: v.get("size") for k, v in listing.items()}
            if PUBLISHED not in sizes:
                return f"{kind} artifact {where} is not in the bucket (no {PUBLISHED})"
            manifest = json.loads(self.fs.cat_file(f"{prefix}/{PUBLISHED}"))
        except Exception as exc:
            return f"{kind} artifact {where} cannot be read ({unreachable(exc)})"
        if not isinstance(manifest, dict) or manifest.get("fingerprint") != fingerprint:
            return f"{where}/{PUBLISHED} does not name fingerprint {fingerprint[:12]}"
        files = manifest.get("files")
        if not isinstance(files, dict):
            return f"{where}/{PUBLISHED} lists no files"
        lost = sorted(n for n, size in files.items() if sizes.get(n) != size)
        if lost:
            return f"{kind} artifact {where} lost {len(lost)} of its files ({lost[0]}, ...)"
        return None

    def fetch(self, kind: str, fingerprint: str, target: Path) -> None:
        """Download a published artifact (`problem` found none) into the mirror at `target`,
        whole or not at all; the caller then checks its fingerprint as for any artifact."""
        prefix = self.key(kind, fingerprint)
        files = json.loads(self.fs.cat_file(f"{prefix}/{PUBLISHED}"))["files"]
        staging = target.parent / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
        try:
            staging.mkdir(parents=True)
            for name in files:  # the listed files only: never a path outside the folder
                local = (staging / name).resolve()
                if staging.resolve() not in local.parents:
                    raise ArtifactError(f"{prefix}/{PUBLISHED} names {name!r}, outside it")
                local.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(f"{prefix}/{name}", str(local))
            os.replace(staging, target)
            fsync_dir(target.parent)
        except ArtifactError:
            raise
        except Exception as exc:
            raise ArtifactError(
                f"fetching {kind} artifact {fingerprint[:12]} from {self.url}: {unreachable(exc)}"
            ) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def unreachable(exc: BaseException) -> str:
    """What went wrong reaching a bucket, and the fix, from the error s3fs or gcsfs raised."""
    name = type(exc).__name__
    if "Credential" in name:
        return f"no credentials ({exc}): {CREDENTIALS_FIX}"
    if isinstance(exc, PermissionError):
        return f"access denied ({exc}): use credentials that may read and write this bucket"
    if isinstance(exc, FileNotFoundError):
        return f"no such bucket ({exc}): create it, or name an existing bucket"
    if "Endpoint" in name or "Connect" in name or "Timeout" in name:
        return (
            f"the endpoint does not answer ({exc}): check outputs.store_options.endpoint_url "
            "(or AWS_ENDPOINT_URL) and the network"
        )
    return f"{name}: {exc}"


def store_folder(outputs: OutputsSpec) -> Path:
    """The folder tasks write to for `outputs.store`: the folder itself, or, for an object
    store, its local mirror (created and tied to the bucket once the bucket answers)."""
    return open_outputs(outputs.store, outputs.store_options, outputs.mirror)


def open_outputs(
    store: str, options: dict[str, Any] | None = None, mirror: str | None = None
) -> Path:
    """`store_folder` of the three settings."""
    if not is_remote_store(store):
        return Path(store).resolve()  # (as runs always read it: relative to the working folder)
    # every run asks (a request or two): a long-lived warm worker must not trust an old answer
    Bucket(store, options).check()
    folder = mirror_folder(store, mirror)
    tie = {"url": store.rstrip("/"), "options": options or {}}
    file = folder / REMOTE_FILE
    if file.is_file():
        held = json.loads(file.read_text())
        if held.get("url") != tie["url"]:
            raise TrainflowError(
                f"outputs.mirror: {folder} mirrors {held.get('url')}, not {store}: name "
                "another outputs.mirror (or leave it unset: one folder per URL)"
            )
        if held == tie:
            return folder
    open_store(folder, STORE_FOLDERS)  # marks the folder a store (or refuses it)
    atomic_write_text(file, json.dumps(tie, sort_keys=True))
    os.chmod(file, 0o600)  # store_options may hold a key and secret: the owner's alone
    return folder


def local_folder(store: str, mirror: str | None = None) -> Path:
    """Where `outputs.store`'s artifacts lie on this machine, without reaching a bucket (for
    lookups: the champion pointer, a package by name)."""
    return mirror_folder(store, mirror) if is_remote_store(store) else Path(store).resolve()


def bucket_of(root: Path) -> Bucket | None:
    """The bucket a store folder mirrors, or None for a folder store."""
    file = Path(root) / REMOTE_FILE
    if not file.is_file():
        return None
    return _bucket(str(file), file.stat().st_mtime_ns)


_OPENED: dict[str, Bucket] = {}  # url -> bucket, for the shard cache's downloads


@cache
def _bucket(file: str, _mtime: int) -> Bucket:  # one filesystem object per mirror
    tie = json.loads(Path(file).read_text())
    bucket = _OPENED[tie["url"]] = Bucket(tie["url"], tie["options"])
    return bucket


def shards_url(root: Path, fingerprint: str) -> str | None:
    """The bucket URL of a shards artifact of a mirrored store (for streaming), or None."""
    bucket = bucket_of(root)
    return None if bucket is None else f"{bucket.scheme}://{bucket.key('shards', fingerprint)}"


def read_bytes(url: str) -> bytes | None:
    """The object at `url` read through the mirrored store whose bucket holds it (with its
    options: endpoint, credentials), or None when no store opened here holds it."""
    for prefix, bucket in _OPENED.items():
        if url.startswith(prefix + "/"):
            return bucket.fs.cat_file(url)
    return None
