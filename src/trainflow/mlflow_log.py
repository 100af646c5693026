"""Logging a run to MLflow, where a team tracks its models there (spec `outputs.mlflow`, the
`trainflow[mlflow]` extra; mlflow is imported only when a spec asks for it).

One MLflow run per pipeline run, in the experiment `outputs.mlflow.experiment` (default: the
pipeline's name): the spec flattened to dotted params, the main training's per-epoch metrics
(metrics.jsonl, step = epoch), the test metrics, a nested run per cross-validation fold (its
epochs and its validation and test metrics), the report and plots as artifacts, and the model
package as an MLflow model (trainflow.mlflow_model, logged as code, not pickled) registered
as a version of the registered model named after the pipeline. When this run's champion
decision promoted the package, that version gets the registered model's `champion` alias.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainflow.artifacts import ArtifactRef
from trainflow.errors import TrainflowError
from trainflow.run_outputs import RunOutputs

ALIAS = "champion"
CODE = Path(__file__).with_name("mlflow_model.py")  # the pyfunc model, logged as code
REPORT_FILES = ("report.md", "metrics.json")  # from the run folder (with the decision)


def mlflow_module() -> Any:
    try:
        import mlflow
    except ImportError:
        raise TrainflowError(
            "outputs.mlflow is set but MLflow is not installed: "
            "pip install 'trainflow[mlflow]', or remove outputs.mlflow "
            "from the spec"
        ) from None
    return mlflow


def flat_params(value: Any, prefix: str = "") -> dict[str, str]:
    """A nested spec as {"train.lr": "0.001", "data.post_split.0.type": "encode", ...}:
    text as it is, every other leaf as JSON (numbers, true/false, null, [])."""
    if isinstance(value, dict) and value:
        out = {}
        for key, item in value.items():
            out.update(flat_params(item, f"{prefix}{key}."))
        return out
    if isinstance(value, list) and value:
        out = {}
        for i, item in enumerate(value):
            out.update(flat_params(item, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: value if isinstance(value, str) else json.dumps(value)}


def history(model_dir: Path) -> tuple[list[dict], list[dict]]:
    """A training's metrics.jsonl rows: the per-epoch ones and the per-step ones."""
    path = model_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return [r for r in rows if "step" not in r], [r for r in rows if "step" in r]


def _metrics(client: Any, run_id: str, model_dir: Path, final: dict[str, dict]) -> None:
    """Log the epochs (step = epoch), the steps (`step/<name>`, step = optimizer step) and
    the final figures (`<prefix>/<metric>`, scalars only: `test/f1_macro`, apart from the
    epochs' own `val_loss`) in batches."""
    from mlflow.entities import Metric

    stamp = _now_ms()
    epochs, steps = history(model_dir)
    metrics = [
        Metric(k, float(v), stamp, int(row["epoch"]))
        for row in epochs
        for k, v in row.items()
        if k != "epoch" and _number(v)
    ]
    metrics += [
        Metric(f"step/{k}", float(v), stamp, int(row["step"]))
        for row in steps
        for k, v in row.items()
        if k not in ("step", "epoch") and _number(v)
    ]
    metrics += [
        Metric(f"{prefix}/{k}", float(v), stamp, 0)
        for prefix, figures in final.items()
        for k, v in figures.items()
        if _number(v)
    ]
    client.log_batch(run_id, metrics=metrics)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def _experiment(client: Any, name: str) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # another run created it a moment ago
        return client.get_experiment_by_name(name).experiment_id


def log_run(
    spec: Any,
    outputs: RunOutputs,
    report: ArtifactRef,
    run_dir: str,
    package: str | None,
    champion: dict | None,
) -> dict:
    """Log one pipeline run (see the module's docstring); returns the run's id, its
    experiment, the registered model version and whether the alias moved to it."""
    mlflow = mlflow_module()
    from mlflow.exceptions import MlflowException

    settings = spec.outputs.mlflow
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(settings.tracking_uri)  # log_model reads the global URI
    try:
        return _log(mlflow, spec, outputs, report, run_dir, package, champion)
    except MlflowException as exc:
        raise TrainflowError(
            f"outputs.mlflow: logging to {settings.tracking_uri!r} failed: "
            f"{exc.message}; check the tracking URI and that the server "
            "is reachable"
        ) from None
    finally:
        mlflow.set_tracking_uri(previous)


def _log(
    mlflow: Any,
    spec: Any,
    outputs: RunOutputs,
    report: ArtifactRef,
    run_dir: str,
    package: str | None,
    champion: dict | None,
) -> dict:
    client = mlflow.MlflowClient()
    experiment = _experiment(client, spec.outputs.mlflow.experiment or spec.name)
    tags = {
        "trainflow.pipeline": spec.name,
        "trainflow.spec_fingerprint": spec.fingerprint(),
        "trainflow.run_dir": run_dir,
        "trainflow.package": package or "",
    }
    with mlflow.start_run(experiment_id=experiment, run_name=Path(run_dir).name, tags=tags) as run:
        run_id = run.info.run_id
        params = flat_params(spec.model_dump(mode="json"))
        mlflow.log_params(params)
        _metrics(client, run_id, outputs.model.path, {"test": outputs.test.meta})
        for fold in outputs.folds:
            with mlflow.start_run(
                experiment_id=experiment,
                nested=True,
                run_name=f"fold-{fold.meta['fold']}",
                tags={**tags, "trainflow.fold": str(fold.meta["fold"])},
            ):
                fold_run = mlflow.active_run().info.run_id
                _metrics(
                    client,
                    fold_run,
                    fold.path,
                    {"val": fold.meta["val"], "test": fold.meta["test"]},
                )
        for name in REPORT_FILES:
            if (Path(run_dir) / name).is_file():
                mlflow.log_artifact(str(Path(run_dir) / name), "report")
        for png in sorted(report.path.glob("*.png")):
            mlflow.log_artifact(str(png), "report")
        version = _log_package(mlflow, spec.name, package) if package else None
    alias = bool(version and champion and champion.get("promoted"))
    if alias:
        client.set_registered_model_alias(spec.name, ALIAS, version)
    if version and champion:
        client.set_model_version_tag(
            spec.name, version, "trainflow.decision", champion.get("decision", "none")
        )
    return {
        "tracking_uri": spec.outputs.mlflow.tracking_uri,
        "experiment_id": experiment,
        "run_id": run_id,
        "registered_model": spec.name if version else None,
        "version": version,
        "champion_alias": alias,
    }


def _log_package(mlflow: Any, pipeline: str, package: str) -> str:
    """The package as an MLflow model (its folder an artifact the pyfunc code loads),
    registered as a new version of the pipeline's registered model."""
    from trainflow import __version__

    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(CODE),
        artifacts={"package": package},
        registered_model_name=pipeline,
        model_config={"proba": False},  # the default; load_model(..., model_config=) sets it
        # stated, not inferred: inferring loads the model in a subprocess
        pip_requirements=[f"trainflow=={__version__}", f"mlflow-skinny=={mlflow.__version__}"],
    )
    return str(info.registered_model_version)
