"""train.distributed (pipeline) through the train task: real torchrun ranks (gloo, CPU, 2
processes), the model cut into one stage per rank, each global batch run as micro-batches.
Equal micro-batch gradients add up to the full batch's: the 2-stage run ends with the
1-process weights and metrics; each stage holds only its part of the parameters; the
assembled model packages and predicts; a model or batch the pipeline cannot take is one
clear error before any rank starts."""

import json
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
from trainflow.errors import SpecError, TrainflowError
from trainflow.spec.model import CNNParams, MLPParams, TransformerParams
from trainflow.spec.pipeline import PipelineSpec
from trainflow.spec.train import TrainSpec
from trainflow.tasks.package import package_model
from trainflow.tasks.train import resume_folder, train_model

# Layers: Flatten, Linear(30, 32), ReLU, Linear(32, 16), ReLU, Linear(16, 2): 992, 528 and 34
# parameters, cut into [Flatten, Linear] (992) and the rest (562).
MODEL = MLPParams(type="mlp", hidden_layers=2, units=[32, 16])
# 369 training rows: 11 batches of 32 (4 micro-batches of 8) and a last one of 17 (prime:
# one micro-batch of 17, a second schedule of its own)
ONE = TrainSpec.model_validate(
    {"lr": 1e-2, "batch_size": 32, "epochs": 3, "threads": 1, "precision": "fp32",
     "device": "cpu", "loader": {"mode": "memory"}}
)  # fmt: skip
PIPE = {"strategy": "pipeline", "nproc_per_node": 2, "microbatches": 4}
GPIPE = TrainSpec.model_validate({**ONE.model_dump(), "distributed": PIPE})
ONE_F_ONE_B = TrainSpec.model_validate(
    {**ONE.model_dump(), "distributed": {**PIPE, "schedule": "1f1b"}}
)
# Measured (3 epochs, 36 AdamW steps, both schedules): largest weight difference 8.9e-8 and
# metrics within 4.1e-8 (the micro-batch gradients add in another order than one batch's).
ATOL = 1e-5


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    store = str(tmp_path_factory.mktemp("store"))
    table, raw, scaled, shards = prepared_shards(store)
    return {"store": store, "shards": shards, "table": table, "scaled": scaled}


@pytest.fixture(scope="module")
def runs(data):
    """The one-process run and the two pipeline runs (one torchrun launch each)."""
    trained = {
        name: train_model.fn(data["shards"], MODEL, spec, 0, data["store"])
        for name, spec in (("one", ONE), ("gpipe", GPIPE), ("1f1b", ONE_F_ONE_B))
    }
    return {**data, **trained}


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_two_stages_end_with_the_one_process_weights_and_loss_curve(runs, schedule):
    one, two = (checkpoint.load(runs[k].path / "best.pt")["model"] for k in ("one", schedule))
    assert one.keys() == two.keys()
    for name in one:
        assert torch.allclose(one[name], two[name], rtol=0, atol=ATOL), name
    a, b = rows(runs["one"]), rows(runs[schedule])
    assert [r.keys() for r in a] == [r.keys() for r in b] and len(a) == 3
    for x, y in zip(a, b):
        assert x == pytest.approx(y, abs=ATOL, rel=0)  # train_loss, val_loss, lr, steps...
    assert a[-1]["train_loss"] < a[0]["train_loss"]  # (it learns: the curve is not flat)
    assert runs[schedule].meta["best_epoch"] == runs["one"].meta["best_epoch"]
    names = {p.name for p in runs[schedule].path.iterdir()}
    assert names == {p.name for p in runs["one"].path.iterdir()}  # the one-process files
    assert checkpoint.load(runs[schedule].path / "last.pt")["world_size"] == 2
    assert not list(Path(runs["store"]).rglob("stage*.pt"))  # the resume folder went


