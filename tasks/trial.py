"""A search's trial: cross-validate one spec variant, its per-epoch values fed to the pruner."""

from __future__ import annotations

import math
import statistics
import tempfile
from pathlib import Path

import numpy as np
import optuna
import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from trainflow.artifacts import ArtifactRef
from trainflow.engine.inference import score
from trainflow.engine.training import train_into
from trainflow.errors import SpecError
from trainflow.spec.metric_table import BASE
from trainflow.spec.pipeline import PipelineSpec
from trainflow.spec.search import SearchSpec
from trainflow.steps import scan_parts
from trainflow.study import pruner_for, rows_digest
from trainflow.tables import class_counts
from trainflow.tasks.fold import FoldData, fold_data


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
    spec: PipelineSpec,
    splits: ArtifactRef,
    fold: int,
    on_epoch: Reporter,
    outer: tuple[int, int] | None = None,
) -> dict:
    """One fold as tasks/fold.py's train_fold trains it (the same data, seed and model), so a
    run of the trial's spec gives the same fold metrics; the weights are not kept. In nested
    CV (`outer`), a fold of the outer fold's training rows; `rows` holds the pool positions
    it trained and validated on."""
    prepared = trial_fold(spec, splits, fold, outer)
    val, best_epoch = train_and_score(spec, prepared, "val", on_epoch.metric, on_epoch)
    assert prepared.train_rows is not None
    rows = np.concatenate([prepared.train_rows, prepared.held])
    return {"fold": fold, "val": val, "best_epoch": best_epoch, "rows": rows}


def trial_fold(
    spec: PipelineSpec, splits: ArtifactRef, fold: int, outer: tuple[int, int] | None
) -> FoldData:
    """Inner fold `fold` of the spec's CV: of the train + validation pool, or in nested CV of
    the outer fold's training rows (the outer fold's rows then stand in for the test part)."""
    assert spec.evaluate.cv is not None  # (a search's spec cross-validates: check_space)
    return fold_data(
        splits,
        fold,
        spec.evaluate.cv.folds,
        spec.data.post_split,
        spec.seed,
        spec.data.split.group_column,
        outer=outer,
    )


def train_and_score(
    spec: PipelineSpec, prepared: FoldData, part: str, metric: str, on_epoch=None
) -> tuple[dict, int]:
    """Train the spec's model on the fold's training rows (early-stopped on its validation
    rows), then score `part`: the metrics, with `metric` among them, and the best epoch."""
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
    name = metric.removeprefix("val_")
    extra = [] if name == "loss" or name in BASE else [name]
    scores, _ = score(net, data[part], len(schema.classes), extra=extra)
    return scores, result.best_epoch


@task(name="trial", cache_policy=NO_CACHE, persist_result=False)
def run_trial(
    spec: PipelineSpec,
    raw_splits: ArtifactRef,
    search: SearchSpec,
    storage: str,
    study: str,
    number: int,
    stride: int,
    outer: tuple[int, int] | None = None,
) -> dict:
    """Cross-validate trial `number`'s spec: the mean validation `search.objective.metric`
    over the folds; a pruned trial completes with state 'pruned' and the step it stopped at.
    The study records the trial (the search flow tells it), so a trial is not cached. In
    nested CV (`outer`: outer folds, outer fold) its folds split that outer fold's training
    rows, and `rows` is the digest of the pool rows it trained and validated on."""
    trial = open_trial(storage, study, number, search)
    metric = search.objective.metric
    reporter = Reporter(trial, metric, stride)
    folds: list[dict] = []
    assert spec.evaluate.cv is not None
    try:
        for fold in range(spec.evaluate.cv.folds):
            reporter.fold = fold
            folds.append(cross_validate_fold(spec, raw_splits, fold, reporter, outer))
    except optuna.TrialPruned:
        result: dict = {"state": "pruned", "pruned_at": reporter.step}
    else:
        value = statistics.fmean(f["val"][metric.removeprefix("val_")] for f in folds)
        result = {"state": "complete", "value": value}
    rows = [f.pop("rows") for f in folds]  # the positions stay here, a digest goes on
    if outer is not None:
        result["rows"] = rows_digest(np.concatenate(rows) if rows else [])
    return {"number": number, **result, "folds": folds}


