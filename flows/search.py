"""The search flow: an Optuna study whose trials are Prefect tasks, then its report and refit.

Each trial runs its spec's data subflow (its tasks served from the cache when the trial only
varies training knobs) and a `trial` task that cross-validates the variant. Optuna's ask/tell
interface keeps the study in its database, so a rerun after a crash continues the study.
"""

from __future__ import annotations

import math
import time
from typing import Any, cast

import optuna
from optuna.study import StudyDirection
from optuna.trial import TrialState
from prefect import flow
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from trainflow import study as studies
from trainflow.artifacts import ArtifactRef, Store
from trainflow.errors import TrainflowError
from trainflow.flows.cross_validate import trial_members
from trainflow.flows.data import prepare_data
from trainflow.flows.pipeline import pipeline
from trainflow.logs import Progress, run_logger
from trainflow.remote import store_folder
from trainflow.spec.fit_on import refit_spec
from trainflow.spec.pipeline import PipelineSpec, validate_spec
from trainflow.spec.search import grid_values
from trainflow.task_options import cv_task_runner, step
from trainflow.tasks.ensemble import ensemble_folds
from trainflow.tasks.package import package_model
from trainflow.tasks.trial import (
    check_nested,
    report_nested,
    report_study,
    run_trial,
    score_outer_fold,
)


@flow(name="trainflow-search")
def search(spec: PipelineSpec) -> dict:
    assert spec.search is not None  # (search_flow is only built for a spec with a search)
    store = str(store_folder(spec.outputs))  # s3://: its local mirror
    Store(store).sweep()
    if spec.search.nested is not None:  # before any trial: the outer folds must fit the rows
        check_nested(spec, prepare_data(spec, store)["raw_splits"])
    study = studies.open_study(spec, store)
    name, url = study.study_name, studies.storage_url(spec.search, store, study.study_name)
    run_trials(spec, study, store, url)
    nested = nested_cv(spec, store, url) if spec.search.nested is not None else None
    ensemble, ensemble_package = top_trials_ensemble(spec, study, store)  # top_k_trials
    best = best_spec(spec, study)
    if spec.search.refit and best is not None:  # best_spec.yaml is what the refit runs
        best = refit_spec(best, study.best_trial.user_attrs.get("folds", []))
    run_dir = step(report_study, spec)(url, name, best, spec.name, spec.outputs.runs)
    if nested is not None:
        run_dir = step(report_nested, spec)(run_dir, studies.without_rows(nested), spec.name)
    refit = None
    if spec.search.refit and best is not None:  # on train + validation (spec.fit_on)
        refit = pipeline(validate_spec(best, "the best trial's spec"))
    return {
        "run_dir": run_dir,
        "study": name,
        "storage": url,
        "best": best,
        "best_value": study.best_value if best is not None else None,
        "trials": len(studies.finished(study)),
        "refit": refit,
        "ensemble": ensemble,
        "ensemble_package": ensemble_package,
        "nested": nested,
    }


def search_flow(spec: PipelineSpec) -> Any:
    """The search flow on its task runner: `search.parallel` trials at once on threads, or
    on the spec's Dask cluster or Ray (`runner: {type: dask}` or `{type: ray}`), one trial
    per worker process. Threads share torch's process-wide RNG, so parallel trials on
    threads are not reproducible run to run; on Dask or Ray, and one at a time, they are."""
    assert spec.search is not None
    runner = (
        ThreadPoolTaskRunner(max_workers=spec.search.parallel)
        if spec.runner.type == "thread"
        else cv_task_runner(spec)
    )
    return search.with_options(task_runner=runner)  # type: ignore[arg-type]


