"""Resume never dead-ends: damaged or refused checkpoints of an interrupted training are passed
over for an intact older one, or, with none left, set aside while training starts afresh."""

from __future__ import annotations

import io

import pytest
import torch

from trainflow.artifacts import Store, sha256_file
from trainflow.engine import checkpoint
from trainflow.engine.training import train_into
from trainflow.spec.model import MLPParams
from trainflow.spec.train import TrainSpec
from trainflow.tasks.ingest import SklearnSource, ingest
from trainflow.tasks.normalize import NormalizeParams, normalize
from trainflow.tasks.shard import ShardParams, shard
from trainflow.tasks.split import SplitParams, split
from trainflow.tasks.train import load_training_splits, resume_folder, train_model

pytestmark = [pytest.mark.faults, pytest.mark.slow]

MODEL = MLPParams(type="mlp", hidden_layers=2, units=[32, 16])
TRAIN = TrainSpec(lr=1e-3, batch_size=32, epochs=6, checkpoint_interval_s=0, keep_last=2)


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    store = str(tmp_path_factory.mktemp("data"))
    table = ingest.fn(SklearnSource(type="sklearn", dataset="breast_cancer"), store)
    raw = split.fn(table, SplitParams(type="split"), 0, store)
    return shard.fn(
        normalize.fn(raw, NormalizeParams(type="normalize"), 0, store),
        ShardParams(max_samples=128),
        store,
    )


@pytest.fixture(scope="module")
def uninterrupted(shards, tmp_path_factory):
    return train_model.fn(shards, MODEL, TRAIN, 0, str(tmp_path_factory.mktemp("whole")))


def interrupted(shards, store: str, scratch):
    """The resume folder a training stopped during epoch 4 leaves (last.pt: epoch 3,
    last.prev.pt: epoch 2)."""
    folder = resume_folder(Store(store), shards, MODEL, TRAIN, 0)

    def stop(row):
        if row["epoch"] == 4:
            raise Interrupted

    data, _ = load_training_splits(shards, "error")
    lost = scratch / "lost"
    lost.mkdir()
    with pytest.raises(Interrupted):
        train_into(lost, MODEL, TRAIN, 0, data, [30], ["malignant", "benign"], stop, folder)
    assert [checkpoint.load(p)["epoch"] for p in checkpoint.rotation(folder / "last.pt")] == [3, 2]
    return folder


def refused_by_weights_only(path) -> None:
    """Replace a checkpoint with one that holds a pickled object (weights_only refuses it),
    its .sha256 rewritten to match, as a tampering hand (or an old writer) would leave it."""
    buffer = io.BytesIO()
    torch.save({"model": {}, "hook": print}, buffer)
    path.write_bytes(buffer.getvalue())
    path.with_name(path.name + ".sha256").write_text(sha256_file(path))


def same_model(a, b) -> bool:
    x, y = (checkpoint.load(ref.path / "best.pt")["model"] for ref in (a, b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_both_checkpoints_damaged_sets_the_folder_aside_and_trains_afresh(
    shards, uninterrupted, tmp_path, caplog
):
    store = str(tmp_path / "store")
    folder = interrupted(shards, store, tmp_path)
    for name in ("last.pt", "last.prev.pt"):
        (folder / name).write_bytes((folder / name).read_bytes()[:-40])  # torn writes
    with caplog.at_level("WARNING", logger="trainflow"):
        model = train_model.fn(shards, MODEL, TRAIN, 0, store)
    aside = [p for p in folder.parent.iterdir() if p.name.startswith(folder.name + ".broken-")]
    assert len(aside) == 1 and (aside[0] / "last.pt").is_file()  # kept, to look at
    assert "no intact checkpoint to resume from" in caplog.text
    assert str(aside[0]) in caplog.text and "training starts from the beginning" in caplog.text
    assert not folder.exists()  # the fresh training finished and consumed its own folder
    assert same_model(model, uninterrupted) and model.meta == uninterrupted.meta
    assert train_model.fn(shards, MODEL, TRAIN, 0, store).meta == uninterrupted.meta  # again


def test_a_last_checkpoint_weights_only_refuses_falls_back_to_the_previous_one(
    shards, uninterrupted, tmp_path, caplog
):
    store = str(tmp_path / "store")
    folder = interrupted(shards, store, tmp_path)
    refused_by_weights_only(folder / "last.pt")
    with caplog.at_level("WARNING", logger="trainflow"):
        model = train_model.fn(shards, MODEL, TRAIN, 0, store)
    assert "last.pt: unreadable (it holds an object that weights_only loading refuses" in (
        caplog.text
    )
    assert "resuming from the previous one" in caplog.text and "weights_only=False" not in (
        caplog.text
    )  # torch's advice to load unsafely is not passed on
    assert same_model(model, uninterrupted) and model.meta == uninterrupted.meta


def test_every_checkpoint_refused_sets_the_folder_aside(shards, uninterrupted, tmp_path, caplog):
    store = str(tmp_path / "store")
    folder = interrupted(shards, store, tmp_path)
    for name in ("last.pt", "last.prev.pt"):
        refused_by_weights_only(folder / name)
    with caplog.at_level("WARNING", logger="trainflow"):
        model = train_model.fn(shards, MODEL, TRAIN, 0, store)
    assert "set aside as" in caplog.text and ".broken-" in caplog.text
    assert same_model(model, uninterrupted)
