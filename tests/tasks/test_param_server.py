"""train.distributed (parameter_server) through the train task: real torchrun ranks, rank 0 the
server and two trainers (gloo point-to-point tensors, CPU) on real shards. Sync ends with
the 1-process weights; async with a staleness bound converges, dropping and counting what is
too stale; the model folder packages and predicts; knobs that cannot hold are refused."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

import trainflow
from tests.interrupt import descendants, frozen_at_step, wait_gone
from tests.tasks.ranks import prepared_shards, rows
from trainflow.artifacts import Store
from trainflow.engine import checkpoint
from trainflow.errors import ArtifactError, SpecError, TrainflowError
from trainflow.spec.model import MLPParams
from trainflow.spec.pipeline import PipelineSpec, load_spec
from trainflow.spec.train import TrainSpec
from trainflow.tasks.package import package_model
from trainflow.tasks.train import resume_folder, train_model

ROOT = Path(__file__).resolve().parents[2]
MODEL = MLPParams(type="mlp", hidden_layers=2, units=[32, 16])
# 369 training rows: 11 batches of 32 and a last one of 17 (9 + 8 rows on two trainers)
# (a checkpoint every epoch: the kill test resumes SYNC's own run from its second epoch)
ONE = TrainSpec.model_validate(
    {"lr": 1e-2, "batch_size": 32, "epochs": 3, "threads": 1, "precision": "fp32",
     "device": "cpu", "loader": {"mode": "memory"}, "checkpoint_interval_s": 0}
)  # fmt: skip
STEPS_PER_EPOCH = 12
PS = {"strategy": "parameter_server", "nproc_per_node": 3}  # 1 server + 2 trainers
SYNC = TrainSpec.model_validate({**ONE.model_dump(), "distributed": PS})
# staleness 0: at each epoch's start both trainers get the same weights, so the second
# gradient to arrive is one update old and dropped (at least one per epoch)
ASYNC = TrainSpec.model_validate(
    {**ONE.model_dump(), "distributed": {**PS, "mode": "async", "staleness": 0}}
)
# Measured (3 epochs, 36 AdamW steps): largest weight difference 9e-8 (the shares' gradients
# are summed in another order); the DDP test's tolerance.
ATOL = 1e-5
# Measured async, staleness 0, 3 runs (5, 7 and 10 of 36 gradients dropped): last epoch's
# training loss 0.073-0.078 against 1 process's 0.075; validation accuracy within 0.02.
ASYNC_LOSS_ATOL, ASYNC_ACC_ATOL = 0.05, 0.05


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    store = str(tmp_path_factory.mktemp("store"))
    table, raw, scaled, shards = prepared_shards(store)
    made = {"store": store, "table": table, "scaled": scaled, "shards": shards}
    for key, spec in (("one", ONE), ("sync", SYNC), ("async", ASYNC)):
        made[key] = train_model.fn(shards, MODEL, spec, 0, store)
    return made


def served(model) -> dict:
    return json.loads((model.path / "model.json").read_text())["parameter_server"]


@pytest.mark.slow
def test_sync_ends_with_the_one_process_weights_metrics_and_files(runs):
    one, ps = (checkpoint.load(runs[k].path / "best.pt")["model"] for k in ("one", "sync"))
    assert one.keys() == ps.keys()
    for name in one:
        assert torch.allclose(one[name], ps[name], rtol=0, atol=ATOL), name
    a, b = rows(runs["one"]), rows(runs["sync"])
    assert [r.keys() for r in a] == [r.keys() for r in b] and len(a) == 3
    for x, y in zip(a, b):
        assert x == pytest.approx(y, abs=ATOL, rel=0)
    assert {p.name for p in runs["sync"].path.iterdir()} == {
        p.name for p in runs["one"].path.iterdir()
    }
    assert runs["sync"].meta["batch_size"] == 32  # the global batch
    assert served(runs["sync"]) == {
        "mode": "sync", "staleness": 0, "workers": 2, "applied": 36, "dropped": 0,
        "most_stale": 0,
    }  # fmt: skip
    assert checkpoint.load(runs["sync"].path / "last.pt")["world_size"] == 3


@pytest.mark.slow
def test_async_converges_and_drops_and_counts_the_too_stale_gradients(runs):
    counts = served(runs["async"])
    assert counts["mode"] == "async" and counts["staleness"] == 0
    assert counts["dropped"] >= 3  # (one an epoch at least)
    assert counts["applied"] + counts["dropped"] == 36  # every batch computed once
    assert counts["most_stale"] == 0  # none applied past the bound
    assert rows(runs["async"])[-1]["steps"] == counts["applied"]
    one, ps = rows(runs["one"])[-1], rows(runs["async"])[-1]
    assert ps["train_loss"] == pytest.approx(one["train_loss"], abs=ASYNC_LOSS_ATOL)
    assert ps["val_accuracy"] == pytest.approx(one["val_accuracy"], abs=ASYNC_ACC_ATOL)
    assert ps["train_loss"] < rows(runs["async"])[0]["train_loss"]


@pytest.mark.slow
def test_the_package_of_a_parameter_server_run_predicts_like_the_one_process_one(runs):
    probs = []
    for key, spec in (("one", ONE), ("sync", SYNC)):
        pipeline = PipelineSpec.model_validate(
            {
                "name": "ps_package",
                "data": {
                    "source": {"type": "sklearn", "dataset": "breast_cancer"},
                    "steps": [{"type": "split"}, {"type": "normalize"}],
                },
                "model": MODEL.model_dump(),
                "train": spec.model_dump(),
            }
        )
        package = package_model.fn(
            "model", [runs[key]], None, pipeline, runs["table"], [runs["scaled"]], runs["store"]
        )
        assert package is not None
        raw = pl.read_parquet(next(Path(runs["table"].path).glob("*.parquet")))
        probs.append(trainflow.load_model(package.path).predict_proba(raw.drop("target")))
    assert np.abs(probs[0] - probs[1]).max() <= 1e-4


CHILD = """
import sys
from trainflow.artifacts import ArtifactRef
from trainflow.spec.model import MLPParams
from trainflow.spec.train import TrainSpec
from trainflow.tasks.train import train_model
shards, model, spec, store = sys.argv[1:]
train_model.fn(ArtifactRef.model_validate_json(shards), MLPParams.model_validate_json(model),
               TrainSpec.model_validate_json(spec), 0, store)
