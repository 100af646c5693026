"""Ensemble: combine the cross-validation fold models (of the spec, its variants or a
study's best trials) as `ensemble.type` says, and score the combination on the test part."""

from __future__ import annotations

import json
import shutil
from typing import Any

import numpy as np
import torch
from prefect import task

from trainflow import registry
from trainflow.artifacts import ArtifactRef, Store
from trainflow.caching import CACHED
from trainflow.engine import checkpoint
from trainflow.engine.data import Split
from trainflow.engine.inference import score
from trainflow.ensembles import combine_mean, fit_stacking, fit_weights, log_loss
from trainflow.errors import ArtifactError, TrainflowError
from trainflow.metrics import classification_metrics, regression_metrics
from trainflow.soup import Ingredient, greedy_soup
from trainflow.spec.ensemble import classification_refusal, regression_refusal

COMBINE = "combine.json"  # the state the package's prediction combines its members with
META_ROWS = "meta_rows.json"  # stacking: the rows its meta-model was fitted on and scored


def load(ref: ArtifactRef, name: str) -> np.ndarray:
    return np.load(ref.path / f"{name}.npy", allow_pickle=False)


def members_of(folds: list[ArtifactRef]) -> list[list[ArtifactRef]]:
    """The fold models grouped by member: each member's folds come in order from fold 0."""
    members: list[list[ArtifactRef]] = []
    for ref in folds:
        if ref.meta.get("fold") == 0 or not members:
            members.append([])
        members[-1].append(ref)
    return members


def test_labels(folds: list[ArtifactRef]) -> np.ndarray:
    labels, classes = None, folds[0].data_schema.get("classes")
    for ref in folds:
        ref.verify()
        if ref.data_schema.get("classes") != classes:
            raise ArtifactError(
                f"ensemble: fold {ref.meta.get('fold')} ({ref.path}) predicts the classes "
                f"{ref.data_schema.get('classes')}, the first member {classes}: an ensemble "
                "combines models of the same classes"
            )
        y = load(ref, "test_labels")
        if labels is not None and not np.array_equal(labels, y):
            raise ArtifactError(f"fold {ref.meta.get('fold')} was scored on other test rows")
        labels = y
    assert labels is not None
    return labels