@pytest.mark.slow
def test_each_stage_holds_and_steps_only_its_part_of_the_parameters(runs):
    info = json.loads((runs["gpipe"].path / "model.json").read_text())
    stages = info["pipeline"]["stages"]
    whole = sum(v.numel() for v in checkpoint.load(runs["one"].path / "best.pt")["model"].values())
    assert [s["parameters"] for s in stages] == [992, 562]
    assert sum(s["parameters"] for s in stages) == whole == 1554
    for stage in stages:
        assert 0 < stage["parameters"] < whole
        assert stage["optimized"] == stage["parameters"]  # its optimizer: its part only
    # contiguous parts covering the six layers in order
    assert [(s["first_layer"], s["end_layer"]) for s in stages][0][0] == 0
    assert stages[0]["end_layer"] == stages[1]["first_layer"] and stages[1]["end_layer"] == 6
    assert info["pipeline"]["microbatches"] == 4 and info["pipeline"]["schedule"] == "gpipe"


@pytest.mark.slow
def test_the_assembled_model_packages_and_predicts_as_the_one_process_model(runs, tmp_path):
    spec = PipelineSpec.model_validate(
        {
            "name": "pipelined",
            "data": {
                "source": {"type": "sklearn", "dataset": "breast_cancer"},
                "steps": [{"type": "split"}, {"type": "normalize"}],
            },
            "model": MODEL.model_dump(),
            "train": GPIPE.model_dump(),
        }
    )
    store, frame = runs["store"], None
    packages = {}
    for name in ("one", "gpipe"):
        packages[name] = package_model.fn(
            "model", [runs[name]], None, spec, runs["table"], [runs["scaled"]], store
        )
    import polars as pl
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer(as_frame=True)
    frame = pl.from_pandas(bunch.frame.drop(columns=["target"]))
    one = trainflow.load_model(packages["one"].path).predict_proba(frame)
    two = trainflow.load_model(packages["gpipe"].path).predict_proba(frame)
    assert one.shape == (569, 2)
    assert np.abs(one - two).max() <= 1e-4


def test_more_stages_than_layers_is_one_spec_error_before_any_rank_starts(data):
    bare = MLPParams(type="mlp", hidden_layers=0)  # Flatten, Linear: one layer with weights
    with pytest.raises(SpecError) as caught:
        train_model.fn(data["shards"], bare, GPIPE, 0, data["store"])
    message = str(caught.value)
    assert "2 stages" in message and "model mlp has 1 top-level layer" in message
    assert "nproc_per_node to at most 1" in message


def test_a_model_that_is_not_a_plain_sequence_is_refused_naming_it(data):
    model = TransformerParams(type="transformer")
    with pytest.raises(SpecError, match="model transformer builds a") as caught:
        train_model.fn(data["shards"], model, GPIPE, 0, data["store"])
    assert "strategy: ddp" in str(caught.value)


def test_a_microbatch_count_that_does_not_divide_the_batch_is_refused():
    with pytest.raises(ValueError, match=r"batch_size \(30\) is cut into .*microbatches \(4\)"):
        TrainSpec(batch_size=30, distributed=PIPE)
    with pytest.raises(ValueError, match="at least 2 ranks"):
        TrainSpec(batch_size=32, distributed={**PIPE, "nproc_per_node": 1})


@pytest.mark.parametrize(
    ("knob", "words"),
    [
        ({"accumulate": 2}, "train.accumulate cannot run under distributed \\(pipeline\\)"),
        ({"ema": {"decay": 0.9}}, "train.ema cannot run"),
        ({"checkpoint_every_steps": 5}, "does not resume"),
    ],
)
def test_knobs_that_cannot_hold_under_pipeline_are_refused(knob, words):
    with pytest.raises(ValueError, match=words):
        TrainSpec(batch_size=32, distributed=PIPE, **knob)


def test_a_streamed_training_split_is_refused(data):
    spec = TrainSpec.model_validate(
        {**GPIPE.model_dump(), "loader": {"mode": "stream", "resampled": True}}
    )
    with pytest.raises(TrainflowError, match="train.loader.mode: memory"):
        train_model.fn(data["shards"], MODEL, spec, 0, data["store"])


