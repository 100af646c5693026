"""The `trainflow` command: validate, schema, run, task; server, serve, deploy, notify-data."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

ENV_DEFAULTS = {
    # The ephemeral server's first start migrates its database: slow on a small machine.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # pydantic looks for plugins (observability hooks) in every installed distribution's entry
    # points when it builds its first model: ~5 % of checking a spec, for hooks trainflow's
    # models never use. Set PYDANTIC_DISABLE_PLUGINS= (empty) to have them loaded.
    "PYDANTIC_DISABLE_PLUGINS": "__all__",
}

# Commands that only read a spec: they import pydantic and YAML, never Prefect or torch.
LIGHT = ("validate", "schema")
EXPORT_FORMATS = ("onnx", "torchscript", "exported_program")  # trainflow.export.FORMATS
SEARCH_SUMMARY = ("run_dir", "study", "storage", "best_value", "trials")  # flows/search.py
NESTED_SUMMARY = ("metric", "mean", "std", "inner_mean")  # trainflow.study.nested_summary


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainflow", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    overrides = argparse.ArgumentParser(add_help=False)
    overrides.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a spec value (YAML syntax)",
    )
    validate = commands.add_parser("validate", parents=[overrides], help="check a spec file")
    validate.add_argument("spec")
    commands.add_parser("schema", help="print the JSON Schema of pipeline specs")
    run = commands.add_parser("run", parents=[overrides], help="run a pipeline on Prefect")
    run.add_argument("spec")
    search = commands.add_parser(
        "search", parents=[overrides], help="run a spec's hyperparameter study (its `search`)"
    )
    search.add_argument("spec")
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
    _models_parser(commands)
    return parser


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


def _models(args) -> int:
    from trainflow import champion

    if args.action == "list":
        print("\n".join(champion.history_lines(args.pipeline, args.store)))
        return 0
    if args.action == "promote":
        event = champion.promote_by_hand(args.pipeline, args.model, args.store)
    else:
        event = champion.rollback(args.pipeline, args.store)
    print(f"{event.decision}: the champion of {args.pipeline} is now {event.champion}")
    return 0


def _read_ref(text: str):
    from pydantic import ValidationError

    from trainflow.artifacts import ArtifactRef
    from trainflow.errors import TrainflowError

    try:
        raw = Path(text).read_bytes() if Path(text).is_file() else text
    except OSError:  # JSON text too long to be a file name, or an unreadable file
        raw = text
    try:
        return ArtifactRef.model_validate_json(raw)
    except ValidationError as exc:
        raise TrainflowError(
            f"--input {text[:60]!r} is not an artifact ref (JSON printed by "
            f"`trainflow task`): {exc.errors()[0]['msg']}"
        ) from None


def _run_step(args, spec) -> Any:
    """One task of the pipeline, bare (`.fn`), with its refs and the spec sections it reads
    (trainflow.registry.TASKS)."""
    import inspect

    from trainflow import registry
    from trainflow.errors import TrainflowError, did_you_mean

    task = registry.task(args.step)
    if task is None or task.inputs is None:
        names = [
            n
            for n in registry.task_names()
            if getattr(registry.task(n), "inputs", None) is not None
        ]
        raise TrainflowError(
            f"unknown step {args.step!r}{did_you_mean(args.step, names)} "
            f"(steps: {', '.join(names)})"
        )
    refs = [_read_ref(text) for text in args.inputs]
    many = bool(task.inputs) and task.inputs[0].startswith("*")  # `*folds`: one or more
    if (many and not refs) or (not many and len(refs) != len(task.inputs)):
        count = "one or more" if many else len(task.inputs)
        raise TrainflowError(
            f"task {args.step} takes {count} --input ref(s), got "
            f"{len(refs)}" + (f" (in order: {', '.join(task.inputs)})" if task.inputs else "")
        )
    fn = task.impl.fn
    kwargs: dict[str, object] = (
        {task.inputs[0][1:]: refs} if many else dict(zip(task.inputs, refs, strict=True))
    )
    for name, section in task.reads.items():
        kwargs[name] = _section(args, spec, section)
    given = {
        "store": str(Path(spec.outputs.store).resolve()),
        "seed": spec.seed,
        "fold": args.fold,
        "folds": spec.evaluate.cv.folds if spec.evaluate.cv else 5,
    }
    takes = inspect.signature(fn).parameters
    kwargs.update({k: v for k, v in given.items() if k in takes and k not in kwargs})
    return fn(**kwargs)


def _section(args, spec, path: str) -> object:
    """The spec value at `path` a task reads: the chosen `data.steps` entry of its type, or
    an optional section's default when the spec leaves it out."""
    from trainflow import registry
    from trainflow.errors import TrainflowError

    if path == "data.steps":
        chosen = [(i, s) for i, s in enumerate(spec.data.steps) if s.type == args.step]
        if args.index is not None:
            chosen = [(i, s) for i, s in chosen if i == args.index]
        if not chosen:
            raise TrainflowError(
                f"the spec has no `{args.step}` step"
                + (f" at data.steps.{args.index}" if args.index is not None else "")
            )
        return chosen[0][1]
    value = spec
    for key in path.split("."):
        value = getattr(value, key)
    if value is None and path in registry.OPTIONAL_SECTIONS:
        name, entry = next(iter(registry.OPTIONAL_SECTIONS[path].items()))
        return entry.params(type=name)
    return value


