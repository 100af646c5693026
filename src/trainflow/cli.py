"""The `trainflow` command: validate, schema, run, task; server, serve, deploy, notify-data."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from trainflow.cli_parser import parser
from trainflow.cli_task import run_step

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
SEARCH_SUMMARY = ("run_dir", "study", "storage", "best_value", "trials")  # flows/search.py
NESTED_SUMMARY = ("metric", "mean", "std", "inner_mean")  # trainflow.study.nested_summary


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
    if args.command == "serve":  # its runs would not find their pipelines: refused now
        deploy.check_pipelines(entries)  # (deploy: the worker's folder decides, elsewhere)
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
    args = parser().parse_args(argv)
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
        if not args.schema_only:  # the checks `run` makes before any work (trainflow.preflight)
            from trainflow.preflight import check_data

            check_data(spec)
        what = "the spec alone; its data not read" if args.schema_only else "and its data"
        print(f"{args.spec}: valid pipeline spec {spec.name!r} ({what})")
        return 0
    if args.command == "task":
        ref = run_step(args, spec)
        if args.materialize:
            from trainflow.remote import store_folder
            from trainflow.steps import materialize

            ref = materialize(ref, store_folder(spec.outputs))
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
