"""train.fit_on: the parts the run's model trains on, the knobs that need a validation part it
no longer holds unseen, and the spec a study's refit runs (search.refit).

With `fit_on: train+validation` the data steps after `split` are fitted on the training and
validation rows together (resampling touches them all), and the model trains on them for a
fixed `fit_epochs` (default `epochs`), its last epoch the model: there are no unseen rows left
to stop early on or to pick a best checkpoint by. The test part stays untouched, and the
cross-validation folds (evaluate.cv) are made from train + validation as always, each early
stopped on its own held-out rows, so `fit_on` does not change them.
"""

from __future__ import annotations

import copy
import statistics
from typing import Any

FIT_ON = ("train", "train+validation")
POOLED = "train+validation"


def train_refusal(train: Any) -> str | None:
    """Why a train section's `fit_on` cannot hold with its other knobs, or None."""
    if train.fit_on != POOLED:
        if train.fit_epochs is not None:
            return (
                f"train.fit_epochs ({train.fit_epochs}) is the epoch count of a model trained "
                "on train + validation: set train.fit_on: train+validation, or drop fit_epochs"
            )
        return None
    where = "train.fit_on: train+validation trains on the validation rows"
    if train.early_stopping and train.fit_epochs is None:
        return (
            f"{where}, so none are left for train.early_stopping to stop on: give "
            "train.fit_epochs, the epochs to train (e.g. the median best_epoch of the CV "
            "folds, which search.refit sets), or drop early_stopping to train train.epochs"
        )
    if train.schedule is not None and train.schedule.type == "plateau":
        return (
            f"{where}, so none are left for the plateau schedule's monitor "
            f"({train.schedule.monitor}): use a schedule by steps (cosine, step, one_cycle, ...) "
            "or fit_on: train"
        )
    if train.debug.dead_units:
        return (
            f"{where}, so none are left for train.debug.dead_units to count on: "
            "drop dead_units or use fit_on: train"
        )
    epochs = train.fit_epochs or train.epochs
    if train.swa and train.swa.start_epoch > epochs:
        return (
            f"train.swa.start_epoch ({train.swa.start_epoch}) is after the last epoch on "
            f"train + validation (fit_epochs: {epochs}): start at an epoch from 1 to {epochs}"
        )
    return None


def evaluate_refusal(evaluate: Any, why: str) -> str | None:
    """Why the evaluate knobs fitted on the validation part cannot follow `why` (a model that
    trained on the validation rows), or None."""
    for knob in ("calibrate", "threshold"):
        if getattr(evaluate, knob) is not None:
            return (
                f"evaluate.{knob} is fitted on the validation part, but {why}: its rows are "
                f"no longer unseen by the model. Drop evaluate.{knob}, or keep train.fit_on: "
                "train (and search.refit: false)"
            )
    return None


def no_validation_refusal(spec: Any) -> str | None:
    """Why a spec whose split leaves no validation part (split.validation: 0) cannot run, or
    None: the knobs that watch or fit on the validation rows have none to use."""
    split = spec.data.split
    if isinstance(split.validation, list) or split.validation or spec.train.fit_on == POOLED:
        return None  # (fit_on: train+validation says the same through train_refusal)
    why = "split.validation is 0, so there is no validation part"
    fix = "or give split.validation a share"
    train = spec.train
    if train.early_stopping:
        return f"{why} for train.early_stopping to stop on: drop early_stopping, {fix}"
    if train.schedule is not None and train.schedule.type == "plateau":
        return f"{why} for the plateau schedule's monitor: use a schedule by steps, {fix}"
    if train.debug.dead_units:
        return f"{why} for train.debug.dead_units to count on: drop dead_units, {fix}"
    for knob in ("calibrate", "threshold"):
        if getattr(spec.evaluate, knob) is not None:
            return f"{why} for evaluate.{knob} to be fitted on: drop it, {fix}"
    return None


def pipeline_refusal(spec: Any) -> str | None:
    """Why a whole spec's fit_on (or its search's refit, which sets it) cannot hold, or None:
    said when the spec is validated, before any work (a study's refit runs after it)."""
    if spec.train.fit_on == POOLED:
        return evaluate_refusal(spec.evaluate, "train.fit_on: train+validation trains on them")
    if spec.search is not None and spec.search.refit:
        why = "search.refit: true trains the best spec on train + validation"
        refit = spec.train.model_copy(update={"fit_on": POOLED, "fit_epochs": spec.train.epochs})
        reason = train_refusal(refit)
        return f"{why}: {reason}" if reason else evaluate_refusal(spec.evaluate, why)
    return None


def refit_epochs(folds: list[dict], epochs: int) -> int:
    """The epochs a refit on train + validation trains: the median over the best trial's CV
    folds of the epoch each fold's model is from (its best checkpoint, where early stopping
    or the lowest val_loss put it; the last, averaged, epoch with swa/ema), half rounded up;
    `epochs` when the trial recorded no folds."""
    chosen = [int(f["best_epoch"]) for f in folds if f.get("best_epoch")]
    if not chosen:
        return epochs
    return max(1, min(epochs, int(statistics.median(chosen) + 0.5)))


def refit_spec(best: dict, folds: list[dict]) -> dict:
    """The best trial's spec (plain data) as its refit trains it: on train + validation for
    the epochs the trial's folds chose. best_spec.yaml holds it, so running that file by
    hand repeats the refit (its CV folds are the trial's: fit_on leaves them alone)."""
    refit = copy.deepcopy(best)
    train = refit.setdefault("train", {})
    train["fit_on"] = POOLED
    train["fit_epochs"] = refit_epochs(folds, int(train.get("epochs", 20)))
    return refit
