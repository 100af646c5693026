"""webdataset tar shards: deterministic writing, a manifest per artifact, verified reading.

Members are `<key>.npy` (features, saved without pickle) and `<key>.cls` (class index as ASCII).
Readers never decode pickle: `.npy` is loaded with `allow_pickle=False`, every other member is
ignored, and only `file:` (or plain) paths are opened here: no `pipe:` URLs.
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
                max_samples: int) -> dict:
    """Write one split as `<split>-NNNNNN.tar` shards; return its manifest entry."""
    folder.mkdir(parents=True, exist_ok=True)
    pattern = str(folder / f"{split}-%06d.tar")
    # mtime=0 and fixed owner make the tar bytes identical on every rerun.
    with wds.ShardWriter(pattern, maxcount=max_samples, verbose=0, encoder=False, mtime=0,
                         user="trainflow", group="trainflow") as sink:
        for i in range(len(x)):
            sink.write({"__key__": f"{split}{i:08d}", "npy": _encode_array(x[i]),
                        "cls": str(int(y[i])).encode()})
    shards = []
    for path in sorted(folder.glob(f"{split}-*.tar")):
        shards.append({"name": path.name, "sha256": sha256_file(path)})
    sizes = [min(max_samples, len(x) - i * max_samples) for i in range(len(shards))]
    for entry, size in zip(shards, sizes):
        entry["samples"] = size
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
        for sample in dataset:
            xs.append(np.load(io.BytesIO(sample["npy"]), allow_pickle=False))
            ys.append(int(sample["cls"]))
    if len(xs) != entry["samples"]:
        raise ArtifactError(f"split {split!r} in {folder}: read {len(xs)} samples, "
                            f"the manifest lists {entry['samples']}")
    shape = manifest["input_shape"]
    x = np.stack(xs) if xs else np.zeros((0, *shape), np.float32)
    return x, np.asarray(ys, dtype=np.int64)
