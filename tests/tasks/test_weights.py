"""A per-row weight column, from the CSV through steps and shards into the training loss."""

import numpy as np
import polars as pl
import pytest
import torch

from trainflow.engine.data import Split, balanced_weights, batches, weighted_loss
from trainflow.engine.loop import fit
from trainflow.engine.training import optimizer_factory
from trainflow.errors import DataError
from trainflow.models.mlp import mlp
from trainflow.shards import read_split_weighted
from trainflow.spec.train import LoaderSpec, TrainSpec
from trainflow.steps import read_parts
from trainflow.tasks.ingest import FileSource, ingest
from trainflow.tasks.resample import ResampleParams, resample
from trainflow.tasks.shard import ShardParams, shard
from trainflow.tasks.split import SplitParams, split
from trainflow.tasks.train import load_training_splits


@pytest.fixture
def weighted_csv(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    label = np.where(rng.random(n) < 0.25, "rare", "common")
    frame = pl.DataFrame(
        {
            "a": rng.normal(size=n) + (label == "rare"),
            "b": rng.normal(size=n),
            "w": rng.uniform(0.5, 2.0, n).round(3),
            "label": label,
        }
    )
    path = tmp_path / "weighted.csv"
    frame.write_csv(path)
    return path


def _source(path, **extra):
    return FileSource(type="csv", path=str(path), target="label", weight_column="w", **extra)


def test_weights_are_checked_and_kept_out_of_the_features(tmp_path, weighted_csv, store):
    table = ingest.fn(_source(weighted_csv), store)
    assert table.data_schema["features"] == ["a", "b"] and table.data_schema["weight"] == "w"
    bad = tmp_path / "bad.csv"
    bad.write_text("a,w,label\n1,1.0,x\n2,-3,y\n3,,x\n4,2,y\n")
    with pytest.raises(DataError, match=r"2 value\(s\) of 'w' .* such as \[-3.0, None\]"):
        ingest.fn(_source(bad), store)


def test_weights_travel_through_split_and_shards(weighted_csv, store):
    table = ingest.fn(_source(weighted_csv), store)
    splits = split.fn(table, SplitParams(type="split"), 0, store)
    shards = shard.fn(splits, ShardParams(max_samples=50), store)
    train = read_parts(splits)["train"][0]
    x, y, w, _ = read_split_weighted(shards.path, "train")
    assert np.allclose(w, train["w"].to_numpy()) and len(w) == len(x)
    assert read_split_weighted(shards.path, "val")[2] is None  # only training is weighted
    memory, _ = load_training_splits(shards, "error", LoaderSpec(mode="memory"))
    assert torch.allclose(memory["train"].w, torch.from_numpy(w))
    streamed, _ = load_training_splits(shards, "error", LoaderSpec(mode="stream"))
    batch = next(iter(streamed["train"].epoch(1, 32, seed=0)))
    assert len(batch) == 3 and batch[2].shape == (32,)


def test_weighted_loss_counts_a_weight_of_two_like_a_duplicated_row():
    logits, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    ones = weighted_loss(logits, y, None, torch.ones(6))
    assert torch.allclose(ones, torch.nn.functional.cross_entropy(logits, y))
    doubled = weighted_loss(logits, y, None, torch.tensor([2.0, 1, 1, 1, 1, 1]))
    duplicated = torch.nn.functional.cross_entropy(
        torch.cat([logits, logits[:1]]), torch.cat([y, y[:1]])
    )
    assert torch.allclose(doubled, duplicated)


def test_per_row_weights_train_exactly_like_the_same_class_weights():
    # weight column = the balanced class weight of each row's class: the same loss, the same run
    rng = np.random.default_rng(1)
    x = rng.normal(size=(240, 5)).astype(np.float32)
    y = (rng.random(240) < 0.2).astype(np.int64)
    class_w = balanced_weights(torch.from_numpy(y), 2)
    spec = TrainSpec(epochs=3, batch_size=32, device="cpu", checkpoint_every=0)
    val = Split.from_arrays(x[:40], y[:40])
    runs = []
    for train, train_spec in (
        (Split.from_arrays(x, y), spec.model_copy(update={"class_weights": "balanced"})),
        (Split.from_arrays(x, y, class_w[y].numpy()), spec),
    ):
        torch.manual_seed(0)
        net = mlp([5], 2, [16])
        runs.append(fit(net, train, val, train_spec, 0, optimizer_factory(train_spec)))
    losses = [[row["train_loss"] for row in run.history] for run in runs]
    assert np.allclose(losses[0], losses[1], rtol=1e-5)
    assert all(
        torch.allclose(a, b, atol=1e-6)
        for a, b in zip(runs[0].best_state.values(), runs[1].best_state.values())
    )


def test_batches_carry_weights_with_their_rows():
    data = Split.from_arrays(
        np.arange(10, dtype=np.float32)[:, None],
        np.zeros(10, np.int64),
        np.arange(10, dtype=np.float32) * 10,
    )
    for x, _, w in batches(data, 4, torch.Generator().manual_seed(0)):
        assert torch.equal(w, x[:, 0] * 10)


@pytest.mark.parametrize("method", ["smote", "random_under", "random_over"])
def test_resampling_keeps_the_weights_of_kept_rows_and_gives_new_rows_weight_one(
    weighted_csv, store, method
):
    table = ingest.fn(_source(weighted_csv), store)
    splits = split.fn(table, SplitParams(type="split"), 0, store)
    before = read_parts(splits)["train"][0]
    out = read_parts(resample.fn(splits, ResampleParams(type="resample", method=method), 0, store))[
        "train"
    ][0]
    by_row = dict(zip(before.select("a", "b").rows(), before["w"].to_list()))
    kept = out.filter(
        pl.struct("a", "b").map_elements(
            lambda r: (r["a"], r["b"]) in by_row, return_dtype=pl.Boolean
        )
    )
    assert all(by_row[(a, b)] == w for a, b, w in kept.select("a", "b", "w").rows())
    new = out.filter(
        pl.struct("a", "b").map_elements(
            lambda r: (r["a"], r["b"]) not in by_row, return_dtype=pl.Boolean
        )
    )
    assert (new["w"] == 1.0).all()
    if method == "smote":
        assert len(new) > 0 and len(kept) == len(before)


def test_a_combined_sampler_refuses_columns_it_cannot_carry(weighted_csv, store):
    table = ingest.fn(_source(weighted_csv), store)
    splits = split.fn(table, SplitParams(type="split"), 0, store)
    with pytest.raises(DataError, match=r"smote_tomek\) cannot carry the columns \['w'\]"):
        resample.fn(splits, ResampleParams(type="resample", method="smote_tomek"), 0, store)
