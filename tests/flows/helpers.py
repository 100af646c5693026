"""Run shipped pipelines through the real Prefect engine and read back task-run states."""

import time
from collections import defaultdict
from pathlib import Path
from uuid import uuid4

from prefect import tags
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterTags
from prefect.events.worker import EventsWorker

from trainflow.flows.pipeline import pipeline
from trainflow.spec.pipeline import load_spec

ROOT = Path(__file__).resolve().parents[2]
SUBFLOWS = {"prepare-data", "cross-validate"}

# CI-sized runs whose packages the parity and export tests read (fixture `package_run`):
# parity, not accuracy, is their point, so two epochs and no extras but where a case needs them.
ALONE = ("train.epochs=2", "evaluate.cv=null", "ensemble=null", "compress={}")
PACKAGE_RUNS = {
    "credit_smote_mlp": ALONE,  # missing values, text categories, SMOTE on train only
    "breast_cancer_mlp": (
        "train.epochs=2",
        "evaluate.cv.folds=2",
        "compress.prune.finetune_epochs=1",
    ),  # + folds, ensemble, int8, pruned
    "digits_cnn": ALONE,  # images, normalized per channel
    "sequences_gru": (*ALONE, "data.source.length=16", "train.tbptt=8"),  # from columns
    "sequences_multitask": (*ALONE, "data.source.length=16"),  # two heads: the main one scores
}


def run(name: str, tmp_path: Path, *overrides: str) -> tuple[dict, dict[str, list[str]]]:
    """Run pipelines/<name>.yaml with outputs under tmp_path; return result and task states."""
    spec = load_spec(
        ROOT / "pipelines" / f"{name}.yaml",
        [f"outputs.store={tmp_path / 'store'}", f"outputs.runs={tmp_path / 'runs'}", *overrides],
    )
    tag = f"test-{uuid4().hex[:12]}"
    with tags(tag):
        result = pipeline(spec)
    return result, task_states(tag)


def task_states(tag: str, timeout: float = 30.0) -> dict[str, list[str]]:
    """Task name -> final state names of the task runs that carry `tag`.

    Task runs reach the API as events, a moment after the flow returns: send what this process
    still holds, then poll until every run has a final state and no run has appeared or changed
    for three polls in a row (the last task's run can still be on its way when all the others
    read final).
    """
    EventsWorker.drain_all(timeout=timeout, at_exit=False)
    deadline = time.monotonic() + timeout
    seen, steady = None, 0
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                task_run_filter=TaskRunFilter(tags=TaskRunFilterTags(all_=[tag]))
            )
            now = sorted((str(r.id), r.state.name if r.state else "") for r in runs)
            final = all(r.state and r.state.is_final() for r in runs)
            steady = steady + 1 if final and now == seen else 0
            seen = now
            if steady >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    states = defaultdict(list)
    for task_run in runs:
        if task_run.name.rsplit("-", 1)[0] in SUBFLOWS:  # a subflow's stand-in task run
            continue
        states[task_run.name.rsplit("-", 1)[0]].append(task_run.state.name)
    return dict(states)
