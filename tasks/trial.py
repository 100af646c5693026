"""A search's trial: cross-validate one spec variant, its per-epoch values fed to the pruner."""

from __future__ import annotations

import math
import statistics
import tempfile
from pathlib import Path

import optuna
from prefect import task
from prefect.cache_policies import NO_CACHE

from trainflow.artifacts import ArtifactRef
from trainflow.engine.inference import score
from trainflow.engine.training import train_into
from trainflow.spec.metric_table import BASE
from trainflow.spec.pipeline import PipelineSpec
from trainflow.spec.search import SearchSpec
from trainflow.study import pruner_for
from trainflow.tasks.fold import fold_data


class Reporter:
    """The loop's on_epoch hook: each epoch's objective value, reported to the trial at step
    fold * stride + epoch; raises TrialPruned when the pruner says so."""

    def __init__(self, trial: optuna.trial.Trial, metric: str, stride: int):
        self.trial, self.metric, self.stride = trial, metric, stride
        self.fold: int = 0
        self.step: int | None = None

    def __call__(self, row: dict) -> None:
        value = row.get(self.metric)
        if value is None or not math.isfinite(value):  # not measured per epoch: not reported
            return
        self.step = step = self.fold * self.stride + int(row["epoch"])
        self.trial.report(float(value), step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {self.step}")


def open_trial(storage: str, study: str, number: int, search: SearchSpec) -> optuna.trial.Trial:
    """The running trial `number`, from the study's database (the task may run in another
    process: on Dask every worker opens the database itself)."""
    loaded = optuna.load_study(
        study_name=study,
        storage=storage,
        sampler=optuna.samplers.RandomSampler(),  # the parameters are drawn already
        pruner=pruner_for(search),
    )
    frozen = next(t for t in loaded.get_trials(deepcopy=False) if t.number == number)
    return optuna.trial.Trial(loaded, frozen._trial_id)


def cross_validate_fold(
    spec: PipelineSpec, splits: ArtifactRef, fold: int, on_epoch: Reporter
) -> dict:
    """One fold as tasks/fold.py's train_fold trains it (the same data, seed and model), so a
    run of the trial's spec gives the same fold metrics; the weights are not kept."""
    assert spec.evaluate.cv is not None  # (a search's spec cross-validates: check_space)
    prepared = fold_data(
        splits,
        fold,
        spec.evaluate.cv.folds,
        spec.data.post_split,
        spec.seed,
        spec.data.split.group_column,
    )
    data, schema = prepared.data, prepared.schema
    with tempfile.TemporaryDirectory(prefix="trainflow-trial-") as folder:
        net, result = train_into(
            Path(folder),
            spec.model,
            spec.train,
            spec.seed,
            data,
            schema.input_shape,
            schema.classes,
            on_epoch=on_epoch,
            aux_targets=schema.aux_targets,
        )
    name = on_epoch.metric.removeprefix("val_")
    extra = [] if name == "loss" or name in BASE else [name]
    val, _ = score(net, data["val"], len(schema.classes), extra=extra)
    return {"fold": fold, "val": val, "best_epoch": result.best_epoch}


@task(name="trial", cache_policy=NO_CACHE, persist_result=False)
def run_trial(
    spec: PipelineSpec,
    raw_splits: ArtifactRef,
    search: SearchSpec,
    storage: str,
    study: str,
    number: int,
    stride: int,
) -> dict:
    """Cross-validate trial `number`'s spec: the mean validation `search.objective.metric`
    over the folds; a pruned trial completes with state 'pruned' and the step it stopped at.
    The study records the trial (the search flow tells it), so a trial is not cached."""
    trial = open_trial(storage, study, number, search)
    metric = search.objective.metric
    reporter = Reporter(trial, metric, stride)
    folds: list[dict] = []
    assert spec.evaluate.cv is not None
    try:
        for fold in range(spec.evaluate.cv.folds):
            reporter.fold = fold
            folds.append(cross_validate_fold(spec, raw_splits, fold, reporter))
    except optuna.TrialPruned:
        return {"number": number, "state": "pruned", "pruned_at": reporter.step, "folds": folds}
    value = statistics.fmean(f["val"][metric.removeprefix("val_")] for f in folds)
    return {"number": number, "state": "complete", "value": value, "folds": folds}


@task(name="report_study", cache_policy=NO_CACHE, persist_result=False)
def report_study(storage: str, study: str, best: dict | None, name: str, runs_dir: str) -> str:
    """The study's run folder and UI artifacts (trainflow.study_report)."""
    from trainflow.study_report import publish

    return publish(storage, study, best, name, runs_dir)
