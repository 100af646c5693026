"""webdataset tar shards: deterministic writing, a manifest per artifact, verified reading.

Each record holds a run of consecutive samples: `<key>.x.npy` (features) and `<key>.y.npy` (class
indices), saved without pickle. Readers never decode pickle (see trainflow.loader): `.npy` is
loaded with `allow_pickle=False`, other members are ignored, and URLs are allowlisted by scheme.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds

from trainflow.artifacts import sha256_file
from trainflow.errors import ArtifactError
from trainflow.loader import DEFAULT_CACHE, decode_record, fetch, is_remote

MANIFEST = "manifest.json"


def _encode_array(x: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, x, allow_pickle=False)
    return buffer.getvalue()


def write_split(
    folder: Path,
    split: str,
    x: np.ndarray,
    y: np.ndarray,
    classes: list[str],
    max_samples: int,
    per_record: int,
    max_bytes: int | None = None,
    w: np.ndarray | None = None,
) -> dict:
    """Write one split as `<split>-NNNNNN.tar` shards; return its manifest entry.

    A shard holds at most `max_samples` samples and, where it has more than one record, at
    most `max_bytes` bytes. Each tar record packs up to `per_record` consecutive samples
    (`x.npy` of shape (n, *input_shape) and `y.npy` of n class indices, and `w.npy` of n loss
    weights when the table has a weight column), so that reading is not dominated by per-member
    overhead.
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
    try:
        while start < len(x):
            room = max_samples - in_shard if sink is not None else max_samples
            stop = min(start + per_record, start + room, len(x))
            record = _record(split, start, stop, x, y, w)
            size = sum(len(v) for k, v in record.items() if k != "__key__") + 3072  # + tar headers
            full = sink is not None and (
                in_shard >= max_samples
                or (max_bytes is not None and bytes_in_shard + size > max_bytes)
            )
            if sink is None or full:
                close()
                shards.append({"name": f"{split}-{len(shards):06d}.tar"})
                stream = open(folder / shards[-1]["name"], "wb")  # noqa: SIM115 (close())
                # mtime=0 and a fixed owner make the tar bytes identical on every rerun.
                sink = wds.TarWriter(
                    stream, encoder=False, mtime=0, user="trainflow", group="trainflow"
                )
                in_shard, bytes_in_shard = 0, 0
                stop = min(start + per_record, start + max_samples, len(x))
                record = _record(split, start, stop, x, y, w)
                size = sum(len(v) for k, v in record.items() if k != "__key__") + 3072
            sink.write(record)
            in_shard += stop - start
            bytes_in_shard += size
            start = stop
        close()
    except BaseException:
        _abandon(sink, stream)
        raise
    labels = y if y.ndim == 1 else y[:, 0]  # (a regression's numbers have no classes)
    histogram: Any = np.bincount(labels, minlength=len(classes)) if classes else []
    return {
        "samples": int(len(x)),
        "shards": shards,
        "weighted": w is not None,
        "classes": {c: int(n) for c, n in zip(classes, histogram)},
    }


def _abandon(sink, stream) -> None:
    """Close a shard whose writing failed without a second write at garbage collection (a
    full disk would otherwise report itself again there, as an ignored error's traceback)."""
    for handle in (sink, stream):
        if handle is not None:
            with contextlib.suppress(OSError, ValueError):
                handle.close()


def _record(
    split: str, start: int, stop: int, x: np.ndarray, y: np.ndarray, w: np.ndarray | None
) -> dict:
    record = {
        "__key__": f"{split}{start:08d}",
        "x.npy": _encode_array(x[start:stop]),
        # a regression's numbers go in t.npy: y.npy holds class indices only (trainflow.loader)
        ("t.npy" if y.dtype.kind == "f" else "y.npy"): _encode_array(y[start:stop]),
    }
    if w is not None:
        record["w.npy"] = _encode_array(w[start:stop])
    return record


def _join(base: str | Path, name: str) -> str:
    return f"{str(base).rstrip('/')}/{name}"


def read_manifest(base: str | Path, cache_dir: Path = DEFAULT_CACHE) -> dict:
    """The manifest of a shard folder or URL (a remote one is downloaded into `cache_dir`)."""
    url = _join(base, MANIFEST)
    if not is_remote(url) and not Path(url).is_file():
        raise ArtifactError(f"shard folder {base} has no {MANIFEST}")
    return json.loads(fetch(url, cache_dir).read_text())


def shard_paths(
    base: str | Path, split: str, on_corrupt: str = "error", cache_dir: Path = DEFAULT_CACHE
) -> tuple[list[str], int, dict]:
    """Local, verified paths of one split's shards, the samples lost and the manifest.

    Each shard's sha256 is checked against the manifest (remote shards after download).
    on_corrupt="skip" leaves out a missing, truncated or altered shard with a warning and counts
    its samples as lost; "error" raises an ArtifactError naming it.
    """
    manifest = read_manifest(base, cache_dir)
    paths, lost = [], 0
    for shard in manifest["splits"][split]["shards"]:
        try:
            paths.append(str(fetch(_join(base, shard["name"]), cache_dir, shard["sha256"])))
        except ArtifactError as problem:
            if on_corrupt != "skip":
                raise
            warnings.warn(f"{problem}; skipping its {shard['samples']} samples", stacklevel=2)
            lost += shard["samples"]
    return paths, lost, manifest


def read_split(folder: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Every sample of one split, in shard order; a corrupt shard is an error naming it."""
    x, y, _ = read_split_checked(folder, split, "error")
    return x, y


def read_paths(
    paths: list[str], input_shape: list[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Every sample of the given (already verified) shards, in order: features, labels and the
    loss weights (None when the shards carry none)."""
    xs, ys, ws = [], [], []
    if paths:
        for record in wds.WebDataset(paths, shardshuffle=False, empty_check=False):
            x, y, *w = decode_record(record)
            xs.append(x)
            ys.append(y)
            ws += w
    x = np.concatenate(xs) if xs else np.zeros((0, *input_shape), np.float32)
    return (
        x,
        np.concatenate(ys) if ys else np.zeros(0, np.int64),
        np.concatenate(ws) if ws else None,
    )


def read_split_checked(
    base: str | Path, split: str, on_corrupt: str = "error", cache_dir: Path = DEFAULT_CACHE
) -> tuple[np.ndarray, np.ndarray, int]:
    """Samples of one split in memory after checking each shard (see `shard_paths`)."""
    x, y, _, lost = read_split_weighted(base, split, on_corrupt, cache_dir)
    return x, y, lost


def read_split_weighted(
    base: str | Path, split: str, on_corrupt: str = "error", cache_dir: Path = DEFAULT_CACHE
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """Features, labels, loss weights (or None) and samples lost of one checked split."""
    paths, lost, manifest = shard_paths(base, split, on_corrupt, cache_dir)
    x, y, w = read_paths(paths, manifest["input_shape"])
    expected = manifest["splits"][split]["samples"] - lost
    if len(x) != expected or len(y) != len(x):
        raise ArtifactError(
            f"split {split!r} in {base}: read {len(x)} samples, the manifest lists {expected}"
        )
    return x, y, w, lost
