"""Progress a user watching the pipeline's run sees move: CV folds, quantize, prune (and the
data tasks' ingest and shard), each a progress artifact of that flow run ending at 100 %."""

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
from trainflow.spec.pipeline import load_spec

pytestmark = pytest.mark.usefixtures("prefect_engine")

KEYS = ("ingest-progress", "shard-progress", "cv-progress", "quantize-progress", "prune-progress")


def progress_of(flow_run: UUID) -> dict[str, list[float]]:
    """Progress artifact key -> the final values of that key's artifacts on `flow_run`."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=list(KEYS)),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run]),
            )
        )
    values: dict[str, list[float]] = {}
    for artifact in found:
        assert artifact.type == "progress"
        values.setdefault(str(artifact.key), []).append(float(artifact.data))  # type: ignore[arg-type]
    return values


def test_the_pipeline_run_shows_cv_quantize_and_prune_progress_reaching_100(tmp_path):
    spec = load_spec(
        ROOT / "pipelines" / "breast_cancer_mlp.yaml",
        [
            f"outputs.store={tmp_path / 'store'}",
            f"outputs.runs={tmp_path / 'runs'}",
            *PACKAGE_RUNS["breast_cancer_mlp"],  # 2 epochs, 2 folds, 1 fine-tune epoch
        ],
    )
    tag = f"progress-{tmp_path.name}"
    with tags(tag):
        pipeline(spec)
    EventsWorker.drain_all(timeout=30, at_exit=False)
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag]))
        )
    [watched] = [r for r in runs if r.parent_task_run_id is None]  # the run a user opens
    progress = progress_of(watched.id)
    # the default thread runner: data tasks, folds and compression are tasks of this run
    for key in KEYS:
        assert key in progress, f"{key} missing from the pipeline's run: {sorted(progress)}"
        assert progress[key] and all(value == 100.0 for value in progress[key]), (key, progress)
