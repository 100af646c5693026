"""Promote: the run's model package (the challenger) against the pipeline's champion, both
scored on the raw rows of this run's test split, and the champion replaced only when the
spec's rule (`promote: {metric, min_delta}`) holds. The first run of a pipeline promotes.

Not cached: the champion changes between runs, so the same challenger may meet another
champion; the decision and its reason go to the pointer's history and the run's report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from sklearn.metrics import precision_recall_fscore_support, recall_score

from trainflow.champion import Event, decide, judge, located, locked, named, now
from trainflow.errors import TrainflowError
from trainflow.logs import run_logger
from trainflow.metrics import regression_metrics
from trainflow.predictor import Model, load_model
from trainflow.spec.pipeline import PipelineSpec
from trainflow.spec.promote import REGRESSION_PROMOTE
from trainflow.testrows import raw_test_rows

LOG_EPS = 1e-15  # probabilities are clipped here for the log loss (as scikit-learn does)


def scores(model: Model, rows: pl.DataFrame, target: str, classes: list[str]) -> dict:
    """The metrics of `model` on `rows`, their labels indexed in `classes` (the
    challenger's): a predicted class outside them is wrong, its probability lost."""
    if model.task == "regression":  # the evaluate task's figures, in the target's units
        truth = rows[target].cast(pl.Float64).to_numpy()
        found = regression_metrics(truth, model.predict(rows), (), "the test rows (promote)")
        return {name: found[name] for name in REGRESSION_PROMOTE}
    index = {c: i for i, c in enumerate(classes)}
    y = np.asarray([index[v] for v in rows[target].cast(pl.Utf8).to_list()], dtype=np.int64)
    probs = model.predict_proba(rows)
    # the package's own decision (its threshold, where evaluate tuned one), as it predicts
    pred = np.asarray([index.get(c, -1) for c in model.classes])[model.predicted_indices(probs)]
    column = {c: j for j, c in enumerate(model.classes)}
    p_true = np.asarray(
        [probs[i, column[classes[t]]] if classes[t] in column else 0.0 for i, t in enumerate(y)],
        dtype=np.float64,
    )
    labels = list(range(len(classes)))
    precision, recall, f1, _ = precision_recall_fscore_support(
        y, pred, labels=labels, average="macro", zero_division=0
    )
    return {  # the evaluate task's figures (trainflow.metrics), and the log loss
        "accuracy": float(np.mean(pred == y)),
        "balanced_accuracy": float(
            recall_score(y, pred, labels=np.unique(y).tolist(), average="macro", zero_division=0)
        ),
        "precision_macro": float(precision),
        "recall_macro": float(recall),
        "f1_macro": float(f1),
        "log_loss": float(-np.mean(np.log(np.clip(p_true, LOG_EPS, 1.0)))),
    }


def _champion_scores(
    store: Path, current: str, rows: pl.DataFrame, target: str, classes: list[str]
) -> tuple[dict | None, str | None]:
    """The champion's metrics on the rows, or why it cannot be scored (its package gone or
    damaged, or the rows no longer fit its input schema): then it cannot serve either."""
    try:
        return scores(load_model(located(store, current)), rows, target, classes), None
    except TrainflowError as exc:
        return None, str(exc)


@task(name="promote", cache_policy=NO_CACHE, persist_result=False)
def promote_model(package: str | None, data: dict, spec: PipelineSpec, store: str) -> dict:
    """Compare the run's package with the champion on this run's test split; promote it when
    `spec.promote` holds. Returns the decision, both models' metrics and the reason."""
    rule = spec.promote
    if package is None:
        reason = "this run made no model package (see the package step's warning)"
        run_logger().warning("no champion decision: %s", reason)
        return {
            "pipeline": spec.name,
            "decision": "none",
            "promoted": False,
            "reason": reason,
            "metric": rule.metric,
            "min_delta": rule.min_delta,
        }
    challenger = load_model(package)
    if challenger.task == "regression" and rule.metric not in REGRESSION_PROMOTE:
        rule = rule.model_copy(update={"metric": "rmse"})  # (the default names a classifier's)
    rows = raw_test_rows(
        data["ingested"], data["steps"], spec.data.pre_split, data["raw_splits"], spec.seed
    )
    target, classes = challenger.info.input.target, challenger.classes
    mine = scores(challenger, rows, target, classes)
    root = Path(store)
    with locked(root, spec.name) as pointer:  # one run decides at a time
        current, theirs = pointer.current, None
        if current == named(root, package):
            promote, reason, theirs = (
                False,
                "this run's model is the champion already "
                "(the same package: nothing changed since it was made)",
                mine,
            )
        elif current is not None:
            theirs, broken = _champion_scores(root, current, rows, target, classes)
            promote, reason = (
                (True, f"the champion {current} cannot score this run's test rows ({broken})")
                if broken
                else judge(rule, mine, theirs)
            )
        else:
            promote, reason = judge(rule, mine, None)
        event = decide(
            root,
            pointer,
            Event(
                when=now(),
                run=f"{flow_run.get_name() or 'local'} ({flow_run.get_id() or '-'})",
                package=named(root, package),
                decision="promoted" if promote else "kept",
                reason=reason,
                metric=rule.metric,
                metrics=mine,
                champion_metrics=theirs,
                champion=None,
            ),
        )
    run_logger().info("champion of %s: %s (%s)", spec.name, event.decision, reason)
    return {
        "pipeline": spec.name,
        "decision": event.decision,
        "promoted": promote,
        "reason": reason,
        "metric": rule.metric,
        "min_delta": rule.min_delta,
        "rows": rows.height,
        "when": event.when,
        "run": event.run,
        "challenger": {"package": str(Path(package).resolve()), "metrics": mine},
        "champion_before": {
            "package": str(located(root, current)) if current else None,
            "metrics": theirs,
        },
        "champion": str(located(root, event.champion)),
    }
