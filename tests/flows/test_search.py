"""Searches through the real Prefect engine: the grid is the grid, seeded samplers repeat,
pruning prunes, data tasks are cached across trials, the shipped study runs end to end."""

import itertools
import json
from pathlib import Path
from uuid import uuid4

import optuna
import pytest
from prefect import tags
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
)

from tests.flows.helpers import task_states
from trainflow.flows.search import search_flow
from trainflow.spec.pipeline import load_spec
from trainflow.study_report import BEST_SPEC

pytestmark = pytest.mark.usefixtures("prefect_engine")

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "pipelines" / "breast_cancer_search.yaml"
# CI-sized: two folds of two epochs, one torch thread and fp32 (no probes), a few trials
SMALL = (
    "train.epochs=2",
    "evaluate.cv.folds=2",
    "train.threads=1",
    "train.precision=fp32",
    "search.n_trials=3",
)
DATA_TASKS = ("ingest", "expect", "clean", "split", "normalize", "shard")


def spec_for(tmp_path: Path, *overrides: str):
    return load_spec(
        SPEC,
        [f"outputs.store={tmp_path / 'store'}", f"outputs.runs={tmp_path / 'runs'}", *SMALL]
        + list(overrides),
    )


def search(tmp_path: Path, *overrides: str) -> tuple[dict, dict[str, list[str]]]:
    spec = spec_for(tmp_path, *overrides)
    tag = f"test-{uuid4().hex[:12]}"
    with tags(tag):
        result = search_flow(spec)(spec)
    return result, states(tag)


def states(tag: str) -> dict[str, list[str]]:
    """Task name -> final state names of the runs carrying `tag`, a trial's under `trial`
    (its run name also holds its parameters)."""
    found: dict[str, list[str]] = {}
    for name, names in task_states(tag).items():
        found.setdefault("trial" if name.partition("-")[0] == "trial" else name, []).extend(names)
    return found


def trials(result: dict) -> list[tuple]:
    study = optuna.load_study(study_name=result["study"], storage=result["storage"])
    return [(t.number, t.state.name, t.params, t.value) for t in study.get_trials()]


def test_a_grid_search_runs_the_grid_and_reuses_the_data_tasks(tmp_path):
    space = (
        "search.space={train.lr: {type: categorical, choices: [0.01, 0.001]}, "
        "model.dropout: {type: float, low: 0.0, high: 0.2, step: 0.2}}"
    )
    result, found = search(tmp_path, "search.sampler={type: grid}", "search.n_trials=null", space)
    drawn = [(t[2]["train.lr"], t[2]["model.dropout"]) for t in trials(result)]
    assert sorted(drawn) == sorted(itertools.product([0.01, 0.001], [0.0, 0.2]))
    assert all(t[1] == "COMPLETE" for t in trials(result))
    # each trial is a Prefect task; the data subflow of every trial after the first is cached
    assert found["trial"] == ["Completed"] * 4
    for task in DATA_TASKS:
        assert sorted(found[task]) == ["Cached"] * 3 + ["Completed"], (task, found[task])


def test_a_seeded_tpe_study_repeats_itself(tmp_path):
    overrides = ("search.sampler={type: tpe, seed: 3, n_startup_trials: 1}", "search.pruner=null")
    first, _ = search(tmp_path / "a", *overrides)
    second, _ = search(tmp_path / "b", *overrides)
    assert trials(first) == trials(second)
    assert len({str(t[2]) for t in trials(first)}) == 3  # three different draws


def test_pruning_prunes_a_hopeless_trial_and_its_task_completes(tmp_path):
    # grid seed 3 orders the points 0.01, 0.03, 1e-6: the last learns nothing in two epochs
    result, found = search(
        tmp_path,
        "search.sampler={type: grid, seed: 3}",
        "search.pruner={type: median, n_startup_trials: 2, n_warmup_steps: 0}",
        "search.space={train.lr: {type: categorical, choices: [0.03, 0.01, 1.0e-6]}}",
    )
    study = optuna.load_study(study_name=result["study"], storage=result["storage"])
    by_lr = {t.params["train.lr"]: t for t in study.get_trials()}
    assert by_lr[1.0e-6].state == optuna.trial.TrialState.PRUNED
    assert by_lr[1.0e-6].user_attrs["pruned_at"] == 1  # fold 0, epoch 1
    assert {by_lr[0.01].state, by_lr[0.03].state} == {optuna.trial.TrialState.COMPLETE}
    assert found["trial"] == ["Completed"] * 3  # pruned is a result, not a crash
    report = (Path(result["run_dir"]) / "report.md").read_text()
    assert "| 2 | pruned |" in report


def test_the_shipped_study_writes_a_best_spec_that_reproduces_its_trial(tmp_path):
    result, found = search(tmp_path, "search.refit=true", "ensemble=null")
    run = Path(result["run_dir"])
    for name in (BEST_SPEC, "report.md", "trials.json", "history.png"):
        assert (run / name).is_file(), name
    best = load_spec(run / BEST_SPEC)  # validates as a spec of its own, with no search
    assert best.search is None
    study = optuna.load_study(study_name=result["study"], storage=result["storage"])
    for path, value in study.best_params.items():
        node = best.model_dump(mode="json")
        for key in path.split("."):
            node = node[int(key)] if key.isdecimal() else node[key]
        assert node == value, path
    # refit: the best spec run as a pipeline; its CV folds are the best trial's folds
    refit = result["refit"]
    assert [f.meta["val"]["loss"] for f in refit["folds"]] == [
        f["val"]["loss"] for f in study.best_trial.user_attrs["folds"]
    ]
    assert refit["package"] and Path(refit["run_dir"]).is_dir()
    assert found["trial"] == ["Completed"] * 3
    # the UI's trials table: one row per trial, with its parameters, value and state
    with get_client(sync_client=True) as client:
        tables = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["breast-cancer-search-trials"])
            )
        )
    ours = [json.dumps(t.params, sort_keys=True) for t in study.get_trials()]
    rows = next(r for r in (_rows(t.data) for t in tables) if [x["params"] for x in r] == ours)
    assert [r["trial"] for r in rows] == [0, 1, 2]
    assert {"params", "value", "state", "pruned_at"} <= set(rows[0])


def test_parallel_trials_run_at_once_on_the_thread_pool(tmp_path):
    spec = spec_for(
        tmp_path,
        "search.parallel=2",
        "search.n_trials=2",
        "search.sampler={type: random}",
        "search.pruner=null",
    )
    result = search_flow(spec)(spec)
    study = optuna.load_study(study_name=result["study"], storage=result["storage"])
    first, second = study.get_trials()
    assert first.state == second.state == optuna.trial.TrialState.COMPLETE
    # two in flight: the second trial was started before the first one was told (one at a
    # time, it is asked only after); the thread pool has a worker for each
    assert second.datetime_start < first.datetime_complete


def _rows(data) -> list[dict]:
    return json.loads(data) if isinstance(data, str) else data