def _start_server(args) -> int:
    """`prefect server start` in this process's place (the UI and API on one port), so that
    a Ctrl-C or a SIGTERM reaches the server itself."""
    import shutil

    prefect = Path(sys.executable).with_name("prefect")
    program = str(prefect) if prefect.is_file() else shutil.which("prefect") or "prefect"
    print(
        f"Prefect UI on http://{args.host}:{args.port}; in another shell:\n"
        f"  export PREFECT_API_URL=http://{args.host}:{args.port}/api\n"
        f"  trainflow serve",
        flush=True,
    )
    # The UI calls the API at PREFECT_UI_API_URL, which does not follow --port by itself.
    env = {
        **os.environ,
        "PREFECT_UI_API_URL": f"http://{args.host}:{args.port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    os.execve(
        program, [program, "server", "start", "--host", args.host, "--port", str(args.port)], env
    )
    return 0  # not reached: execve replaces this process


def _orchestrate(args) -> int:
    """serve, deploy and notify-data: all need a reachable server in PREFECT_API_URL."""
    from trainflow import deploy
    from trainflow.errors import TrainflowError
    from trainflow.spec.orchestration import OrchestrationSpec

    if args.command == "notify-data":
        deploy.spec_file(args.pipeline)  # a pipeline that exists, before the server
        deploy.require_server()
        event = deploy.notify_data(args.pipeline, args.note)
        print(f"emitted {deploy.NEW_DATA_EVENT} for {args.pipeline} (event {event})")
        return 0
    path = Path(args.file) if args.file else deploy.PREFECT_YAML
    entries = deploy.read_deployments(path)  # bad schedules are named before the server
    if args.max_trainings is not None and args.max_trainings < 1:
        raise TrainflowError(f"--max-trainings must be >= 1, got {args.max_trainings}")
    deploy.require_server()
    if args.max_trainings is not None:
        deploy.limit_trainings(OrchestrationSpec().device_tag, args.max_trainings)
    if args.command == "deploy":
        for name in deploy.deploy_all(path, args.pool):
            print(f"registered {name}")
        return 0
    print(f"serving {len(entries)} deployment(s) from {path}", flush=True)
    deploy.serve_all(path, args.limit)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Exit 0 on success, 2 for a user's mistake (one `error:` message), 1 for a fault of
    trainflow (one `internal error` line and where its traceback is)."""
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    args = _parser().parse_args(argv)
    from trainflow.errors import TrainflowError

    try:
        if argv is None and args.command in ("run", "search"):  # the `trainflow` command itself
            from trainflow.warmworker import serve_elsewhere

            served = serve_elsewhere()  # in a warm worker's fork; None: here, as before
            if served is not None:
                return served
        # checking a spec loads no Prefect (issue 15); a run installs it after its checks
        if args.command not in (*LIGHT, "run", "search", "predict"):
            from trainflow.logs import quiet_user_errors

            quiet_user_errors()
        return _command(args)
    except TrainflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place that reports trainflow's own faults
        print(_internal_error(exc), file=sys.stderr)
        return 1


def _command(args) -> int:
    if args.command == "models":
        return _models(args)
    if args.command == "export":
        from trainflow.export import export_model

        print(json.dumps(export_model(args.model, args.format, args.output), indent=1))
        return 0
    if args.command == "predict":
        from trainflow.predictor import predict_command

        return predict_command(args.model, args.data, args.output, args.proba)
    if args.command == "server":
        return _start_server(args)
    if args.command in ("serve", "deploy", "notify-data"):
        return _orchestrate(args)
    if args.command == "schema":
        from trainflow.spec.pipeline import schema_json

        print(schema_json())
        return 0
    from trainflow.spec.pipeline import load_spec

    spec = load_spec(args.spec, args.overrides)
    if args.command == "validate":
        print(f"{args.spec}: valid pipeline spec {spec.name!r}")
        return 0
    if args.command == "task":
        ref = _run_step(args, spec)
        if args.materialize:
            from trainflow.steps import materialize

            ref = materialize(ref, Path(spec.outputs.store).resolve())
        print(ref.model_dump_json(indent=1))
        return 0
    from trainflow.runtime import run_pipeline

    if os.environ.get("PREFECT_API_URL"):
        from trainflow.deploy import require_server

        require_server()
    if args.command == "search" and spec.search is None:
        from trainflow.errors import TrainflowError

        raise TrainflowError(f"{args.spec}: no `search` section: add one, or use trainflow run")
    result = run_pipeline(spec)  # a spec with a search runs its study (flows/search.py)
    if spec.search is not None:
        summary = {k: result[k] for k in SEARCH_SUMMARY}
        if result.get("nested"):  # the outer estimate of the tuned pipeline (search.nested)
            summary["nested"] = {k: result["nested"][k] for k in NESTED_SUMMARY}
        print(json.dumps(summary, indent=1, default=str))
        return 0
    print(
        json.dumps(
            {
                "run_dir": result["run_dir"],
                "package": result["package"],
                "test": {k: v for k, v in result["test"].items() if k != "confusion_matrix"},
            },
            indent=1,
        )
    )
    return 0


def _internal_error(exc: BaseException) -> str:
    """One line for a fault of trainflow: what failed, and the traceback (printed with
    TRAINFLOW_DEBUG=1, else written to a file named here)."""
    import tempfile
    import traceback

    text = "".join(traceback.format_exception(exc))
    detail = " ".join(str(exc).split())[:300]
    line = (
        f"internal error ({type(exc).__name__}: {detail}): trainflow did not expect this "
        "failure; please report it with its traceback"
    )
    if os.environ.get("TRAINFLOW_DEBUG") == "1":
        return f"{text}{line}"
    try:
        fd, path = tempfile.mkstemp(prefix="trainflow-traceback-", suffix=".txt")
        with os.fdopen(fd, "w") as file:
            file.write(text)
    except OSError:  # a full or read-only disk: say how to see it instead
        return f"{line} (set TRAINFLOW_DEBUG=1 to print the traceback)"
    return f"{line}, written to {path} (TRAINFLOW_DEBUG=1 prints it)"


if __name__ == "__main__":
    sys.exit(main())
