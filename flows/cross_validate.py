"""Cross-validation: one mapped task per fold, post-split steps re-fitted inside."""

from __future__ import annotations

from prefect import flow, unmapped
from prefect.futures import as_completed

from trainflow.artifacts import ArtifactRef
from trainflow.errors import TrainflowError
from trainflow.flows.data import prepare_data
from trainflow.logs import Progress, calling_run
from trainflow.spec.ensemble import variant_specs
from trainflow.spec.pipeline import PipelineSpec
from trainflow.task_options import cv_task_runner, step
from trainflow.tasks.fold import train_fold

CV = "cross-validate"  # the folds' subflow on Dask or Ray


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
        rows=unmapped(spec.evaluate.cv.rows),
    )
    # in the cross-validate subflow, on the run that called it: the one a user watches
    shown = f"cross-validation: folds trained, of {folds}"
    progress = Progress("cv-progress", shown, flow_run=calling_run(CV))
    for done, _ in enumerate(as_completed(futures), start=1):  # in the order they finish
        progress.update(done / folds)
    return [future.result() for future in futures]


def cross_validate(spec: PipelineSpec, raw_splits: ArtifactRef, store: str) -> list[ArtifactRef]:
    """The folds as a flow of their own, on a Dask task runner (`runner: {type: dask}`): each
    worker is its own process, so folds run in parallel and each sees only its own seed.
    Built per run, not at import: Prefect derives a flow's parameter schema when the flow is
    made, and the schema of a PipelineSpec costs a command that never uses it most of a
    second (the thread pool's folds are tasks of the calling flow, see `run_folds`)."""
    assert spec.evaluate.cv is not None

    def folds(
        pipeline: str, fingerprint: str, cv: dict, splits: ArtifactRef, store: str
    ) -> list[ArtifactRef]:
        # parameters for the UI (which spec, its cv section), not the whole spec: the body
        # reads the spec itself (a subflow runs in this process, only its tasks on Dask)
        return map_folds(spec, splits, store)

    subflow = flow(  # named for its pipeline, not a random pair of words
        name=CV, flow_run_name=f"{CV}: {spec.name}", task_runner=cv_task_runner(spec)
    )(folds)
    cv = spec.evaluate.cv.model_dump(mode="json")
    return subflow(spec.name, spec.fingerprint(), cv, raw_splits, store)


def run_folds(spec: PipelineSpec, raw_splits: ArtifactRef, store: str) -> list[ArtifactRef]:
    """The folds. On the thread pool they are tasks of the calling flow (whose one worker
    runs them in turn, as the subflow's did): a subflow costs a flow run's round trips to
    the server (about 1 s of a cached rerun). On Dask they are a subflow of their own, the
    one way to give them another task runner."""
    if spec.runner.type == "thread":
        return map_folds(spec, raw_splits, store)
    return cross_validate(spec, raw_splits, store)


def ensemble_members(
    spec: PipelineSpec, folds: list[ArtifactRef], raw_splits: ArtifactRef, store: str
) -> list[ArtifactRef]:
    """The fold models an ensemble combines: the spec's, then each of `ensemble.variants`'s
    (cross-validated on the same folds, their data steps served from the cache)."""
    if spec.ensemble is not None and spec.ensemble.type == "top_k_trials":
        raise TrainflowError(
            "ensemble.type top_k_trials combines a study's best trials: the search flow "
            "makes it (trainflow search SPEC, or trainflow run on a spec with a search section)"
        )
    if spec.ensemble is None or not getattr(spec.ensemble, "variants", None):
        return folds
    variants = [run_folds(variant, raw_splits, store) for variant in variant_specs(spec)]
    return [*folds, *(ref for member in variants for ref in member)]


def trial_members(spec: PipelineSpec, trials: list[PipelineSpec], store: str) -> list[ArtifactRef]:
    """top_k_trials: the fold models of the study's `ensemble.k` best trials (`trials`, best
    first), each cross-validated on its own data (its tasks served from the cache)."""
    assert spec.ensemble is not None and spec.ensemble.type == "top_k_trials"
    chosen = trials[: spec.ensemble.k]
    return [
        ref
        for trial in chosen
        for ref in run_folds(trial, prepare_data(trial, store)["raw_splits"], store)
    ]
