"""webdataset tar shards: deterministic writing, a manifest per artifact, verified reading.

Each record holds a run of consecutive samples: `<key>.x.npy` (features) and `<key>.y.npy` (class
indices), saved without pickle. Readers never decode pickle: `.npy` is loaded with
`allow_pickle=False`, every other member is ignored, and only `file:` (or plain) paths are opened here: no `pipe:` URLs.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import webdataset as wds

from trainflow.artifacts import sha256_file
from trainflow.errors import ArtifactError

MANIFEST = "manifest.json"
ALLOWED_SCHEMES = ("", "file")


def _encode_array(x: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, x, allow_pickle=False)
    return buffer.getvalue()


def write_split(folder: Path, split: str, x: np.ndarray, y: np.ndarray, classes: list[str],
                max_samples: int, per_record: int, max_bytes: int | None = None) -> dict:
    """Write one split as `<split>-NNNNNN.tar` shards; return its manifest entry.

    A shard holds at most `max_samples` samples and, where it has more than one record, at
    most `max_bytes` bytes. Each tar record packs up to `per_record` consecutive samples
    (`x.npy` of shape (n, *input_shape) and `y.npy` of n class indices), so that reading is not
    dominated by per-member overhead.
    """
    folder.mkdir(parents=True, exist_ok=True)
    shards: list[dict] = []
    sink, stream, in_shard, bytes_in_shard = None, None, 0, 0

    def close() -> None:
        if sink is not None:
            sink.close()
            stream.close()
            path = folder / shards[-1]["name"]
            shards[-1].update(samples=in_shard, sha256=sha256_file(path))

    start = 0
    while start < len(x):
        room = max_samples - in_shard if sink is not None else max_samples
        stop = min(start + per_record, start + room, len(x))
        record = {"__key__": f"{split}{start:08d}", "x.npy": _encode_array(x[start:stop]),
                  "y.npy": _encode_array(y[start:stop])}
        size = len(record["x.npy"]) + len(record["y.npy"]) + 2048  # + tar headers
        full = sink is not None and (in_shard >= max_samples or (
            max_bytes is not None and bytes_in_shard + size > max_bytes))
        if sink is None or full:
            close()
            shards.append({"name": f"{split}-{len(shards):06d}.tar"})
            stream = open(folder / shards[-1]["name"], "wb")
            # mtime=0 and a fixed owner make the tar bytes identical on every rerun.
            sink = wds.TarWriter(stream, encoder=False, mtime=0, user="trainflow",
                                 group="trainflow")
            in_shard, bytes_in_shard = 0, 0
            stop = min(start + per_record, start + max_samples, len(x))
            record = {"__key__": f"{split}{start:08d}", "x.npy": _encode_array(x[start:stop]),
                      "y.npy": _encode_array(y[start:stop])}
            size = len(record["x.npy"]) + len(record["y.npy"]) + 2048
        sink.write(record)
        in_shard += stop - start
        bytes_in_shard += size
        start = stop
    close()
    histogram = np.bincount(y, minlength=len(classes))
    return {"samples": int(len(x)), "shards": shards,
            "classes": {c: int(n) for c, n in zip(classes, histogram)}}


def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"shard folder {folder} has no {MANIFEST}")
    return json.loads(path.read_text())


def check_url(url: str) -> str:
    scheme = urlparse(url).scheme
    if scheme not in ALLOWED_SCHEMES:
        raise ArtifactError(f"shard URL {url!r} uses scheme {scheme!r}; allowed here: "
                            f"{[s or 'plain path' for s in ALLOWED_SCHEMES]}")
    return url


def read_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Every sample of one split, in shard order; a corrupt shard is an error naming it."""
    x, y, _ = read_split_checked(folder, split, "error")
    return x, y


def read_split_checked(folder: Path, split: str,
                       on_corrupt: str = "error") -> tuple[np.ndarray, np.ndarray, int]:
    """Samples of one split after checking each shard's sha256 against the manifest.

    on_corrupt="skip" leaves out a missing, truncated or altered shard with a warning and
    counts its samples as lost (the third value); "error" raises an ArtifactError naming it.
    """
    manifest = read_manifest(folder)
    entry = manifest["splits"][split]
    urls, lost = [], 0
    for shard in entry["shards"]:
        path = folder / shard["name"]
        problem = None
        if not path.is_file():
            problem = f"shard {path} listed in the manifest is missing"
        elif sha256_file(path) != shard["sha256"]:
            problem = f"shard {path} is corrupt or truncated: its sha256 does not match the manifest"
        if problem and on_corrupt == "skip":
            warnings.warn(f"{problem}; skipping its {shard['samples']} samples", stacklevel=2)
            lost += shard["samples"]
            continue
        if problem:
            raise ArtifactError(problem)
        urls.append(check_url(str(path)))
    xs, ys = [], []
    if urls:
        dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
        for record in dataset:
            xs.append(np.load(io.BytesIO(record["x.npy"]), allow_pickle=False))
            ys.append(np.load(io.BytesIO(record["y.npy"]), allow_pickle=False))
    x = np.concatenate(xs) if xs else np.zeros((0, *manifest["input_shape"]), np.float32)
    y = np.concatenate(ys).astype(np.int64) if ys else np.zeros(0, np.int64)
    if len(x) != entry["samples"] - lost or len(y) != len(x):
        raise ArtifactError(f"split {split!r} in {folder}: read {len(x)} samples, "
                            f"the manifest lists {entry['samples'] - lost}")
    return x, y, lost