def run_trials(
    spec: PipelineSpec,
    study: optuna.Study,
    store: str,
    url: str,
    outer: tuple[int, int] | None = None,
) -> None:
    """Stale trials first (a killed run's), then new ones, `search.parallel` at once, each
    told to the study as it finishes, until the budget is spent (`outer`: nested CV's outer
    folds and the outer fold whose training rows the trials split)."""
    assert spec.search is not None
    began = time.monotonic()
    queue = [studies.rerun(study, spec, t) for t in studies.stale_trials(study)]
    pending: dict[Any, optuna.trial.Trial] = {}
    progress = trial_progress(spec, outer)
    while True:
        while len(pending) < spec.search.parallel:
            if queue:
                trial = queue.pop(0)
            elif budget_left(spec, study, began, len(pending)):
                trial = studies.ask(study, spec)
            else:
                break
            pending[submit(spec, study, trial, store, url, outer)] = trial
        if not pending:
            return
        done = next(iter(as_completed(list(pending))))
        tell(study, pending.pop(done), done)
        progress(len(studies.finished(study)), time.monotonic() - began)


def trial_progress(spec: PipelineSpec, outer: tuple[int, int] | None) -> Any:
    """A progress artifact of the trials told (of n_trials or the grid), or of timeout_s
    where that is the only budget; one per outer fold's study in nested CV."""
    assert spec.search is not None
    limit, timeout = trial_limit(spec), spec.search.timeout_s
    key = "search-progress" if outer is None else f"search-progress-outer-{outer[1]}"
    budget = f"{limit:g} trials" if limit < math.inf else f"{timeout} s"
    shown = Progress(key, f"search: trials finished, of {budget}")

    def told(finished: int, seconds: float) -> None:
        shown.update(finished / limit if limit < math.inf else seconds / (timeout or 1))

    return told


def trial_limit(spec: PipelineSpec) -> float:
    """n_trials (inf when unset), and at most the grid's points for a grid."""
    search = spec.search
    assert search is not None
    limit = search.n_trials if search.n_trials is not None else math.inf
    if search.sampler.type == "grid":
        size = math.prod(len(grid_values(p, q)) for p, q in search.space.items())
        limit = min(limit, size)
    return limit


def budget_left(spec: PipelineSpec, study: optuna.Study, began: float, running: int) -> bool:
    """Another trial fits: below n_trials (finished and running), before timeout_s (this
    run's clock), and, for a grid, a point not yet taken."""
    search = spec.search
    assert search is not None
    if len(studies.finished(study)) + running >= trial_limit(spec):
        return False
    return search.timeout_s is None or time.monotonic() - began < search.timeout_s


def submit(spec: PipelineSpec, study: optuna.Study, trial: optuna.trial.Trial, store, url, outer):
    """Draw the trial's spec, prepare its data (cached across trials), start its task."""
    assert spec.search is not None
    variant = studies.variant(trial, spec)
    data = prepare_data(variant, store)
    where = "" if outer is None else f" outer-{outer[1]}"
    label = f"trial-{trial.number}{where} {studies.describe(trial.params)}"
    task = step(run_trial, spec).with_options(
        task_run_name=lambda: label, tags={f"study:{study.study_name}", f"trial:{trial.number}"}
    )
    return task.submit(
        variant,
        data["raw_splits"],
        spec.search,
        url,
        study.study_name,
        trial.number,
        studies.epoch_stride(spec),
        outer,
    )


def tell(study: optuna.Study, trial: optuna.trial.Trial, future: Any) -> None:
    """Record a finished trial task in the study (a failed one as FAIL, then its error)."""
    try:
        result = future.result()
    except BaseException:
        study.tell(trial.number, state=TrialState.FAIL)
        raise
    trial.set_user_attr("folds", [_fold_row(f) for f in result["folds"]])
    if "rows" in result:  # nested CV: the digest of the rows the trial's folds used
        trial.set_user_attr("rows", result["rows"])
    if result["state"] == "pruned":
        trial.set_user_attr("pruned_at", result["pruned_at"])
        study.tell(trial.number, state=TrialState.PRUNED)
    else:
        study.tell(trial.number, result["value"])


def _fold_row(fold: dict) -> dict:
    return {"fold": fold["fold"], "best_epoch": fold["best_epoch"], "val": fold["val"]}


