"""train.distributed (fsdp) through the train task: real torchrun ranks (gloo, CPU) with the
model sharded by FSDP2 and checkpoints in torch.distributed.checkpoint's folders. At the same
global batch 2 sharded ranks end with the 1-process weights and metrics; a 2-rank run killed
mid-epoch resumes on 1 rank (DCP reshards) to the uninterrupted weights; its package predicts
as any other; a model smaller than one shard is refused before any rank starts."""

import logging
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import trainflow
from tests.interrupt import descendants, frozen_at_step, wait_gone
from tests.tasks.ranks import prepared_shards, rows
from trainflow.artifacts import Store
from trainflow.engine import checkpoint
from trainflow.errors import TrainflowError
from trainflow.spec.model import MLPParams
from trainflow.spec.pipeline import PipelineSpec
from trainflow.spec.train import TrainSpec
from trainflow.tasks.package import package_model
from trainflow.tasks.train import resume_folder, train_model
from trainflow.testrows import raw_test_rows

MODEL = MLPParams(type="mlp", hidden_layers=2, units=[32, 16])  # 1,554 parameters
# 369 training rows: 11 batches of 32 and a last, odd one of 17 (9 + 8 rows on two ranks)
ONE = TrainSpec.model_validate(
    {"lr": 1e-2, "batch_size": 32, "epochs": 3, "threads": 1, "precision": "fp32",
     "device": "cpu", "loader": {"mode": "memory"}}
)  # fmt: skip
SHARDED = {"strategy": "fsdp", "nproc_per_node": 2}
TWO = TrainSpec.model_validate({**ONE.model_dump(), "distributed": SHARDED})
# Measured (3 epochs, 36 AdamW steps): largest weight difference 9e-8, metrics 2e-8 (the
# float sums run in another order on two ranks); the DDP test's tolerance.
ATOL = 1e-5


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    store = str(tmp_path_factory.mktemp("store"))
    table, raw, scaled, shards = prepared_shards(store)
    one = train_model.fn(shards, MODEL, ONE, 0, store)
    two = train_model.fn(shards, MODEL, TWO, 0, store)
    return {
        **{"store": store, "table": table, "raw": raw, "scaled": scaled, "shards": shards},
        **{"one": one, "two": two},
    }


def assert_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=0, atol=ATOL), name


@pytest.mark.slow
def test_two_sharded_ranks_end_with_the_one_process_weights_metrics_and_files(runs):
    one, two = (checkpoint.load(runs[k].path / "best.pt")["model"] for k in ("one", "two"))
    assert all(type(v) is torch.Tensor for v in two.values())  # whole tensors, not shards
    assert_close(one, two)
    a, b = rows(runs["one"]), rows(runs["two"])
    assert [r.keys() for r in a] == [r.keys() for r in b] and len(a) == 3
    for x, y in zip(a, b):
        assert x == pytest.approx(y, abs=ATOL, rel=0)
    assert runs["two"].meta["batch_size"] == 32  # the global batch
    # the model folder holds the 1-process files (no checkpoint folder is left in it)
    assert {p.name for p in runs["two"].path.iterdir()} == {
        p.name for p in runs["one"].path.iterdir()
    }
    last = checkpoint.load(runs["two"].path / "last.pt")  # whole, weights_only
    assert last["world_size"] == 2 and last["epoch"] == 3
    assert_close(last["model"], checkpoint.load(runs["one"].path / "last.pt")["model"])