def test_the_ranks_code_is_in_the_train_tasks_cache_key():
    from trainflow.sourcegraph import code_scope

    scope = code_scope("trainflow.tasks.train")
    assert {"trainflow.engine.pipeline_worker", "trainflow.engine.pipeline_parallel"} <= set(scope)


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
STEPS_PER_EPOCH = 12  # (369 training rows, batches of 32)


def killed_after_an_epoch(data, store: str, work: Path) -> dict:
    """Run GPIPE's training in a child process, stop rank 0 inside the first optimizer step
    of epoch 3 (its stages' checkpoints hold epoch 2), and SIGKILL the child (its torchrun
    and ranks stop with it); rank 0's last.pt."""
    folder = resume_folder(Store(store), data["shards"], MODEL, GPIPE, 0)
    env, frozen = frozen_at_step(work, 2 * STEPS_PER_EPOCH + 1)
    argv = [data["shards"].model_dump_json(), MODEL.model_dump_json(), GPIPE.model_dump_json()]
    child = subprocess.Popen([sys.executable, "-c", CHILD, *argv, store], env=env)
    try:
        deadline = time.monotonic() + 600
        while child.poll() is None and time.monotonic() < deadline and not frozen.exists():
            time.sleep(0.05)
        ranks = descendants(child.pid)
    finally:
        child.kill()  # SIGKILL
        child.wait()
    assert frozen.exists(), f"rank 0 did not reach epoch 3 (exit {child.returncode})"
    wait_gone(ranks)  # torchrun stops its ranks on its parent's death (engine.ddp)
    saved = checkpoint.load(folder / "last.pt")  # (an epoch's end saves before going on)
    assert saved["epoch"] == 2, saved["epoch"]
    assert (folder / "stage1.pt").is_file() or (folder / "stage1.prev.pt").is_file()
    return saved