"""


def killed_after_an_epoch(runs, store: str, work: Path) -> Path:
    """Run SYNC's training in a child process, stop its server (rank 0) inside the first
    optimizer step of epoch 3, once its last.pt holds epoch 2, and SIGKILL the child (torchrun
    and the ranks stop with it); its resume folder."""
    folder = resume_folder(Store(store), runs["shards"], MODEL, SYNC, 0)
    env, frozen = frozen_at_step(work, 2 * STEPS_PER_EPOCH + 1)
    argv = [runs["shards"].model_dump_json(), MODEL.model_dump_json(), SYNC.model_dump_json()]
    child = subprocess.Popen([sys.executable, "-c", CHILD, *argv, store], env=env)
    saved, deadline = {}, time.monotonic() + 600
    try:
        while child.poll() is None and time.monotonic() < deadline and not frozen.exists():
            time.sleep(0.05)
        settled = time.monotonic() + 60  # the writer thread may still be saving epoch 2
        while frozen.exists() and time.monotonic() < settled and saved.get("epoch") != 2:
            try:
                saved = checkpoint.load(folder / "last.pt")
            except ArtifactError:  # being replaced
                pass
            time.sleep(0.05)
        ranks = descendants(child.pid)
    finally:
        child.kill()  # SIGKILL
        child.wait()
    assert frozen.exists(), f"the server did not reach epoch 3 (exit {child.returncode})"
    assert saved.get("epoch") == 2, f"last.pt holds epoch {saved.get('epoch')}, not 2"
    assert saved["position"] is None  # (between epochs: a resume starts epoch 3)
    wait_gone(ranks)  # torchrun stops its ranks on its parent's death (engine.ddp)
    return folder


@pytest.mark.slow
def test_a_killed_run_resumes_at_its_last_epoch_to_the_uninterrupted_weights(runs, tmp_path):
    full = runs["sync"]  # (SYNC's uninterrupted run)
    store = str(tmp_path / "killed")  # (the shards' paths are absolute: the same files)
    folder = killed_after_an_epoch(runs, store, tmp_path / "site")
    resumed = train_model.fn(runs["shards"], MODEL, SYNC, 0, store)
    a = checkpoint.load(full.path / "best.pt")["model"]
    b = checkpoint.load(resumed.path / "best.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical
    assert rows(full) == rows(resumed) and len(rows(full)) == 3
    assert not folder.exists()  # (the resume folder is dropped once the model is committed)
    # a checkpoint another spec wrote is one error from the server's rank, its lines named
    checkpoint.save_rotating(
        folder / "last.pt", {**checkpoint.load(full.path / "last.pt"), "spec": "another"}
    )
    with pytest.raises(TrainflowError, match=r"failed on rank 0:") as caught:
        train_model.fn(runs["shards"], MODEL, SYNC, 0, store)
    assert "written by a different train spec" in str(caught.value)


def test_the_server_and_trainers_code_is_in_the_train_tasks_cache_key():
    from trainflow.sourcegraph import code_scope

    scope = code_scope("trainflow.tasks.train")
    assert "trainflow.engine.ps_worker" in scope and "trainflow.engine.param_server" in scope


def test_trainers_not_ranks_count_against_the_cores():
    """The server only steps and validates while the trainers compute: one more rank than
    cores is accepted, two more is one spec error naming the trainers."""
    cores = len(os.sched_getaffinity(0))
    ps = ["train.device=cpu", "train.distributed.strategy=parameter_server"]
    path = ROOT / "pipelines" / "breast_cancer_mlp.yaml"
    load_spec(path, [*ps, f"train.distributed.nproc_per_node={cores + 1}"])
    with pytest.raises(SpecError) as caught:
        load_spec(path, [*ps, f"train.distributed.nproc_per_node={cores + 2}"])
    assert len(caught.value.problems) == 1
    assert f"gives {cores + 1} trainers" in str(caught.value)
    assert f"at most {cores + 1}" in str(caught.value)


@pytest.mark.parametrize(
    ("knobs", "words"),
    [
        ({"accumulate": 2}, "train.accumulate cannot run under distributed .parameter_server."),
        ({"ema": {"decay": 0.9}}, "train.ema cannot run .* no running average"),
        ({"checkpoint_every_steps": 5}, "a resume starts an epoch"),
        ({"device": "cuda"}, "exchange CPU tensors"),
        ({"loader": {"mode": "stream"}}, "loader.mode: memory"),
        ({"distributed": {**PS, "nproc_per_node": 1}}, "at least 2 ranks"),
        ({"distributed": {**PS, "nnodes": 2, "rdzv_endpoint": "h:29500"}}, "on one machine"),
        ({"distributed": {**PS, "staleness": 2}}, "set mode: async"),
    ],
)
def test_knobs_that_cannot_hold_are_refused_by_the_spec(knobs, words):
    with pytest.raises(ValueError, match=words):
        TrainSpec.model_validate({"distributed": PS, **knobs})
