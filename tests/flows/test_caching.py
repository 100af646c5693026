"""Caching through the real Prefect engine, asserted on task-run states."""

import pytest

from tests.flows.helpers import run

pytestmark = pytest.mark.usefixtures("prefect_engine")

SMALL = ("train.epochs=4", "evaluate.cv.folds=2", "compress.prune.finetune_epochs=1")
DATA_TASKS = ("ingest", "expect", "clean", "split", "normalize", "shard")
MODEL_TASKS = ("train", "evaluate", "train_fold", "ensemble", "quantize", "prune", "report")


def test_unchanged_changed_and_damaged_reruns(tmp_path):
    first, states = run("breast_cancer_mlp", tmp_path, *SMALL)
    assert "Cached" not in {s for names in states.values() for s in names}

    # 1. unchanged spec: every computing task is served from the cache
    _, states = run("breast_cancer_mlp", tmp_path, *SMALL)
    for task in DATA_TASKS + MODEL_TASKS:
        assert set(states[task]) == {"Cached"}, task
    assert states["publish_report"] == ["Completed"]  # writes this run's own folder

    # 2. only train.lr changes: data stays cached, training and what follows re-run
    _, states = run("breast_cancer_mlp", tmp_path, *SMALL, "train.lr=0.003")
    for task in DATA_TASKS:
        assert set(states[task]) == {"Cached"}, task
    for task in MODEL_TASKS:
        assert set(states[task]) == {"Completed"}, task

    # 3. one artifact file deleted: exactly that task recomputes; it writes identical bytes,
    #    so its dependents' inputs are unchanged and they stay cached (content addressing)
    normalized = first["data"]["splits"]  # a view: normalize's fitted state over split's rows
    (normalized.path / "state.json").unlink()
    again, states = run("breast_cancer_mlp", tmp_path, *SMALL)
    assert states["normalize"] == ["Completed"]
    for task in ("ingest", "expect", "clean", "split", "shard") + MODEL_TASKS:
        assert set(states[task]) == {"Cached"}, task
    assert again["data"]["splits"] == normalized and normalized.is_valid()

    # 4. the same spec and data in a fresh store give the same metrics (CV folds included)
    fresh, _ = run("breast_cancer_mlp", tmp_path / "fresh", *SMALL)
    assert fresh["test"] == first["test"]
    assert [f.meta["val"] for f in fresh["folds"]] == [f.meta["val"] for f in first["folds"]]

    # 5. an altered artifact (a tampered checkpoint) is never served: train recomputes
    (first["model"].path / "best.pt").write_bytes(b"tampered")
    retrained, states = run("breast_cancer_mlp", tmp_path, *SMALL)
    assert states["train"] == ["Completed"]
    assert retrained["model"].is_valid()
    assert retrained["test"]["accuracy"] == pytest.approx(first["test"]["accuracy"], abs=0.01)