def out_of_fold(member: list[ArtifactRef]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A member's out-of-fold probabilities, labels and the fold that predicted each
    train+val row (a fold model that never trained on it), in pool order."""
    for ref in member:
        if not (ref.path / "val_rows.npy").is_file():
            raise ArtifactError(
                f"ensemble: fold {ref.meta.get('fold')} ({ref.path}) kept no out-of-fold "
                "rows (a data step dropped held-out rows): weighted and stacking fit on "
                "out-of-fold predictions; use soft_vote or hard_vote"
            )
    rows = np.concatenate([load(ref, "val_rows") for ref in member])
    if not np.array_equal(np.sort(rows), np.arange(len(rows))):
        raise ArtifactError("ensemble: the folds' held-out rows do not cover the pool once")
    probs = np.concatenate([load(ref, "val_probs") for ref in member])
    labels = np.concatenate([load(ref, "val_labels") for ref in member])
    fold = np.concatenate([np.full(len(load(ref, "val_rows")), i) for i, ref in enumerate(member)])
    order = np.argsort(rows)
    return probs[order], labels[order], fold[order]


def fit_on_oof(kind: str, members: list[list[ArtifactRef]], params: Any) -> tuple[dict, dict]:
    """(the combine state's fitted part, what the meta_rows file records) of weighted or
    stacking, fitted on the members' out-of-fold predictions only."""
    oofs = [out_of_fold(m) for m in members]
    labels, fold_of_row = oofs[0][1], oofs[0][2]
    for _, y, _ in oofs[1:]:
        if len(y) != len(labels) or not np.array_equal(y, labels):
            raise ArtifactError("ensemble: the members were cross-validated on other rows")
    probs = [o[0] for o in oofs]
    if kind == "weighted":
        return fit_weights(probs, labels), {}
    classes = probs[0].shape[1]
    if len(np.unique(labels)) != classes:
        raise ArtifactError(
            f"ensemble stacking: the out-of-fold rows hold {len(np.unique(labels))} of the "
            f"{classes} classes, so the meta-model cannot learn them all: use soft_vote"
        )
    fitted = fit_stacking(probs, labels, params.C)
    rows = {"fitted_on": list(range(len(labels))), "fold_of_row": fold_of_row.tolist()}
    return fitted, rows


def soup_of(folds: list[ArtifactRef], staging: Any) -> tuple[np.ndarray, dict]:
    """The greedy soup's test probabilities and state; its weights, model.json and the
    first ingredient's fitted steps written to `staging` (a model folder a package copies)."""
    for ref in folds:
        if not (ref.path / "val_x.npy").is_file():
            raise ArtifactError(
                f"ensemble soup: fold {ref.meta.get('fold')} ({ref.path}) kept no held-out "
                "inputs (they were larger than tasks/fold.py FEATURES_MB): use soft_vote"
            )
    ingredients = [
        Ingredient(
            ref.path,
            ref.meta["fold"],
            ref.meta["val"]["loss"],
            load(ref, "val_x"),
            load(ref, "val_labels"),
        )
        for ref in folds
    ]
    soup = greedy_soup(ingredients)
    first = next(ref for ref in folds if ref.meta["fold"] == soup.kept[0])
    for name in ("model.json", "steps.json"):
        shutil.copyfile(first.path / name, staging / name)
    checkpoint.save(staging / "best.pt", {"model": soup.net.state_dict(), "epoch": 0})
    test = Split(
        torch.from_numpy(load(first, "test_x")), torch.from_numpy(load(first, "test_labels"))
    )
    _, probs = score(soup.net, test, len(first.data_schema["classes"]))
    return probs, {"kept": soup.kept, "tried": soup.tried}


def best_single(folds: list[ArtifactRef]) -> dict:
    """The fold model with the lowest validation loss (chosen without the test part), with
    its test metrics: what the report compares the ensemble with. A regression's fold models
    are chosen by their validation rmse: each fold's loss is on a target scaled by that
    fold's own training rows, so only the rmse (in the target's units) compares across them."""
    figure = "rmse" if is_regression(folds) else "loss"
    best = min(folds, key=lambda ref: (ref.meta["val"][figure], folds.index(ref)))
    member = members_of(folds)
    index = next(i for i, m in enumerate(member) if best in m)
    return {"fold": best.meta["fold"], "member": index, **best.meta["test"]}


def is_regression(folds: list[ArtifactRef]) -> bool:
    """Whether the fold models predict numbers (tasks/fold.py records the task)."""
    return folds[0].data_schema.get("task") == "regression"


def mean_of_regressors(folds: list[ArtifactRef], params: Any, store: str) -> ArtifactRef:
    """A regression's ensemble: the fold models' test predictions averaged (in the target's
    units, as each fold saved them), scored with the regression metrics. The other kinds
    combine class probabilities, and are refused."""
    refusal = regression_refusal(params.type)
    if refusal:
        raise TrainflowError(refusal)
    truth = test_labels(folds)
    members = members_of(folds)
    state = {"kind": params.type, "groups": [g for g, m in enumerate(members) for _ in m]}
    combined = combine_mean([load(ref, "test_preds") for ref in folds], state)
    metrics = regression_metrics(truth, combined, where="the test part")
    metrics["members_rmse"] = [ref.meta["test"]["rmse"] for ref in folds]
    target = Store(store)
    with target.writer("metrics") as staging:
        (staging / COMBINE).write_text(json.dumps(state, indent=1, sort_keys=True))
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
        np.save(staging / "test_preds.npy", combined, allow_pickle=False)
        return target.commit(
            staging,
            "metrics",
            count=len(truth),
            meta={
                **metrics,
                "task": "regression",
                "type": params.type,
                "combine": params.type,
                "members": len(folds),
                "member_models": len(members),
                "best_single": best_single(folds),
            },
        )


@task(name="ensemble", **CACHED)
def ensemble_folds(folds: list[ArtifactRef], params: Any, store: str) -> ArtifactRef:
    """Combine the fold models (of every member) and score the combination on the test part."""
    if is_regression(folds):
        return mean_of_regressors(folds, params, store)
    refusal = classification_refusal(params.type)  # a task the data decided: known only now
    if refusal:
        raise TrainflowError(refusal)
    labels = test_labels(folds)
    members = members_of(folds)
    kind = getattr(params, "combine", params.type)  # top_k_trials combines as it says
    groups = [g for g, member in enumerate(members) for _ in member]
    state: dict[str, Any] = {"kind": kind, "groups": groups}
    target = Store(store)
    with target.writer("metrics") as staging:
        fitted, rows = {}, {}
        if kind in ("weighted", "stacking"):
            fitted, rows = fit_on_oof(kind, members, params)
        if kind == "soup":  # one network: the package holds the soup alone
            combined, fitted = soup_of(members[0], staging)
            state["groups"] = [0]
        else:
            state.update(fitted)
            probs = [load(ref, "test_probs") for ref in folds]
            combined = registry.ENSEMBLES[params.type].impl(probs, state)
        metrics = classification_metrics(labels, combined, combined.shape[1])
        metrics.setdefault("log_loss", log_loss(combined, labels))
        metrics["members_accuracy"] = [ref.meta["test"]["accuracy"] for ref in folds]
        if rows:
            rows.update({"scored": "test", "scored_rows": len(labels)})
            (staging / META_ROWS).write_text(json.dumps(rows))
        (staging / COMBINE).write_text(json.dumps(state, indent=1, sort_keys=True))
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
        np.save(staging / "test_probs.npy", combined.astype(np.float32), allow_pickle=False)
        fit = {k: v for k, v in fitted.items() if k not in ("coef", "intercept", "classes")}
        return target.commit(
            staging,
            "metrics",
            count=len(labels),
            meta={
                **metrics,
                "type": params.type,
                "combine": kind,
                "members": len(folds),
                "member_models": len(members),
                "best_single": best_single(folds),
                **fit,
            },
        )
