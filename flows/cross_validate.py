"""Cross-validation: one mapped task per fold, post-split steps re-fitted inside."""

from __future__ import annotations

from prefect import flow, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from trainflow.artifacts import ArtifactRef
from trainflow.spec.pipeline import PipelineSpec
from trainflow.task_options import cv_task_runner, step
from trainflow.tasks.fold import train_fold


def map_folds(spec: PipelineSpec, raw_splits: ArtifactRef, store: str) -> list[ArtifactRef]:
    """One `train_fold` task per fold, on the task runner of the flow that calls this."""
    assert spec.evaluate.cv is not None
    folds = spec.evaluate.cv.folds
    futures = step(train_fold, spec).map(
        splits=unmapped(raw_splits),
        fold=list(range(folds)),
        folds=unmapped(folds),
        steps=unmapped(spec.data.post_split),
        model=unmapped(spec.model),
        train=unmapped(spec.train),
        seed=unmapped(spec.seed),
        store=unmapped(store),
        group_column=unmapped(spec.data.split.group_column),
    )
    return [future.result() for future in futures]


# One worker: each fold seeds torch's process-wide RNG, so folds must not interleave in threads
# (subflows do not inherit the parent's task runner). Parallel folds belong on separate
# processes: `runner: {type: dask}` swaps in a Dask task runner (see `run_folds`).
@flow(name="cross-validate", task_runner=ThreadPoolTaskRunner(max_workers=1))  # type: ignore[arg-type]
def cross_validate(spec: PipelineSpec, raw_splits: ArtifactRef, store: str) -> list[ArtifactRef]:
    return map_folds(spec, raw_splits, store)


def run_folds(spec: PipelineSpec, raw_splits: ArtifactRef, store: str) -> list[ArtifactRef]:
    """The folds. On the thread pool they are tasks of the calling flow (whose one worker
    runs them in turn, as the subflow's did): a subflow costs a flow run's round trips to
    the server (about 1 s of a cached rerun). On Dask they are a subflow of their own, the
    one way to give them another task runner."""
    if spec.runner.type == "thread":
        return map_folds(spec, raw_splits, store)
    return cross_validate.with_options(task_runner=cv_task_runner(spec))(spec, raw_splits, store)