@pytest.mark.slow
def test_a_pipeline_run_killed_after_an_epoch_resumes_to_the_uninterrupted_weights(runs, tmp_path):
    full = runs["gpipe"]  # (GPIPE's uninterrupted run)
    store = str(tmp_path / "killed")  # (the shards' paths are absolute: the same files)
    left = killed_after_an_epoch(runs, store, tmp_path / "site")
    assert left["world_size"] == 2 and left["position"] is None  # (between epochs)
    resumed = train_model.fn(runs["shards"], MODEL, GPIPE, 0, store)
    a = checkpoint.load(full.path / "best.pt")["model"]
    b = checkpoint.load(resumed.path / "best.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical
    assert rows(full) == rows(resumed) and len(rows(full)) == GPIPE.epochs


@pytest.mark.slow
def test_a_checkpoint_no_pipeline_run_left_is_refused_naming_its_folder(runs):
    """A resume folder of these inputs holding another strategy's last.pt (here the
    one-process run's, as a 2-rank DDP run would leave it) is refused, not half-read."""
    spec = TrainSpec.model_validate({**GPIPE.model_dump(), "epochs": 4})  # (a key of its own)
    folder = resume_folder(Store(runs["store"]), runs["shards"], MODEL, spec, 0)
    saved = checkpoint.load(runs["one"].path / "last.pt")
    checkpoint.save_rotating(folder / "last.pt", {**saved, "world_size": 2})
    with pytest.raises(TrainflowError, match="no pipeline run left it") as caught:
        train_model.fn(runs["shards"], MODEL, spec, 0, runs["store"])
    assert str(folder) in str(caught.value) and "delete the folder" in str(caught.value)


@pytest.mark.parametrize("stages", [2, 3])
def test_a_cnn_is_cut_into_contiguous_parts_of_the_smallest_largest_stage(stages):
    """The cut of a CNN (conv, norm, pool blocks, then the head): contiguous parts covering
    every layer, each with parameters, the largest as small as any cut can make it."""
    from itertools import combinations

    from trainflow.engine.pipeline_parallel import boundary_shapes, cut
    from trainflow.models.cnn import cnn

    net = cnn([1, 8, 8], 10, channels=[8, 16], hidden=32)
    sizes = [sum(p.numel() for p in layer.parameters()) for layer in net]
    parts = cut(net, stages)
    assert [i for part in parts for i in part] == list(range(len(net)))
    assert all(sum(sizes[i] for i in part) > 0 for part in parts)
    best = min(
        max(sum(sizes[a:b]) for a, b in zip((0, *ends), (*ends, len(net))))
        for ends in combinations(range(1, len(net)), stages - 1)
        if all(sum(sizes[a:b]) for a, b in zip((0, *ends), (*ends, len(net))))
    )
    assert max(sum(sizes[i] for i in part) for part in parts) == best
    shapes = boundary_shapes(net, parts, [1, 8, 8])
    assert shapes[0] == [1, 8, 8] and shapes[-1] == [10]


def test_an_epochs_last_batch_runs_as_the_most_equal_micro_batches_it_splits_into():
    from trainflow.engine.pipeline_parallel import micro

    assert [micro(rows, 4) for rows in (32, 17, 18, 9, 3)] == [4, 1, 3, 3, 3]


KNOBS = {
    **ONE.model_dump(),
    "lr": 3e-2,
    "epochs": 12,
    "schedule": {"type": "plateau", "patience": 0, "factor": 0.5},
    "early_stopping": {"monitor": "val_loss", "patience": 2},
    "class_weights": "balanced",
    "label_smoothing": 0.1,
    "sampler": "weighted",
}


@pytest.mark.slow
def test_rank_zeros_plateau_and_early_stopping_reach_every_stage_as_in_one_process(data):
    """A plateau schedule and early stopping decided on rank 0's validation, with class
    weights, label smoothing and the weighted sampler (each micro-batch's loss scaled by its
    share of the batch's class weight): the 1-process run's lr steps, stop and weights."""
    one_spec = TrainSpec.model_validate(KNOBS)
    pipe_spec = TrainSpec.model_validate({**KNOBS, "distributed": PIPE})
    one = train_model.fn(data["shards"], MODEL, one_spec, 0, data["store"])
    two = train_model.fn(data["shards"], MODEL, pipe_spec, 0, data["store"])
    a, b = rows(one), rows(two)
    assert len(a) == len(b) < KNOBS["epochs"] and one.meta["stopped_early"] is True
    assert [r["lr"] for r in a] == [r["lr"] for r in b] and len({r["lr"] for r in a}) > 1
    for x, y in zip(a, b):
        assert x == pytest.approx(y, abs=ATOL, rel=0)
    assert two.meta["stopped_early"] and two.meta["best_epoch"] == one.meta["best_epoch"]
    w1, w2 = (checkpoint.load(m.path / "best.pt")["model"] for m in (one, two))
    assert all(torch.allclose(w1[k], w2[k], rtol=0, atol=ATOL) for k in w1)


@pytest.mark.slow
def test_a_cnn_with_augmentation_trains_in_stages_as_in_one_process(tmp_path):
    """Image batches (N, 1, 8, 8) through conv stages, augmented on stage 0 by the
    one-process run's seeded transforms, under 1F1B: the 1-process weights and curve."""
    store = str(tmp_path)
    table, raw, scaled, shards = prepared_shards(store, "digits", 1000)
    model = CNNParams(type="cnn", channels=[8, 16], hidden=32, norm="none")
    erasing = {"name": "Erasing", "params": {"p": 0.2, "scale": [0.02, 0.06]}}
    base = {**ONE.model_dump(), "lr": 2e-3, "epochs": 2, "augment": {"transforms": [erasing]}}
    pipelined = {**base, "distributed": {**PIPE, "schedule": "1f1b"}}
    one = train_model.fn(shards, model, TrainSpec.model_validate(base), 0, store)
    two = train_model.fn(shards, model, TrainSpec.model_validate(pipelined), 0, store)
    a, b = (checkpoint.load(m.path / "best.pt")["model"] for m in (one, two))
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=ATOL) for k in a)  # measured 1.5e-7
    for x, y in zip(rows(one), rows(two), strict=True):
        assert x == pytest.approx(y, abs=ATOL, rel=0)
    stages = json.loads((two.path / "model.json").read_text())["pipeline"]["stages"]
    assert [s["parameters"] for s in stages] == [1248, 2410]  # convs | the head's Linears