def nested_cv(spec: PipelineSpec, store: str, url: str) -> dict:
    """Nested CV: for each outer fold of the searchable rows, a study of its own (in the same
    storage, resumed as the main one is) over the other outer folds' rows, then its best spec
    trained on those rows and scored on the outer fold; the outer scores' mean and spread."""
    assert spec.search is not None and spec.search.nested is not None
    outer = spec.search.nested.outer_folds
    folds = [outer_fold(spec, store, url, (outer, fold)) for fold in range(outer)]
    return studies.nested_summary(folds, spec.search.objective.metric)


def outer_fold(spec: PipelineSpec, store: str, url: str, outer: tuple[int, int]) -> dict:
    """One outer fold: its study's trials (their folds split the outer fold's training rows),
    then its best spec scored on the outer fold (tasks/trial.py score_outer_fold)."""
    assert spec.search is not None
    inner = studies.open_study(spec, store, outer_fold=outer[1])
    run_trials(spec, inner, store, url, outer)
    best = best_spec(spec, inner)
    if best is None:
        raise TrainflowError(
            f"search.nested: outer fold {outer[1]}'s study ({inner.study_name}) has no "
            f"complete trial (each was pruned or failed): raise search.n_trials or loosen "
            f"search.pruner"
        )
    chosen = validate_spec(best, f"outer fold {outer[1]}'s best trial")
    label = f"outer-{outer[1]} {studies.describe(inner.best_params)}"
    task = step(score_outer_fold, spec).with_options(task_run_name=lambda: label)
    metric = spec.search.objective.metric
    scored = cast(dict, task(chosen, prepare_data(chosen, store)["raw_splits"], metric, outer))
    return studies.outer_row(inner, scored)


def best_spec(spec: PipelineSpec, study: optuna.Study) -> dict | None:
    """The best complete trial's whole spec (plain data, no search section), or None."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    trial = study.best_trial
    fixed = optuna.trial.FixedTrial(trial.params, number=trial.number)
    best = studies.variant(fixed, spec).model_dump(mode="json", exclude={"search"})
    if best.get("ensemble") and best["ensemble"]["type"] == "top_k_trials":
        best["ensemble"] = None  # the study's own ensemble (top_trials_ensemble), not a run's
    return best


def top_trials_ensemble(
    spec: PipelineSpec, study: optuna.Study, store: str
) -> tuple[Any, str | None]:
    """The ensemble of the study's k best complete trials (ensemble.type top_k_trials), each
    cross-validated with its fold models kept, and its model package; (None, None) for
    another ensemble or no trials."""
    if spec.ensemble is None or spec.ensemble.type != "top_k_trials":
        return None, None
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None, None
    sign = 1.0 if study.direction == StudyDirection.MINIMIZE else -1.0
    best_first = sorted(complete, key=lambda t: sign * float(t.value or 0.0))
    trials = [
        studies.variant(optuna.trial.FixedTrial(t.params, number=t.number), spec)
        for t in best_first
    ]
    members = trial_members(spec, trials, store)
    ensemble = step(ensemble_folds, spec)(members, spec.ensemble, store)
    return ensemble, top_trials_package(spec, members, ensemble, store)


def top_trials_package(spec: PipelineSpec, members: list, ensemble: Any, store: str) -> str | None:
    """The top_k_trials ensemble as a model package: the trials' fold models, each with the
    post-split states its fold fitted. A space over the data steps' knobs would give members
    whose steps' parameters differ from the spec's, which a package applies to every member:
    no package then, with a warning that says so."""
    assert spec.search is not None
    varied = sorted(path for path in spec.search.space if path.startswith("data."))
    if varied:
        run_logger().warning(
            "no model package for the top_k_trials ensemble: the study varies data steps "
            "(%s), and a package applies the spec's steps to every member",
            ", ".join(varied),
        )
        return None
    data = prepare_data(spec, store)
    found = step(package_model, spec)(
        "ensemble", members, ensemble, spec, data["ingested"], data["steps"], store
    )
    return str(cast(ArtifactRef, found).path) if found else None
