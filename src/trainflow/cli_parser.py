"""The `trainflow` command's arguments: one argparse parser, built from one function per
group of commands (imports argparse alone: `trainflow validate` stays light)."""

from __future__ import annotations

import argparse

DESCRIPTION = (
    "The `trainflow` command: validate, schema, run, task; server, serve, deploy, notify-data."
)
EXPORT_FORMATS = ("onnx", "torchscript", "exported_program")  # trainflow.export.FORMATS


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainflow", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)
    overrides = _overrides()
    _spec_commands(commands, overrides)
    _task_command(commands, overrides)
    _server_commands(commands)
    _package_commands(commands)
    _models_parser(commands)
    return parser


def _overrides() -> argparse.ArgumentParser:
    """`--set KEY.PATH=VALUE`, shared by every command that loads a spec."""
    overrides = argparse.ArgumentParser(add_help=False)
    overrides.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a spec value (YAML syntax)",
    )
    return overrides


def _spec_commands(commands, overrides: argparse.ArgumentParser) -> None:
    """validate, schema, run, search: a spec file and what to do with it."""
    validate = commands.add_parser(
        "validate",
        parents=[overrides],
        help="check a spec and its data as `run` does before any work (nothing is written "
        "but the checks' verdict)",
    )
    validate.add_argument("spec")
    validate.add_argument(
        "--schema-only",
        action="store_true",
        help="check the spec file alone, without reading its data (fast: no torch, no polars)",
    )
    commands.add_parser("schema", help="print the JSON Schema of pipeline specs")
    run = commands.add_parser("run", parents=[overrides], help="run a pipeline on Prefect")
    run.add_argument("spec")
    search = commands.add_parser(
        "search", parents=[overrides], help="run a spec's hyperparameter study (its `search`)"
    )
    search.add_argument("spec")


def _task_command(commands, overrides: argparse.ArgumentParser) -> None:
    """`trainflow task NAME`: one step alone, on the refs given (trainflow.cli_task)."""
    step = commands.add_parser("task", parents=[overrides], help="run one step locally")
    step.add_argument(
        "step",
        help="a task of the pipeline (trainflow.registry.TASKS): "
        "ingest, expect, a data step of the spec (clean, split, "
        "...), shard, train, evaluate, train_fold, ensemble, ...",
    )
    step.add_argument("--spec", required=True)
    step.add_argument(
        "--input",
        dest="inputs",
        action="append",
        default=[],
        metavar="REF",
        help="an input ref: JSON text or a file holding it (repeat for several)",
    )
    step.add_argument(
        "--index",
        type=int,
        default=None,
        help="which data.steps entry to run when the spec has several of a type",
    )
    step.add_argument("--fold", type=int, default=0, help="fold number for train_fold")
    step.add_argument(
        "--materialize",
        action="store_true",
        help="write a view's rows (encode, normalize) as Parquet parts and print "
        "that artifact's ref, to look at the data",
    )


def _server_commands(commands) -> None:
    """server, serve, deploy, notify-data: a Prefect server and the deployments on it."""
    server = commands.add_parser("server", help="start a local Prefect server and UI")
    server.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    server.add_argument("--port", type=int, default=4200)
    deployments = argparse.ArgumentParser(add_help=False)
    deployments.add_argument(
        "--file",
        default=None,
        metavar="PREFECT_YAML",
        help="deployments file (default: deploy/prefect.yaml)",
    )
    deployments.add_argument(
        "--max-trainings",
        type=int,
        default=None,
        metavar="N",
        help="at most N training tasks at once on the server (tag limit)",
    )
    serve = commands.add_parser(
        "serve", parents=[deployments], help="serve every shipped deployment from this process"
    )
    serve.add_argument("--limit", type=int, default=None, help="at most this many runs at once")
    deploy = commands.add_parser(
        "deploy", parents=[deployments], help="register the deployments for a process work pool"
    )
    deploy.add_argument("--pool", default=None, help="work pool (default: from prefect.yaml)")
    notify = commands.add_parser(
        "notify-data", help="announce new data for a pipeline: its deployment retrains"
    )
    notify.add_argument("pipeline")
    notify.add_argument("--note", default=None, help="text carried in the event's payload")


def _package_commands(commands) -> None:
    """predict and export: a model package, out of the pipeline."""
    predict = commands.add_parser(
        "predict", help="score a CSV, Parquet file or image folder with a model package"
    )
    predict.add_argument("model", help="a model package folder (printed by `trainflow run`)")
    predict.add_argument("data", help="a .csv or .parquet file, or a folder of images")
    predict.add_argument(
        "--output",
        default=None,
        metavar="FILE",
        help="write .csv or .parquet (default: CSV on stdout)",
    )
    predict.add_argument(
        "--proba", action="store_true", help="add a proba_<class> column per class"
    )
    export = commands.add_parser(
        "export", help="write a model package as one ONNX, TorchScript or ExportedProgram file"
    )
    export.add_argument("model", help="a model package folder, or a pipeline (its champion)")
    export.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    export.add_argument(
        "--output",
        required=True,
        metavar="FILE",
        help="the file to write; its sidecar goes to FILE.json",
    )


def _models_parser(commands) -> None:
    """`trainflow models list|promote|rollback PIPELINE`: a pipeline's champion by hand."""
    models = commands.add_parser(
        "models", help="a pipeline's champion: its history, promote a package, roll back"
    )
    actions = models.add_subparsers(dest="action", required=True)
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("pipeline", help="the pipeline's name (its spec's `name`)")
    where.add_argument(
        "--store",
        default=None,
        help="the store holding the champion "
        "(default: outputs.store of pipelines/PIPELINE.yaml, else .trainflow)",
    )
    actions.add_parser("list", parents=[where], help="the champion and its history")
    promote = actions.add_parser(
        "promote", parents=[where], help="make a package of the pipeline its champion"
    )
    promote.add_argument("model", help="a model package folder of this pipeline")
    actions.add_parser("rollback", parents=[where], help="the previous champion again")
