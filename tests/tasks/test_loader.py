"""The streaming shard loader: coverage, seeded shuffling, workers, ranks, remote URLs, safety."""

import functools
import http.server
import io
import json
import pickle
import tarfile
import threading

import numpy as np
import pytest
import torch

from trainflow.engine.augment import Augmenter
from trainflow.errors import ArtifactError
from trainflow.loader import StreamConfig, batches_per_rank, check_url, decode_record, loader
from trainflow.shards import (
    MANIFEST,
    read_paths,
    read_split,
    read_split_checked,
    shard_paths,
    write_split,
)
from trainflow.spec.augment import AugmentSpec
from trainflow.spec.train import LoaderSpec
from trainflow.tasks.train import load_training_splits

CLASSES = ["a", "b", "c"]


def make_shards(folder, n=1000, features=4, max_samples=200, per_record=50, copies=1):
    """Shards whose sample i has features [i*features, ...] and label i % 3 (easy to check).
    With copies > 1 the training split repeats the same n samples in each shard."""
    x = np.arange(n * features, dtype=np.float32).reshape(n, features)
    y = np.arange(n) % len(CLASSES)
    train_x, train_y = np.concatenate([x] * copies), np.concatenate([y] * copies)
    manifest = {
        "classes": CLASSES,
        "input_shape": [features],
        "splits": {
            "train": write_split(
                folder, "train", train_x, train_y, CLASSES, max_samples, per_record
            ),
            "val": write_split(folder, "val", x[:60], y[:60], CLASSES, max_samples, per_record),
        },
    }
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder


def epoch_ids(urls, config, epoch, workers=0, augment=None, samples=1000):
    """The sample ids (first feature / 4) in stream order, batch by batch."""
    return [
        (xb[:, 0] / 4).long().tolist()
        for xb, _ in loader(urls, config, epoch, samples, workers=workers, augment=augment)
    ]


@pytest.mark.parametrize("workers", [0, 2])
def test_an_epoch_streams_every_sample_once_in_full_batches(tmp_path, workers):
    paths, _, _ = shard_paths(make_shards(tmp_path), "train")
    batches = epoch_ids(paths, StreamConfig(batch_size=64, shuffle_buffer=300), 1, workers)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(1000))
    assert sum(len(b) != 64 for b in batches) <= max(workers, 1)  # one short tail per worker
    assert flat != sorted(flat)  # shuffled across records, not read in file order


def test_shuffling_is_seeded_and_differs_per_epoch(tmp_path):
    paths, _, _ = shard_paths(make_shards(tmp_path), "train")
    config = StreamConfig(batch_size=64, shuffle_buffer=500, seed=7)
    first = epoch_ids(paths, config, 1)
    assert epoch_ids(paths, config, 1) == first  # same seed and epoch: same stream
    assert epoch_ids(paths, config, 2) != first  # next epoch: a new order
    assert epoch_ids(paths, StreamConfig(64, 500, seed=8), 1) != first


def test_two_workers_never_share_an_augmentation_stream(tmp_path):
    # Two shards holding the same samples, one per worker, read in order: any equality of the
    # augmented batches could only come from equal augmentation randomness.
    paths, _, _ = shard_paths(make_shards(tmp_path, n=200, max_samples=200, copies=2), "train")
    assert len(paths) == 2
    augmenter = Augmenter(AugmentSpec(gaussian_noise=0.5), seed=3, image_input=False)
    config = StreamConfig(batch_size=50, shuffle_buffer=0)
    out = [xb for xb, _ in loader(paths, config, 1, 400, workers=2, augment=augmenter.for_epoch)]
    by_worker = out[0::2], out[1::2]  # the DataLoader alternates between its workers
    raw = [
        torch.from_numpy(np.arange(200 * 4, dtype=np.float32).reshape(200, 4)[i : i + 50])
        for i in range(0, 200, 50)
    ]
    for worker in by_worker:
        assert all(
            torch.allclose(a, b, atol=3.0) and not torch.equal(a, b) for a, b in zip(worker, raw)
        )  # augmented copies of the same samples
    assert not any(torch.equal(a, b) for a, b in zip(*by_worker))
    again = [xb for xb, _ in loader(paths, config, 1, 400, workers=2, augment=augmenter.for_epoch)]
    assert all(torch.equal(a, b) for a, b in zip(out, again))  # and reproducible


@pytest.mark.slow
def test_resampled_streams_give_every_rank_the_same_batch_count(tmp_path):
    paths, _, _ = shard_paths(make_shards(tmp_path, n=1000, max_samples=150), "train")
    counts = []
    for rank in range(3):
        config = StreamConfig(
            batch_size=32, shuffle_buffer=200, rank=rank, world_size=3, resampled=True
        )
        counts.append(len(epoch_ids(paths, config, 1, workers=2)))
    assert counts == [batches_per_rank(1000, StreamConfig(32, world_size=3))] * 3 == [11] * 3
    # without resampling, ranks own different shards and so different batch counts
    plain = [
        len(epoch_ids(paths, StreamConfig(32, 200, rank=r, world_size=3), 1)) for r in range(3)
    ]
    assert sum(plain) >= 1000 // 32 and len(set(plain)) > 1


@pytest.fixture
def served(tmp_path):
    """The shard folder served over HTTP on 127.0.0.1, with a log of requested paths."""
    folder = make_shards(tmp_path / "shards")
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_port}", requests
    server.shutdown()


