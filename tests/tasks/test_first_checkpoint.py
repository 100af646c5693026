"""The first checkpoint comes as soon as it is due, not after train.checkpoint_interval_s: a
run stopped after its first epoch (or its first checkpointed step) resumes from there, and the
train task says where it starts in every case."""

import json
import logging

import pytest
import torch

from tests.interrupt import after_step
from trainflow.artifacts import Store
from trainflow.engine import checkpoint
from trainflow.spec.model import MLPParams
from trainflow.spec.train import TrainSpec
from trainflow.tasks.ingest import SklearnSource, ingest
from trainflow.tasks.normalize import NormalizeParams, normalize
from trainflow.tasks.shard import ShardParams, shard
from trainflow.tasks.split import SplitParams, split
from trainflow.tasks.train import resume_folder, train_model

pytestmark = pytest.mark.slow  # real trainings

MODEL = MLPParams(type="mlp", hidden_layers=2, units=[64, 32])
# checkpoint_interval_s keeps its default (30 s): far longer than this whole run takes
TRAIN = TrainSpec(lr=1e-3, batch_size=32, epochs=4)
FRESH = "no checkpoint yet: starting from epoch 1"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    store = str(tmp_path_factory.mktemp("store"))
    table = ingest.fn(SklearnSource(type="sklearn", dataset="breast_cancer"), store)
    raw = split.fn(table, SplitParams(type="split"), 0, store)
    scaled = normalize.fn(raw, NormalizeParams(type="normalize"), 0, store)
    return shard.fn(scaled, ShardParams(max_samples=128), store)


def kill() -> None:
    raise KeyboardInterrupt  # as a cancelled run


def stopped_then_resumed(shards, spec, step, tmp_path, caplog):
    """An uninterrupted run, and a run stopped right after optimizer step `step` then run
    again: (whole, resumed, resume folder, steps per epoch, the resumed run's log)."""
    caplog.set_level(logging.INFO, logger="trainflow")
    whole = train_model.fn(shards, MODEL, spec, 0, str(tmp_path / "whole"))
    assert FRESH in caplog.messages
    rows = (whole.path / "metrics.jsonl").read_text().splitlines()
    per_epoch = json.loads(rows[0])["steps"]
    store = str(tmp_path / "stopped")
    caplog.clear()
    with pytest.raises(KeyboardInterrupt), after_step(step(per_epoch), kill):
        train_model.fn(shards, MODEL, spec, 0, store)
    assert FRESH in caplog.messages
    folder = resume_folder(Store(store), shards, MODEL, spec, 0)
    caplog.clear()
    resumed = train_model.fn(shards, MODEL, spec, 0, store)
    return whole, resumed, folder, per_epoch, caplog.messages


def same_model(a, b) -> bool:
    x, y = (checkpoint.load(ref.path / "best.pt")["model"] for ref in (a, b))
    return all(torch.equal(x[k], y[k]) for k in x) and a.meta == b.meta


def test_a_run_stopped_after_its_first_epoch_resumes_from_epoch_2(shards, tmp_path, caplog):
    # stopped one step into epoch 2, 0.1 s into training: epoch 1's checkpoint is there
    whole, resumed, folder, per_epoch, said = stopped_then_resumed(
        shards, TRAIN, lambda per_epoch: per_epoch + 1, tmp_path, caplog
    )
    assert f"resuming from epoch 2 (step {per_epoch}) of {folder}" in said
    assert FRESH not in said
    assert same_model(whole, resumed)  # exact resume: as if never stopped


def test_a_run_stopped_mid_epoch_resumes_from_its_first_step_checkpoint(shards, tmp_path, caplog):
    spec = TRAIN.model_copy(update={"checkpoint_every_steps": 3})
    whole, resumed, folder, _, said = stopped_then_resumed(
        shards, spec, lambda _: 4, tmp_path, caplog
    )
    assert f"resuming from epoch 1 (step 3) of {folder}" in said
    assert same_model(whole, resumed)
