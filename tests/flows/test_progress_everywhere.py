"""Progress a user watching a run sees move: CV folds, quantize, prune (and the data tasks'
ingest and shard) on the pipeline's run, a study's trials on the search's run; each a progress
artifact of that flow run ending at 100 %."""

from uuid import UUID

import pytest
from prefect import tags
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterTags,
)
from prefect.events.worker import EventsWorker

from tests.flows.helpers import PACKAGE_RUNS, ROOT
from trainflow.flows.pipeline import pipeline
from trainflow.flows.search import search_flow
from trainflow.spec.pipeline import load_spec

pytestmark = pytest.mark.usefixtures("prefect_engine")

KEYS = ("ingest-progress", "shard-progress", "cv-progress", "quantize-progress", "prune-progress")


def watched_run(tag: str) -> UUID:
    """The top-level flow run carrying `tag`: the one a user opens in the UI."""
    EventsWorker.drain_all(timeout=30, at_exit=False)
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag]))
        )
    [watched] = [r for r in runs if r.parent_task_run_id is None]
    return watched.id


def progress_of(flow_run: UUID, keys: tuple[str, ...] = KEYS) -> dict[str, list[float]]:
    """Progress artifact key -> the final values of that key's artifacts on `flow_run`."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=list(keys)),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run]),
            )
        )
    values: dict[str, list[float]] = {}
    for artifact in found:
        assert artifact.type == "progress"
        values.setdefault(str(artifact.key), []).append(float(artifact.data))  # type: ignore[arg-type]
    return values


def outputs(tmp_path) -> list[str]:
    return [f"outputs.store={tmp_path / 'store'}", f"outputs.runs={tmp_path / 'runs'}"]


def test_the_pipeline_run_shows_cv_quantize_and_prune_progress_reaching_100(tmp_path):
    spec = load_spec(
        ROOT / "pipelines" / "breast_cancer_mlp.yaml",
        [*outputs(tmp_path), *PACKAGE_RUNS["breast_cancer_mlp"]],  # 2 epochs, 2 folds
    )
    tag = f"progress-{tmp_path.name}"
    with tags(tag):
        pipeline(spec)
    progress = progress_of(watched_run(tag))
    # the default thread runner: data tasks, folds and compression are tasks of this run
    for key in KEYS:
        assert key in progress, f"{key} missing from the pipeline's run: {sorted(progress)}"
        assert progress[key] and all(value == 100.0 for value in progress[key]), (key, progress)


def test_a_study_run_shows_its_trials_progress_reaching_100(tmp_path):
    small = ("train.epochs=2", "evaluate.cv.folds=2", "train.threads=1", "train.precision=fp32")
    spec = load_spec(
        ROOT / "pipelines" / "breast_cancer_search.yaml",
        [*outputs(tmp_path), *small, "search.n_trials=2", "search.refit=false"],
    )
    tag = f"search-progress-{tmp_path.name}"
    with tags(tag):
        result = search_flow(spec)(spec)
    assert result["trials"] == 2
    assert progress_of(watched_run(tag), ("search-progress",)) == {"search-progress": [100.0]}


def test_data_steps_and_folds_on_dask_show_their_progress_on_the_pipelines_run(tmp_path):
    """runner.data on Dask: the data tasks are a prepare-data subflow's, their ingest and shard
    progress on it, and the folds a cross-validate subflow's; the subflows move data-progress
    and cv-progress artifacts of the run a user watches."""
    small = ("train.epochs=2", "evaluate.cv.folds=2", "ensemble=null", "compress={}")
    on_dask = ("runner.type=dask", "runner.data=true", "runner.workers=1")
    spec = load_spec(
        ROOT / "pipelines" / "breast_cancer_mlp.yaml", [*outputs(tmp_path), *small, *on_dask]
    )
    tag = f"data-progress-{tmp_path.name}"
    with tags(tag):
        pipeline(spec)
    keys = ("data-progress", "cv-progress", "ingest-progress", "shard-progress")
    shown = progress_of(watched_run(tag), keys)
    assert shown == {"data-progress": [100.0], "cv-progress": [100.0]}
    with get_client(sync_client=True) as client:  # the subflows named for their pipeline
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag]))
        )
    subflows = sorted(r.name for r in runs if r.parent_task_run_id is not None)
    assert subflows == ["cross-validate: breast_cancer_mlp", "prepare-data: breast_cancer_mlp"]
