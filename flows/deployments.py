"""The flow behind every deployment: a shipped pipeline by name, with the run form's knobs."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.states import State
from prefect.task_runners import ThreadPoolTaskRunner

from trainflow.deploy import spec_from_parameters
from trainflow.errors import TrainflowError
from trainflow.flows.pipeline import pipeline as pipeline_flow
from trainflow.logs import failed_run, log_user_error
from trainflow.preflight import check_data
from trainflow.task_options import check_runner


# The pipeline's body runs inside this flow run (`pipeline_flow.fn`), so its task runs and
# artifacts (report, CV table, links, training progress) are on the run page the UI opens.
# One worker, as in the pipeline flow: training seeds torch's process-wide RNG.
@flow(name="trainflow", task_runner=ThreadPoolTaskRunner(max_workers=1))  # type: ignore[arg-type]
def train(
    pipeline: str,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    cv_folds: int | None = None,
    overrides: list[str] | None = None,
    note: str | None = None,
) -> dict:
    """Run a shipped pipeline; empty knobs keep the spec's values.

    Args:
        pipeline: pipeline name: a spec file in the pipelines folder, e.g. digits_cnn
        epochs: train.epochs
        lr: train.lr (learning rate)
        batch_size: train.batch_size
        cv_folds: evaluate.cv.folds (cross-validation folds)
        overrides: any other spec value as key.path=value (YAML value), e.g.
            train.optimizer.type=sgd or data.steps.1.test=0.25
        note: the `trainflow notify-data --note` text of the new data that started this
            run (its trigger fills it in); logged, never read as a spec value
    """
    if note:
        get_run_logger().info("started by new data for %s: %s", pipeline, note[:500])
    knobs = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "cv_folds": cv_folds}
    # Everything is validated here, before the first task: a bad value fails the run naming
    # it, once: the run's state message and one error line, no traceback (a user's mistake)
    try:
        spec = spec_from_parameters(pipeline, knobs, overrides or [])
        check_data(spec)
        check_runner(spec)
    except TrainflowError as exc:
        log_user_error(exc)
        return failed_run(exc)  # type: ignore[return-value]  # its message on one line
    if spec.search is not None:  # a study (flows/search.py), its trials on this run's runner
        from trainflow.flows.search import search

        try:
            found = search.fn(spec)
        except TrainflowError as exc:  # a trial's step named, as the pipeline's are
            return failed_run(exc)  # type: ignore[return-value]
        return {"pipeline": spec.name, **{k: found[k] for k in ("run_dir", "study", "best_value")}}
    result = pipeline_flow.fn(spec)  # its promote step applies the spec's rule (`promote`)
    if isinstance(result, State):  # a user's mistake: its step and message (logs.failed_run)
        return result  # type: ignore[return-value]
    decision = result["champion"]
    return {
        "pipeline": spec.name,
        "run_dir": result["run_dir"],
        "test": {k: v for k, v in result["test"].items() if k != "confusion_matrix"},
        "champion": {k: decision.get(k) for k in ("decision", "reason", "champion")},
    }
