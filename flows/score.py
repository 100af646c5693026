"""The score flow: batch scoring of new rows with a pipeline's champion (a deployment per
shipped pipeline, schedulable beside its retraining; see deploy/prefect.yaml)."""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from trainflow.drift import THRESHOLD
from trainflow.scoring import locations
from trainflow.tasks.score import report_scores, score_data


@flow(name="score", task_runner=ThreadPoolTaskRunner(max_workers=1))  # type: ignore[arg-type]
def score(
    pipeline: str,
    data: str,
    output: str,
    package: str | None = None,
    proba: bool = False,
    drift_threshold: float = THRESHOLD,
) -> dict:
    """Score a file or folder with the pipeline's champion and report the predicted classes
    and each feature's drift from the training data.

    Args:
        pipeline: pipeline name: a spec file in the pipelines folder, e.g. credit_smote_mlp
        data: the rows to score: a .csv or .parquet file (or a folder of images), a path
            inside the scoring folder ($TRAINFLOW_SCORING_DIR, else ./scoring on the worker)
        output: the predictions file (.csv or .parquet) inside the scoring folder; {date}
            becomes the run's scheduled day, e.g. credit_smote_mlp/predictions-{date}.csv
        package: a model package of the pipeline's store (its folder name) instead of the
            champion
        proba: add a proba_<class> column per class
        drift_threshold: a feature whose population stability index exceeds this is
            flagged as drifted
    """
    # Every parameter is checked before any file is read: a bad one fails the run naming it.
    name, model, source, target = locations(
        pipeline, data, output, package, drift_threshold, flow_run.scheduled_start_time.date()
    )
    summary = score_data(name, str(model), str(source), str(target), proba, drift_threshold)
    report_scores(summary, "package" if package else "champion")
    return summary
