"""webdataset tar shards: deterministic writing, a manifest per artifact, verified reading.

Each record holds a run of consecutive samples: `<key>.x.npy` (features) and `<key>.y.npy` (class
indices), saved without pickle. Readers never decode pickle: `.npy` is loaded with
`allow_pickle=False`, every other member is ignored, and only `file:` (or plain) paths are opened here: no `pipe:` URLs.
"""

from __future__ import annotations

import io
import json
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
                max_samples: int, per_record: int) -> dict:
    """Write one split as `<split>-NNNNNN.tar` shards of at most `max_samples` samples.

    Each tar record packs up to `per_record` consecutive samples (`x.npy` of shape
    (n, *input_shape) and `y.npy` of n class indices), so that reading is not dominated by
    per-member overhead. Returns the split's manifest entry.
    """
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for number, start in enumerate(range(0, len(x), max_samples)):
        path = folder / f"{split}-{number:06d}.tar"
        stop = min(start + max_samples, len(x))
        # mtime=0 and a fixed owner make the tar bytes identical on every rerun.
        with open(path, "wb") as stream, wds.TarWriter(stream, encoder=False, mtime=0,
                                                       user="trainflow", group="trainflow") as sink:
            for first in range(start, stop, per_record):
                last = min(first + per_record, stop)
                sink.write({"__key__": f"{split}{first:08d}", "x.npy": _encode_array(x[first:last]),
                            "y.npy": _encode_array(y[first:last])})
        shards.append({"name": path.name, "samples": stop - start, "sha256": sha256_file(path)})
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
    """Every sample of one split, in shard order, after checking each shard's sha256."""
    manifest = read_manifest(folder)
    entry = manifest["splits"][split]
    urls = []
    for shard in entry["shards"]:
        path = folder / shard["name"]
        if not path.is_file():
            raise ArtifactError(f"shard {path} listed in the manifest is missing")
        if sha256_file(path) != shard["sha256"]:
            raise ArtifactError(f"shard {path} is corrupt or truncated: its sha256 does not "
                                "match the manifest")
        urls.append(check_url(str(path)))
    xs, ys = [], []
    if urls:
        dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
        for record in dataset:
            xs.append(np.load(io.BytesIO(record["x.npy"]), allow_pickle=False))
            ys.append(np.load(io.BytesIO(record["y.npy"]), allow_pickle=False))
    x = np.concatenate(xs) if xs else np.zeros((0, *manifest["input_shape"]), np.float32)
    y = np.concatenate(ys).astype(np.int64) if ys else np.zeros(0, np.int64)
    if len(x) != entry["samples"] or len(y) != len(x):
        raise ArtifactError(f"split {split!r} in {folder}: read {len(x)} samples, "
                            f"the manifest lists {entry['samples']}")
    return x, y