def test_remote_shards_are_cached_locally_and_verified(tmp_path, served):
    folder, url, requests = served
    cache = tmp_path / "cache"
    x, y, _ = read_split_checked(url, "train", cache_dir=cache)
    local_x, local_y = read_split(folder, "train")
    assert np.array_equal(x, local_x) and np.array_equal(y, local_y)
    shard_requests = [r for r in requests if r.endswith(".tar")]
    assert len(shard_requests) == 5
    read_split_checked(url, "train", cache_dir=cache)  # second read: from the cache
    assert len([r for r in requests if r.endswith(".tar")]) == 5
    # a shard altered on the server is caught by its sha256, naming the URL
    victim = folder / "train-000001.tar"
    victim.write_bytes(victim.read_bytes()[:-100])
    with pytest.raises(ArtifactError, match=f"{url}/train-000001.tar is corrupt"):
        read_split_checked(url, "train", cache_dir=tmp_path / "fresh-cache")


@pytest.mark.parametrize(
    "url", ["pipe:cat /etc/passwd", "ftp://example.com/a.tar", "ssh://host/a.tar"]
)
def test_forbidden_url_schemes_are_refused(url):
    with pytest.raises(ArtifactError, match="allowed are plain paths and file, s3, gs, http"):
        check_url(url)
    with pytest.raises(ArtifactError, match="uses scheme"):
        list(loader([url], StreamConfig(batch_size=4), 0, 10))


def test_records_are_never_unpickled(tmp_path):
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ArtifactError, match="not a trainflow record"):
        decode_record({"__key__": "k", "x.npy": buffer.getvalue(), "y.npy": buffer.getvalue()})
    # A shard with a pickle member that would create a file when unpickled: it is ignored.
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(marker.touch)
    record = {
        name: _npy(value)
        for name, value in (
            ("x.npy", np.ones((2, 4), np.float32)),
            ("y.npy", np.zeros(2, np.int64)),
        )
    }
    shard = tmp_path / "evil.tar"
    with tarfile.open(shard, mode="w") as archive:
        for name, data in [
            ("k.pyd", payload),
            ("k.pkl", payload),
            *((f"k.{member}", data) for member, data in record.items()),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    x, y, w = read_paths([str(shard)], [4])
    assert x.shape == (2, 4) and y.tolist() == [0, 0] and w is None
    streamed = list(loader([str(shard)], StreamConfig(batch_size=2), 0, 2))
    assert len(streamed) == 1 and not marker.exists()


def _npy(value: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, value, allow_pickle=False)
    return buffer.getvalue()


def test_loader_mode_streams_large_training_sets_and_keeps_small_ones_in_memory(tmp_path):
    folder = make_shards(tmp_path)
    data, lost = load_training_splits(str(folder), "error", LoaderSpec())
    assert type(data["train"]).__name__ == "Split" and lost == 0
    streamed, _ = load_training_splits(str(folder), "error", LoaderSpec(mode="stream"))
    assert type(streamed["train"]).__name__ == "Stream" and len(streamed["train"]) == 1000
    assert streamed["train"].class_counts == [334, 333, 333]
    big = make_shards(tmp_path / "big", n=80_000, max_samples=20_000, per_record=1000)
    tight, _ = load_training_splits(str(big), "error", LoaderSpec(memory_limit_mb=1))
    assert type(tight["train"]).__name__ == "Stream"  # 1.3 MB of shards over a 1 MB limit


@pytest.mark.parametrize(
    "member,value,problem",
    [
        ("x.npy", np.array(["a", "b"]), "holds <U1 values, not features"),
        ("y.npy", np.array([0.5, 1.5]), "holds float64 values, not class indices"),
        ("y.npy", np.zeros(3, np.int64), "2 samples but 3 labels"),
    ],
)
def test_a_record_member_that_is_not_its_numeric_array_is_named(member, value, problem):
    record = {
        "__key__": "train00000000",
        "__url__": "s/train-000000.tar",
        "x.npy": _npy(np.ones((2, 4), np.float32)),
        "y.npy": _npy(np.zeros(2, np.int64)),
    }
    record[member] = _npy(value)
    with pytest.raises(ArtifactError) as err:
        decode_record(record)
    named = "x.npy" if problem.startswith("2 samples") else member
    assert f"'s/train-000000.tar', record 'train00000000', member {named}: {problem}" in str(
        err.value
    )


def test_a_bad_record_read_by_a_loader_worker_is_one_clean_error(tmp_path):
    """torch re-raises a worker's error with the worker's traceback in its message; the
    loader carries trainflow's message to the main process as it was."""
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"evil": 1}, None], dtype=object), allow_pickle=True)
    shard = tmp_path / "train-000000.tar"
    with tarfile.open(shard, mode="w") as archive:
        for name, data in (
            ("k.x.npy", buffer.getvalue()),
            ("k.y.npy", _npy(np.zeros(2, np.int64))),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    with pytest.raises(ArtifactError) as err:
        list(loader([str(shard)], StreamConfig(batch_size=2), 0, 2, workers=1))
    message = str(err.value)
    assert message.startswith(f"shard '{shard}', record 'k', member x.npy: not a plain .npy")
    assert "Traceback" not in message and "worker process" not in message