@task(name="outer_fold", cache_policy=NO_CACHE, persist_result=False)
def score_outer_fold(
    spec: PipelineSpec, raw_splits: ArtifactRef, metric: str, outer: tuple[int, int]
) -> dict:
    """Nested CV: outer fold `outer[1]`'s best inner spec (`spec`), trained as its inner CV's
    fold 0 trains (on the outer fold's training rows less that fold's held-out ones, early-
    stopped on those), then scored on the held-out outer fold, which no trial and no step
    fitted on. `rows`: the scored pool positions; `trained`: the digest of those it trained
    and validated on."""
    prepared = trial_fold(spec, raw_splits, 0, outer)
    scores, best_epoch = train_and_score(spec, prepared, "test", metric)
    assert prepared.test_rows is not None and prepared.train_rows is not None
    return {
        "outer_fold": outer[1],
        "score": scores[metric.removeprefix("val_")],
        "scores": scores,
        "best_epoch": best_epoch,
        "rows": prepared.test_rows.tolist(),
        "trained": rows_digest(np.concatenate([prepared.train_rows, prepared.held])),
    }


def check_nested(spec: PipelineSpec, raw_splits: ArtifactRef) -> int:
    """Before any trial: every class has a row in each outer fold of the searchable rows
    (train + validation), and each outer fold's training rows hold evaluate.cv.folds rows
    of it (what its inner CV stratifies); the searchable rows' count."""
    assert spec.search is not None and spec.search.nested is not None
    assert spec.evaluate.cv is not None
    parts = scan_parts(raw_splits)
    schema = parts["train"][1]
    pool = pl.concat([parts["train"][0], parts["val"][0]]).select(schema.target)
    counts = {c: n for c, n in class_counts(pool, schema).items() if n}
    outer, inner = spec.search.nested.outer_folds, spec.evaluate.cv.folds
    fits = [k for k in range(2, outer + 1) if all(_nests(n, k, inner) for n in counts.values())]
    if outer not in fits:
        scarce, fewest = min(counts.items(), key=lambda kv: kv[1])
        fix = f"lower outer_folds to {fits[-1]}" if fits else "lower evaluate.cv.folds"
        raise SpecError(
            "search",
            [
                (
                    "search.nested.outer_folds",
                    f"{outer} stratified outer folds of the {sum(counts.values())} searchable "
                    f"rows (train + validation) need {outer} rows of each class, and leave "
                    f"each outer fold's inner CV (evaluate.cv.folds: {inner}) {inner} of each; "
                    f"class {scarce!r} has {fewest}: {fix}, or add rows of that class",
                )
            ],
        )
    return sum(counts.values())


def _nests(count: int, outer: int, inner: int) -> bool:
    """A class of `count` rows fills `outer` stratified folds, and the training rows of each
    (at least count - ceil(count / outer)) fill `inner` folds."""
    return count >= outer and count - math.ceil(count / outer) >= inner


@task(name="report_study", cache_policy=NO_CACHE, persist_result=False)
def report_study(storage: str, study: str, best: dict | None, name: str, runs_dir: str) -> str:
    """The study's run folder and UI artifacts (trainflow.study_report)."""
    from trainflow.study_report import publish

    return publish(storage, study, best, name, runs_dir)


@task(name="report_nested", cache_policy=NO_CACHE, persist_result=False)
def report_nested(run_dir: str, nested: dict, name: str) -> str:
    """The nested CV's outer folds in the study's run folder and UI artifacts; the folder."""
    from trainflow.study_report import publish_nested

    publish_nested(run_dir, nested, name)
    return run_dir
