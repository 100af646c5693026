"""MLflow: log the run (spec `outputs.mlflow`) after its report and champion decision.

Not cached: every run is a new MLflow run (and a new model version), like the report's."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from trainflow.artifacts import ArtifactRef
from trainflow.logs import run_logger
from trainflow.run_outputs import RunOutputs
from trainflow.spec.pipeline import PipelineSpec


@task(name="mlflow_log", cache_policy=NO_CACHE, persist_result=False)
def log_to_mlflow(
    spec: PipelineSpec,
    outputs: RunOutputs,
    report: ArtifactRef,
    run_dir: str,
    package: str | None,
    champion: dict | None,
) -> dict:
    """Params, metrics, nested fold runs, report and plots, the package as a registered
    model version, and the `champion` alias when this run promoted (trainflow.mlflow_log)."""
    from trainflow.mlflow_log import log_run  # mlflow only for specs that ask for it

    logged = log_run(spec, outputs, report, run_dir, package, champion)
    run_logger().info(
        "MLflow run %s in experiment %s (model version %s%s)",
        logged["run_id"],
        logged["experiment_id"],
        logged["version"],
        ", now the champion" if logged["champion_alias"] else "",
    )
    return logged
