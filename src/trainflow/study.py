"""A search's Optuna study: its samplers and pruners, its storage, its trials' spec variants.

Prefect-free (flows/search.py runs the trials as tasks). The study lives in an RDB, so a
killed search reruns into the same study: finished trials stay finished, a trial left
RUNNING by a dead process of this machine is run again under its own number and parameters,
and trial n always draws with the sampler seeded seed + n, so a sequential study that was
interrupted ends as one that was not.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import socket
import statistics
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from trainflow import registry
from trainflow.errors import SpecError, TrainflowError
from trainflow.spec.search import (
    CategoricalParam,
    FloatParam,
    SearchSpec,
    active,
    decode,
    encode,
    grid_values,
    set_path,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)  # trainflow's own log says what runs
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


# ---- samplers and pruners (registry.SEARCH_SAMPLERS / SEARCH_PRUNERS) -----------------------


class _Grid(optuna.samplers.GridSampler):
    """Optuna's grid, without its study.stop() (which only an optimize() loop may call):
    the search stops at an exhausted grid itself (Study.budget_left)."""

    def after_trial(self, study, trial, state, values) -> None:
        return None


def grid_sampler(params: Any, seed: int, search: SearchSpec) -> optuna.samplers.BaseSampler:
    space = {path: grid_values(path, p) for path, p in search.space.items()}
    return _Grid(space, seed=seed)


class PerParameterSeed(optuna.samplers.BaseSampler):
    """A sampler whose draw of each parameter is seeded by (seed, trial number, parameter
    name), with a sampler built for that draw: a trial killed between two of its draws and
    run again draws the rest as the uninterrupted trial did (one sampler's RNG stream would
    restart at the first missing parameter instead)."""

    def __init__(self, build: Any, seed: int):
        self.build, self.seed, self.base = build, seed, build(seed)

    def infer_relative_search_space(self, study, trial):
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self.base.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        text = f"{self.seed}:{trial.number}:{param_name}".encode()
        seed = int(hashlib.sha256(text).hexdigest()[:8], 16)
        return self.build(seed).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self.base.after_trial(study, trial, state, values)


def random_sampler(params: Any, seed: int, search: SearchSpec) -> optuna.samplers.BaseSampler:
    return PerParameterSeed(lambda s: optuna.samplers.RandomSampler(seed=s), seed)


def tpe_sampler(params: Any, seed: int, search: SearchSpec) -> optuna.samplers.BaseSampler:
    startup = params.n_startup_trials
    return PerParameterSeed(
        lambda s: optuna.samplers.TPESampler(seed=s, n_startup_trials=startup), seed
    )


def cmaes_sampler(params: Any, seed: int, search: SearchSpec) -> optuna.samplers.BaseSampler:
    return optuna.samplers.CmaEsSampler(
        seed=seed, n_startup_trials=params.n_startup_trials, warn_independent_sampling=False
    )


def gp_sampler(params: Any, seed: int, search: SearchSpec) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GPSampler(
        seed=seed, n_startup_trials=params.n_startup_trials, warn_independent_sampling=False
    )


def median_pruner(params: Any) -> optuna.pruners.BasePruner:
    return optuna.pruners.MedianPruner(
        n_startup_trials=params.n_startup_trials, n_warmup_steps=params.n_warmup_steps
    )


def successive_halving_pruner(params: Any) -> optuna.pruners.BasePruner:
    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=params.min_resource, reduction_factor=params.reduction_factor
    )


def hyperband_pruner(params: Any) -> optuna.pruners.BasePruner:
    return optuna.pruners.HyperbandPruner(
        min_resource=params.min_resource,
        max_resource=params.max_resource,
        reduction_factor=params.reduction_factor,
    )


def sampler_for(search: SearchSpec, pipeline_seed: int, number: int):
    """The sampler trial `number` draws with: seeded seed + number (a grid keeps one seed,
    which orders its points), so the draw depends on the stored trials, not on what this
    process asked before."""
    sampler = search.sampler
    seed = pipeline_seed if sampler.seed is None else sampler.seed
    if sampler.type != "grid":
        seed = (seed + number) % 2**32
    return registry.SEARCH_SAMPLERS[sampler.type].impl(sampler, seed, search)


def pruner_for(search: SearchSpec) -> optuna.pruners.BasePruner:
    if search.pruner is None:
        return optuna.pruners.NopPruner()
    return registry.SEARCH_PRUNERS[search.pruner.type].impl(search.pruner)


# ---- the study -------------------------------------------------------------------------------


def base_raw(spec: Any) -> dict:
    """The spec as plain data without its search section: what each trial's variant starts from."""
    raw = spec.model_dump(mode="json")
    raw.pop("search", None)
    if (raw.get("ensemble") or {}).get("type") == "top_k_trials":
        raw["ensemble"] = None  # the study's ensemble (flows/search.py), not a trial's
    return raw


