"""The flow behind every deployment: a shipped pipeline by name, with the run form's knobs."""

from __future__ import annotations

from prefect import flow

from trainflow.deployments import spec_from_parameters
from trainflow.flows.pipeline import pipeline as pipeline_flow
from trainflow.preflight import check_data


@flow(name="trainflow", log_prints=True)
def train(pipeline: str, epochs: int | None = None, lr: float | None = None,
          batch_size: int | None = None, cv_folds: int | None = None,
          overrides: list[str] | None = None) -> dict:
    """Run a shipped pipeline; empty knobs keep the spec's values.

    Args:
        pipeline: pipeline name: a spec file in the pipelines folder (digits_cnn,
            breast_cancer_mlp, credit_smote_mlp)
        epochs: train.epochs
        lr: train.lr (learning rate)
        batch_size: train.batch_size
        cv_folds: evaluate.cv.folds (cross-validation folds)
        overrides: any other spec value as key.path=value (YAML value), e.g.
            train.optimizer.type=sgd or data.steps.1.test=0.25
    """
    knobs = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "cv_folds": cv_folds}
    # Everything is validated here, before the first task: a bad value fails the run naming it.
    spec = spec_from_parameters(pipeline, knobs, overrides or [])
    check_data(spec)
    result = pipeline_flow(spec)
    return {"pipeline": spec.name, "run_dir": result["run_dir"],
            "test": {k: v for k, v in result["test"].items() if k != "confusion_matrix"}}