@pytest.mark.slow
def test_the_package_of_a_sharded_run_predicts_like_the_one_process_package(runs, tmp_path):
    probs = []
    for key, spec in (("one", ONE), ("two", TWO)):
        pipeline = PipelineSpec.model_validate(
            {
                "name": "fsdp_package",
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
        test = raw_test_rows(runs["table"], [runs["scaled"]], [], runs["raw"], 0)
        probs.append(trainflow.load_model(package.path).predict_proba(test))
    assert len(probs[0]) > 100 and np.abs(probs[0] - probs[1]).max() <= 1e-4


def test_a_model_smaller_than_one_shard_or_with_batch_norm_is_refused_before_any_rank(
    runs, tmp_path
):
    tiny = MLPParams(type="mlp", hidden_layers=1, units=[2])  # 30*2+2 + 2*2+2 = 68
    with pytest.raises(TrainflowError, match=r"68 parameters across 2 rank\(s\)") as caught:
        train_model.fn(runs["shards"], tiny, TWO, 0, str(tmp_path))
    assert "smaller than one shard" in str(caught.value) and "strategy: ddp" in str(caught.value)
    normed = MLPParams(type="mlp", hidden_layers=2, units=[32, 16], norm="batch")
    with pytest.raises(TrainflowError, match=r"fsdp cannot train a model with batch norm"):
        train_model.fn(runs["shards"], normed, TWO, 0, str(tmp_path))
    assert not list(tmp_path.rglob("*.pt"))


# (TWO with a checkpoint every step: it trains as the module's run of ONE does, the kill
# test's uninterrupted weights)
STEPPED = TrainSpec.model_validate(
    {**TWO.model_dump(), "checkpoint_every_steps": 1, "checkpoint_interval_s": 0}
)
STEPS_PER_EPOCH = 12
ON_ONE = TrainSpec.model_validate(
    {**STEPPED.model_dump(), "distributed": {**SHARDED, "nproc_per_node": 1}}
)
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


def killed_mid_epoch(runs, store: str, work: Path) -> dict:
    """Run STEPPED's 2-rank training in a child process, stop rank 0 inside optimizer step 4
    of epoch 2 (every rank has saved step 3's checkpoint folder: the save is collective),
    SIGKILL the child (its torchrun and ranks stop with it), and return that folder's
    state.pt."""
    folder = resume_folder(Store(store), runs["shards"], MODEL, STEPPED, 0)
    env, frozen = frozen_at_step(work, STEPS_PER_EPOCH + 4)
    argv = [runs["shards"].model_dump_json(), MODEL.model_dump_json(), STEPPED.model_dump_json()]
    child = subprocess.Popen([sys.executable, "-c", CHILD, *argv, store], env=env)
    try:
        deadline = time.monotonic() + 600
        while child.poll() is None and time.monotonic() < deadline and not frozen.exists():
            time.sleep(0.05)
        ranks = descendants(child.pid)
    finally:
        child.kill()  # SIGKILL
        child.wait()
    assert frozen.exists(), f"rank 0 did not reach epoch 2's step 4 (exit {child.returncode})"
    wait_gone(ranks)  # torchrun stops its ranks on its parent's death (engine.ddp)
    saved = checkpoint.load(folder / "last.dcp" / "state.pt")
    assert (saved["epoch"], saved["position"]["batch"]) == (2, 3), saved["position"]
    return saved


@pytest.mark.slow
def test_a_two_rank_run_killed_mid_epoch_resumes_on_one_rank(runs, tmp_path, caplog):
    """The checkpoint folder of 2 ranks, SIGKILLed mid-epoch, resumes on 1 rank (DCP
    reshards model and optimizer): the run ends with the uninterrupted weights."""
    full = runs["one"]  # (STEPPED's training, uninterrupted, in one process)
    store = str(tmp_path / "killed")  # (the shards' paths are absolute: the same files)
    left = killed_mid_epoch(runs, store, tmp_path / "site")
    assert left["world_size"] == 2 and left["model"] == {}  # the weights are DCP's shards
    assert left["steps"] == STEPS_PER_EPOCH + 3
    folder = resume_folder(Store(store), runs["shards"], MODEL, STEPPED, 0)
    assert not (folder / "last.pt").exists()
    caplog.set_level(logging.INFO, logger="trainflow")
    resumed = train_model.fn(runs["shards"], MODEL, ON_ONE, 0, store)
    # (a run from scratch would end with the same weights: this one started from the kill)
    assert "resuming from epoch 2 (step 15)" in caplog.text
    assert_close(
        checkpoint.load(full.path / "best.pt")["model"],
        checkpoint.load(resumed.path / "best.pt")["model"],
    )
    x, y = rows(full), rows(resumed)
    assert len(x) == len(y) == 3
    for one, other in zip(x, y):
        assert one == pytest.approx(other, abs=ATOL, rel=0)
    assert not folder.exists()  # the resume folder is gone once the run finished


@pytest.mark.parametrize(
    ("extra", "knob"),
    [
        ({"l1": 1e-4}, "l1"),
        ({"ema": {"decay": 0.99}}, "ema"),
        ({"compile": True}, "compile"),
        ({"freeze": ["layers.0.*"]}, "freeze"),
        ({"debug": {"layer_norms": True}}, "debug.layer_norms"),
    ],
)
def test_knobs_that_cannot_hold_on_shards_are_refused_by_the_spec(extra, knob):
    with pytest.raises(ValueError, match=rf"train.{knob} cannot run under distributed \(fsdp\)"):
        TrainSpec.model_validate({**ONE.model_dump(), **extra, "distributed": SHARDED})


class Touch:
    """What an attacker pickles: unpickling it calls open(marker, "w")."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_folder_whose_metadata_runs_code_is_refused_unrun(tmp_path):
    from trainflow.engine.fsdp import SafeReader

    marker = tmp_path / "ran"
    folder = tmp_path / "last.dcp"
    folder.mkdir()
    (folder / ".metadata").write_bytes(pickle.dumps(Touch(marker)))
    with pytest.raises(TrainflowError, match=r"open is not a part of DCP.s metadata"):
        SafeReader(str(folder)).read_metadata()
    assert not marker.exists()


def test_a_half_written_checkpoint_folder_is_never_read(tmp_path):
    """A write cut short leaves last.dcp.partial (never read); a crash between publish's two
    renames leaves the previous folder, last.dcp.prev, which is read instead."""
    from trainflow.engine.fsdp import resume_point

    def folder(name: str, epoch: int) -> None:
        (tmp_path / name).mkdir()
        checkpoint.save(tmp_path / name / "state.pt", {"model": {}, "epoch": epoch})
        (tmp_path / name / ".metadata").write_bytes(b"")

    folder("last.dcp.partial", 3)
    assert resume_point(tmp_path) is None
    folder("last.dcp.prev", 1)
    assert resume_point(tmp_path)["epoch"] == 1
    folder("last.dcp", 2)
    saved = resume_point(tmp_path)
    assert saved["epoch"] == 2 and saved["sharded"] == str(tmp_path / "last.dcp")
