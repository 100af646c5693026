"""Streaming training data from shards: remote URLs cached locally, a webdataset pipeline with
loader workers, prefetching, a shuffle buffer, and equal batch counts per rank.

Shards come from a local folder or a URL with an allowed scheme (file, s3, gs, http, https;
never `pipe:`). Remote shards are downloaded once into a cache folder and, like local ones,
checked against the sha256 in the manifest before use. Records are decoded with
`np.load(allow_pickle=False)`; nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import io
import math
import random
import shutil
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import get_worker_info

from trainflow.artifacts import atomic_write_bytes, sha256_file
from trainflow.errors import ArtifactError, DataError, TrainflowError

ALLOWED_SCHEMES = ("", "file", "s3", "gs", "http", "https")
RECORD_BUFFER = 8
DEFAULT_CACHE = Path.home() / ".cache" / "trainflow" / "shards"


def check_url(url: str) -> str:
    """The URL, if its scheme is allowed; `pipe:` and unknown schemes are refused."""
    scheme = urlparse(str(url)).scheme
    if scheme not in ALLOWED_SCHEMES:
        raise ArtifactError(
            f"shard URL {url!r} uses scheme {scheme!r}; allowed are plain paths "
            "and file, s3, gs, http, https (pipe: would run a shell command)"
        )
    return str(url)


def is_remote(url: str) -> bool:
    return urlparse(str(url)).scheme not in ("", "file")


def local_path(url: str) -> Path:
    parsed = urlparse(str(url))
    return Path(parsed.path if parsed.scheme == "file" else str(url))


def _download(url: str, target: Path) -> None:
    scheme = urlparse(url).scheme
    data: bytes | None
    if scheme in ("http", "https"):
        with urllib.request.urlopen(
            url, timeout=60
        ) as response:  # the scheme was allowlisted above
            data = response.read()
    else:  # s3, gs: through fsspec and its backend (s3fs, gcsfs), when installed
        from trainflow.remote import read_bytes

        # an s3:// store's own shards: read with the store's options (endpoint, credentials)
        data = read_bytes(url)
    if data is None:
        try:
            import fsspec

            with fsspec.open(url, "rb") as remote:
                data = remote.read()
        except ImportError as exc:
            raise ArtifactError(
                f"reading {url} needs {exc.name or 'fsspec'}: pip install "
                f"{'s3fs' if scheme == 's3' else 'gcsfs'}"
            ) from None
    atomic_write_bytes(target, data)


def fetch(url: str, cache_dir: Path, sha256: str | None = None) -> Path:
    """A local path holding the URL's bytes: the file itself for local URLs, else a cached
    download (reused while its sha256 matches). A mismatch is an ArtifactError naming the URL."""
    check_url(url)
    if not is_remote(url):
        path = local_path(url)
        if not path.is_file():
            raise ArtifactError(f"shard {path} listed in the manifest is missing")
        if sha256 and sha256_file(path) != sha256:
            raise ArtifactError(
                f"shard {path} is corrupt or truncated: its sha256 does not match the manifest"
            )
        return path
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    target = Path(cache_dir) / key / Path(urlparse(url).path).name
    if target.is_file() and (sha256 is None or sha256_file(target) == sha256):
        return target
    try:
        _download(url, target)
    except ArtifactError:
        raise
    except Exception as exc:  # network errors come in many types
        raise ArtifactError(f"cannot download shard {url}: {exc}") from None
    if sha256 and sha256_file(target) != sha256:
        shutil.rmtree(target.parent, ignore_errors=True)
        raise ArtifactError(
            f"shard {url} is corrupt or truncated: its sha256 does not match the manifest"
        )
    return target


# What each member holds, and the NumPy dtype kinds that can hold it.
MEMBERS = {
    "x.npy": ("features", "fiub"),
    "y.npy": ("class indices", "iub"),
    "t.npy": ("target numbers", "fiu"),  # a regression's target, in place of y.npy
    "w.npy": ("loss weights", "fiu"),
}


def decode_record(record: dict) -> tuple[np.ndarray, ...]:
    """(x, y) of one tar record, or (x, y, w) when it carries loss weights; without pickle, and
    other members are ignored. A member that is not a plain numeric array (an object array
    would need pickle) is an ArtifactError naming the shard, the record and the member."""
    x = _member(record, "x.npy")
    if "t.npy" in record:  # a regression's numbers (float64)
        y = _member(record, "t.npy").astype(np.float64)
    else:
        y = _member(record, "y.npy").astype(np.int64)
    arrays = (x, y, _member(record, "w.npy")) if "w.npy" in record else (x, y)
    if any(len(a) != len(x) for a in arrays):
        raise _not_ours(record, "x.npy", f"{len(x)} samples but {len(y)} labels")
    return arrays


def _member(record: dict, name: str) -> np.ndarray:
    if name not in record:
        raise _not_ours(record, name, "missing")
    try:
        array = np.load(io.BytesIO(record[name]), allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:  # an object array raises ValueError
        raise _not_ours(record, name, f"not a plain .npy array ({exc})") from None
    what, kinds = MEMBERS[name]
    if array.dtype.kind not in kinds or array.ndim == 0:
        shape = "a scalar" if array.ndim == 0 else "values"
        raise _not_ours(record, name, f"holds {array.dtype} {shape}, not {what}")
    return array


def _not_ours(record: dict, member: str, problem: str) -> ArtifactError:
    return ArtifactError(
        f"shard {record.get('__url__')!r}, record {record.get('__key__')!r}, member {member}: "
        f"{problem}; this is not a trainflow record (the shard task writes numeric arrays "
        "only: this shard was made or altered outside it); delete the shards folder so that "
        "the shard task writes it again"
    )


@dataclass(frozen=True)
class WorkerFailure:
    """A trainflow error raised in a loader worker, carried to the main process as an item:
    torch would re-raise it there with the worker's traceback in its message."""

    kind: str
    message: str