def study_name(spec: Any) -> str:
    """The spec's name and a digest of what its trials mean (the spec and the space; not the
    budget, nor where outputs go): the same spec resumes its study, a changed one starts
    another."""
    search = spec.search.model_dump(
        mode="json", exclude={"n_trials", "timeout_s", "parallel", "nested"}
    )  # nested CV adds outer studies; the study over all the rows means the same
    trial = {k: v for k, v in base_raw(spec).items() if k != "outputs"}  # not where it writes
    text = json.dumps({"spec": trial, "search": search}, sort_keys=True)
    return f"{spec.name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def storage_url(search: SearchSpec, store: str, name: str) -> str:
    if search.storage:
        return search.storage
    folder = Path(store) / "studies"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / name}.sqlite3"


def outer_study_name(name: str, outer_fold: int) -> str:
    """Nested CV: the study of outer fold `outer_fold`, beside the main one in its storage."""
    return f"{name}-outer{outer_fold}"


def open_study(
    spec: Any, store: str, number: int = 0, outer_fold: int | None = None
) -> optuna.Study:
    """The spec's study in its storage (created on first use; search.storage reached first);
    with `outer_fold`, that outer fold's study (nested CV) in the same storage."""
    search = spec.search
    url = storage_url(search, store, study_name(spec))
    name = (
        study_name(spec) if outer_fold is None else outer_study_name(study_name(spec), outer_fold)
    )
    try:
        storage = optuna.storages.RDBStorage(
            url, engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
        )
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=sampler_for(search, spec.seed, number),
            pruner=pruner_for(search),
            direction=search.objective.goal,
            load_if_exists=True,
        )
        study.set_user_attr("metric", search.objective.metric)
        return study
    except (ImportError, ValueError, OSError) as exc:
        raise unreachable(url, exc) from None
    except Exception as exc:  # sqlalchemy's errors (OperationalError, ArgumentError, ...)
        if type(exc).__module__.startswith("sqlalchemy"):
            raise unreachable(url, exc) from None
        raise


def unreachable(url: str, exc: BaseException) -> TrainflowError:
    shown = url.split("@")[-1] if "@" in url else url  # never a password in a message
    return TrainflowError(
        f"search.storage: cannot open the study's database at {shown} "
        f"({exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}); give a reachable "
        f"SQLAlchemy URL (e.g. postgresql://host/db) or remove search.storage for the store's "
        f"SQLite file"
    )


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=FINISHED)


def owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def stale_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials left RUNNING by a process of this machine that is gone (killed mid-trial)."""
    host = socket.gethostname()
    stale = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        who, _, pid = str(trial.user_attrs.get("owner", "")).rpartition(":")
        dead = who == host and pid.isdecimal() and not _alive(int(pid))
        unclaimed = not who and _older_than(trial, UNCLAIMED_S)  # died between ask and claim
        if dead or unclaimed:
            stale.append(trial)
    return stale


# A live process claims a trial milliseconds after asking for it: one unclaimed for longer
# was asked by a process that died in between.
UNCLAIMED_S = 10.0


def _older_than(trial: optuna.trial.FrozenTrial, seconds: float) -> bool:
    started = trial.datetime_start
    return started is not None and (datetime.now() - started).total_seconds() > seconds


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def claim(study: optuna.Study, trial: optuna.trial.Trial) -> None:
    """Mark a trial as run by this process (stale_trials finds it if the process dies)."""
    study._storage.set_trial_user_attr(trial._trial_id, "owner", owner())


def ask(study: optuna.Study, spec: Any) -> optuna.trial.Trial:
    """A new trial, drawn by the sampler seeded for its number."""
    study.sampler = sampler_for(spec.search, spec.seed, len(study.get_trials(deepcopy=False)))
    trial = study.ask()
    claim(study, trial)
    return trial


def rerun(study: optuna.Study, spec: Any, frozen: optuna.trial.FrozenTrial) -> optuna.trial.Trial:
    """A stale trial taken over: same number, same parameters (those it drew stay drawn)."""
    study.sampler = sampler_for(spec.search, spec.seed, frozen.number)
    trial = optuna.trial.Trial(study, frozen._trial_id)
    claim(study, trial)
    return trial


# ---- a trial's spec --------------------------------------------------------------------------


def suggest(trial: optuna.trial.BaseTrial, search: SearchSpec, base: dict) -> dict:
    """The raw spec of a trial: each parameter of the space that is active, drawn and set."""
    raw = copy.deepcopy(base)
    for path, param in search.space.items():
        if not active(param, raw):
            continue
        if isinstance(param, CategoricalParam):
            value = trial.suggest_categorical(path, [encode(c) for c in param.choices])
        elif isinstance(param, FloatParam):
            value = trial.suggest_float(path, param.low, param.high, log=param.log, step=param.step)
        else:
            value = trial.suggest_int(path, param.low, param.high, log=param.log, step=param.step)
        set_path(raw, path, decode(param, value))
    return raw


def variant(trial: optuna.trial.BaseTrial, spec: Any) -> Any:
    """A trial's validated PipelineSpec (its search section dropped)."""
    from trainflow.spec.pipeline import validate_spec

    raw = suggest(trial, spec.search, base_raw(spec))
    try:
        return validate_spec(raw, f"search trial {trial.number}")
    except SpecError as exc:  # check_space checked the ends of each range: a combination
        raise SpecError(exc.source, exc.problems) from None


def epoch_stride(spec: Any) -> int:
    """Steps a fold takes in a trial's reported values: fold j's epoch e is step
    j * stride + e, so each step compares the same fold's same epoch across trials."""
    param = spec.search.space.get("train.epochs")
    if param is None:
        return spec.train.epochs
    if isinstance(param, CategoricalParam):
        return max(int(c) for c in param.choices)
    return int(param.high)


def rows_digest(rows: Any) -> str:
    """A set of row positions as a short sha256 of the sorted unique int64s: a nested trial
    records by it the rows it trained and validated on (thousands of numbers would not
    belong in the study's database), to compare with an outer fold's training rows."""
    unique = np.unique(np.asarray(rows, dtype=np.int64))
    return hashlib.sha256(unique.tobytes()).hexdigest()[:16]


def describe(params: dict) -> str:
    """A trial's parameters, short, for its task-run name in the UI."""
    return " ".join(f"{path.split('.', 1)[-1]}={_short(v)}" for path, v in params.items())


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 24 else text[:21] + "..."


# ---- nested cross-validation -----------------------------------------------------------------


def outer_row(inner: optuna.Study, scored: dict) -> dict:
    """One outer fold's line: its outer score (and rows) beside its study's inner best."""
    best = inner.best_trial
    return {
        **scored,
        "study": inner.study_name,
        "inner_best": best.value,
        "trial": best.number,
        "params": best.params,
    }


def nested_summary(folds: list[dict], metric: str) -> dict:
    """The outer scores' mean and spread (sample standard deviation): the estimate of the
    tuned pipeline, beside the mean of the inner bests (optimistic: each chose its best)."""
    scores = [f["score"] for f in folds]
    return {
        "metric": metric,
        "folds": folds,
        "mean": statistics.fmean(scores),
        "std": statistics.stdev(scores),
        "inner_mean": statistics.fmean(f["inner_best"] for f in folds),
    }


def without_rows(nested: dict) -> dict:
    """The summary for a report: each fold's row count in place of its rows."""
    folds = [
        {**{k: v for k, v in f.items() if k != "rows"}, "scored_rows": len(f["rows"])}
        for f in nested["folds"]
    ]
    return {**nested, "folds": folds}