def _failures_as_items(src):
    try:
        yield from src
    except TrainflowError as exc:
        yield WorkerFailure(type(exc).__name__, str(exc))


def _raise_failures(src):
    for item in src:
        if isinstance(item, WorkerFailure):
            raise {"ArtifactError": ArtifactError, "DataError": DataError}.get(
                item.kind, TrainflowError
            )(item.message)
        yield item


@dataclass(frozen=True)
class StreamConfig:
    """How one split is streamed (see LoaderSpec for the user-facing knobs)."""

    batch_size: int
    shuffle_buffer: int = 10_000
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    resampled: bool = False


def _stream_seed(config: StreamConfig, epoch: int, worker: int) -> int:
    return hash((config.seed, epoch, config.rank, worker)) & 0x7FFFFFFF


def _worker_seed(rank: int) -> int:
    info = get_worker_info()
    return rank * 1000 + (info.id if info else 0)


def _shuffled_batches(
    records: Iterator[tuple[np.ndarray, ...]],
    config: StreamConfig,
    epoch: int,
    augment: Callable | None,
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Batches (x, y) or (x, y, w) drawn from a pool of at least `shuffle_buffer` samples,
    permuted as a whole.

    Records are whole runs of samples; pooling them and permuting the pool (one vectorized
    step) shuffles sample by sample without per-sample Python work. The randomness comes from
    (seed, epoch, rank, loader worker), so it differs per epoch and per worker and is the same
    on every rerun.
    """
    info = get_worker_info()
    worker = info.id if info else 0
    generator = torch.Generator().manual_seed(_stream_seed(config, epoch, worker))
    augment = augment(epoch, worker) if augment else None
    pool: list[list[np.ndarray]] = []  # per record: x, y (and w)
    pooled = 0

    def drain(final: bool) -> Iterator[tuple[torch.Tensor, ...]]:
        nonlocal pool, pooled
        columns = [torch.from_numpy(np.concatenate(parts)) for parts in zip(*pool)]
        if config.shuffle_buffer > 1:
            order = torch.randperm(len(columns[1]), generator=generator)
            columns = [c[order] for c in columns]
        # Keep the tail in the pool so that batches stay full and mixed with what comes next.
        n = len(columns[1])
        stop = n if final else n - n % config.batch_size
        for start in range(0, stop, config.batch_size):
            x, *rest = (c[start : start + config.batch_size] for c in columns)
            yield (augment(x) if augment else x), *rest
        pool, pooled = [[c[stop:].numpy() for c in columns]], n - stop

    for record in records:
        pool.append(list(record))
        pooled += len(record[1])
        if pooled >= max(config.shuffle_buffer, config.batch_size):
            yield from drain(final=False)
    if pooled:
        yield from drain(final=True)


def pipeline(
    urls: list[str],
    config: StreamConfig,
    epoch: int,
    augment: Callable | None = None,
    in_worker: bool = False,
) -> wds.DataPipeline:
    """The webdataset pipeline of one epoch: shards -> records -> shuffled batches.

    Without `resampled`, each rank and worker reads its own share of the shards once (record
    order shuffled by a seeded buffer). With `resampled`, shards are drawn with replacement
    from a seeded stream, so every rank can be given the same number of batches (`with_epoch`).
    """
    for url in urls:
        check_url(url)
    # Records (about 1 MiB each) are first drawn from a small buffer so that consecutive
    # batches mix shards; the sample pool of `shuffle_buffer` then mixes samples.
    if config.resampled:
        shards = wds.ResampledShards(
            urls,
            seed=_stream_seed(config, epoch, -1),
            worker_seed=partial(_worker_seed, config.rank),
            deterministic=True,
        )
        stages = [shards]
    else:
        stages = [wds.SimpleShardList(urls), partial(_my_share, config), wds.split_by_worker]
    stages += [wds.tarfile_to_samples(), wds.map(decode_record)]
    if config.shuffle_buffer > 1:
        stages.append(partial(_shuffle_records, config, epoch, RECORD_BUFFER))
    stages.append(partial(_shuffled_batches, config=config, epoch=epoch, augment=augment))
    if in_worker:
        stages.append(_failures_as_items)
    return wds.DataPipeline(*stages)


def _my_share(config: StreamConfig, src):
    """This rank's shards (every world_size-th one)."""
    for index, item in enumerate(src):
        if index % config.world_size == config.rank:
            yield item


def _shuffle_records(config: StreamConfig, epoch: int, bufsize: int, src):
    info = get_worker_info()
    seed = _stream_seed(config, epoch, 1000 + (info.id if info else 0))
    yield from wds.shuffle(bufsize=bufsize, initial=bufsize, rng=random.Random(seed))(src)


def batches_per_rank(samples: int, config: StreamConfig) -> int:
    """One nominal epoch's batches per rank: every rank the same count (no rank waits)."""
    return math.ceil(samples / (config.world_size * config.batch_size))


def loader(
    urls: list[str],
    config: StreamConfig,
    epoch: int,
    samples: int,
    workers: int = 0,
    prefetch: int = 2,
    pin_memory: bool = False,
    augment: Callable | None = None,
) -> wds.DataPipeline | wds.WebLoader:
    """The batches of one epoch: a torch DataLoader over the pipeline when it has workers or
    pins memory, else the pipeline itself (a DataLoader adds per-batch cost and nothing else).
    `resampled` streams stop at `batches_per_rank`."""
    batches = pipeline(urls, config, epoch, augment, in_worker=bool(workers))
    if workers or pin_memory:
        extra = {"prefetch_factor": prefetch} if workers else {}
        batches = wds.WebLoader(
            batches, batch_size=None, num_workers=workers, pin_memory=pin_memory, **extra
        )
        if workers:
            batches.append(_raise_failures)
    if config.resampled:
        batches = batches.with_epoch(batches_per_rank(samples, config))
    return batches


@dataclass
class Stream:
    """A training split streamed from verified shards: a fresh loader per epoch."""

    paths: list[str]
    samples: int
    class_counts: list[int]
    input_shape: list[int]
    workers: int = 0
    prefetch: int = 2
    shuffle_buffer: int = 10_000
    resampled: bool = False
    rank: int = 0
    world_size: int = 1

    def __len__(self) -> int:
        return self.samples

    @property
    def image_input(self) -> bool:
        return len(self.input_shape) == 3

    def epoch(
        self,
        epoch: int,
        batch_size: int,
        seed: int,
        pin_memory: bool = False,
        augment: Callable | None = None,
    ) -> wds.DataPipeline | wds.WebLoader:
        config = StreamConfig(
            batch_size, self.shuffle_buffer, seed, self.rank, self.world_size, self.resampled
        )
        return loader(
            self.paths,
            config,
            epoch,
            self.samples,
            self.workers,
            self.prefetch,
            pin_memory,
            augment,
        )
