"""Deployments of the shipped pipelines: UI parameters -> spec, deploy/prefect.yaml -> Prefect.

A run started from the Prefect UI names a pipeline and may change its main knobs; both are
untrusted input. The pipeline is a file name confined to the pipelines folder, and the knobs
become `--set` overrides that go through the same validation as the command line, so a bad
value fails the run, naming its YAML path, before any task runs.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from trainflow.errors import SpecError, TrainflowError, did_you_mean

PIPELINES_ENV = "TRAINFLOW_PIPELINES_DIR"
PREFECT_YAML = Path(__file__).resolve().parents[2] / "deploy" / "prefect.yaml"
NEW_DATA_EVENT = "trainflow.data.new"
# The main knobs of the run form: parameter -> the spec value it sets.
KNOBS = {
    "epochs": "train.epochs",
    "lr": "train.lr",
    "batch_size": "train.batch_size",
    "cv_folds": "evaluate.cv.folds",
}
# What a UI override may set is decided by the schema (trainflow.spec.settable): numbers,
# switches and choices only; every path, address or other free text stays as the spec file on
# the worker says (outputs, data sources, cache dirs, pretrained weights, the Dask scheduler).
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def pipelines_dir() -> Path:
    """Where deployment runs look up pipelines: $TRAINFLOW_PIPELINES_DIR, else ./pipelines."""
    return Path(os.environ.get(PIPELINES_ENV) or Path.cwd() / "pipelines").resolve()


def pipeline_resource(name: str) -> str:
    """The event resource id of a pipeline (what a "new data" trigger matches)."""
    return f"trainflow.pipeline.{name}"


def spec_file(pipeline: str) -> Path:
    """The spec file a `pipeline` parameter names: `<pipelines dir>/<pipeline>.yaml` only."""
    folder = pipelines_dir()
    shipped = sorted(p.stem for p in folder.glob("*.yaml"))
    name = str(pipeline).removesuffix(".yaml")
    path = (folder / f"{name}.yaml").resolve() if NAME.match(name) else None
    if path is None or path.parent != folder or not path.is_file():
        raise SpecError(
            "parameters",
            [
                (
                    "pipeline",
                    f"no pipeline {pipeline!r} in {folder} (set "
                    f"{PIPELINES_ENV} to use another folder); pipelines: "
                    f"{', '.join(shipped) or '(none)'}"
                    f"{did_you_mean(name, shipped)}",
                )
            ],
        )
    return path


def parameter_overrides(knobs: dict[str, Any], overrides: list[str]) -> list[str]:
    """The `key.path=value` overrides of a run's parameters, checked before the spec is read:
    each key parsed as `--set` parses it, and allowed only where the schema holds no text."""
    from trainflow.spec.pipeline import PipelineSpec, parse_assignment
    from trainflow.spec.settable import refusal

    problems, set_keys = [], set()
    for i, assignment in enumerate(overrides):
        try:
            keys, value = parse_assignment(assignment)
        except ValueError as exc:
            problems.append((f"overrides.{i}", str(exc)))
            continue
        set_keys.add(".".join(keys))
        why = refusal(keys, PipelineSpec, value)
        if why:
            problems.append((f"overrides.{i}", why))
    result = list(overrides)
    for knob, path in KNOBS.items():
        value = knobs.get(knob)
        if value is None:
            continue
        if path in set_keys:
            problems.append((knob, f"{knob} and overrides both set {path}; keep one"))
        result.append(f"{path}={json.dumps(value)}")
    if problems:
        raise SpecError("parameters", problems)
    return result


def spec_from_parameters(pipeline: str, knobs: dict[str, Any], overrides: list[str]):
    """Load the named pipeline with the run's knobs and overrides applied, all validated."""
    from trainflow.spec.pipeline import load_spec

    path = spec_file(pipeline)
    assignments = parameter_overrides(knobs, overrides)
    try:
        return load_spec(path, assignments)
    except SpecError as exc:
        names = {p: k for k, p in KNOBS.items()}
        problems = [
            (f"{where} (parameter {names[where]})" if where in names else where, why)
            for where, why in exc.problems
        ]
        raise SpecError(f"pipeline {path.stem} with the run's parameters", problems) from None


# ---- deploy/prefect.yaml ---------------------------------------------------------------------


def read_deployments(path: Path = PREFECT_YAML) -> list[dict]:
    """The deployments of a prefect.yaml, each schedule checked (cron and timezone)."""
    from prefect.client.schemas.schedules import CronSchedule

    if not path.is_file():
        raise TrainflowError(f"{path}: deployments file not found")
    entries = (yaml.safe_load(path.read_text()) or {}).get("deployments") or []
    problems = []
    for i, entry in enumerate(entries):
        for j, schedule in enumerate(entry.get("schedules") or []):
            try:
                CronSchedule(cron=schedule.get("cron"), timezone=schedule.get("timezone"))
            except ValidationError as exc:
                for error in exc.errors():
                    field = error["loc"][0] if error["loc"] else "cron"
                    problems.append(
                        (
                            f"deployments.{i} ({entry.get('name')}).schedules.{j}.{field}",
                            error["msg"].removeprefix("Value error, "),
                        )
                    )
    if problems:
        raise SpecError(str(path), problems)
    return entries


def check_pipelines(entries: list[dict]) -> None:
    """Every deployment's pipeline is a spec file where its runs will look for it (the
    pipelines folder of the folder serve or the worker starts in): else each run would fail,
    one by one, long after `serve` said it was serving them."""
    folder = pipelines_dir()
    missing = sorted(
        {
            str(entry["parameters"]["pipeline"])
            for entry in entries
            if "pipeline" in (entry.get("parameters") or {})
            and not (folder / f"{entry['parameters']['pipeline']}.yaml").is_file()
        }
    )
    if missing:
        raise TrainflowError(
            f"the deployments run pipelines whose spec files are not in {folder}: "
            f"{', '.join(missing)}. Start trainflow from the folder holding pipelines/ (the "
            f"repository root), or set {PIPELINES_ENV} to the folder of the pipelines"
        )


def runner_deployment(entry: dict):
    """A RunnerDeployment (what `serve` and `deploy` take) from one prefect.yaml entry."""
    from prefect.events import DeploymentEventTrigger
    from prefect.flows import load_flow_from_entrypoint
    from prefect.schedules import Cron
    from prefect.types.entrypoint import EntrypointType
    from prefect.utilities.callables import ParameterSchema

    from trainflow.run_form import form_schema

    flow = load_flow_from_entrypoint(entry["entrypoint"])
    triggers = [
        DeploymentEventTrigger(**{k: v for k, v in t.items() if k != "type"})
        for t in entry.get("triggers") or []
    ]
    # the zone in the schedule's name and the deployment's description: the UI's schedule card
    # leaves it out, and shows the next run in the browser's zone, unlabelled
    schedules = [
        Cron(
            s["cron"],
            timezone=s.get("timezone"),
            active=s.get("active", True),
            slug=f"{s['cron']} ({s.get('timezone') or 'UTC'})",
        )
        for s in entry.get("schedules") or []
    ]
    zones = [f"{s['cron']} in {s.get('timezone') or 'UTC'}" for s in entry.get("schedules") or []]
    description = entry.get("description") or ""
    if zones:
        description += f" · schedule: {', '.join(zones)} (the UI shows next runs in your time)"
    deployment = flow.to_deployment(
        name=entry["name"],
        description=description or None,
        tags=entry.get("tags"),
        parameters=entry.get("parameters"),
        schedules=schedules,
        triggers=triggers,
        entrypoint_type=EntrypointType.MODULE_PATH,
        concurrency_limit=entry.get("concurrency_limit"),
    )
    pipeline = (entry.get("parameters") or {}).get("pipeline")
    if pipeline is not None:  # the UI's run form: typed, its pipeline's defaults, fixed to it
        deployment._parameter_openapi_schema = ParameterSchema(
            **form_schema(
                deployment._parameter_openapi_schema.model_dump(), pipeline, _spec_or_none(pipeline)
            )
        )
    return deployment


def _spec_or_none(pipeline: str) -> Any:
    """The pipeline's spec as this process finds it, or None where it does not."""
    from trainflow.spec.pipeline import load_spec

    try:
        return load_spec(spec_file(pipeline))
    except SpecError:
        return None


# ---- the server ------------------------------------------------------------------------------


def require_server() -> str:
    """The URL in PREFECT_API_URL, checked to answer; a clear error if unset or unreachable."""
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    start = (
        "start one with `trainflow server` (UI and API on http://127.0.0.1:4200) and "
        "export PREFECT_API_URL=http://127.0.0.1:4200/api"
    )
    if not url:
        raise TrainflowError(
            f"PREFECT_API_URL is not set, so there is no server to talk to: {start}"
        )
    with get_client(sync_client=True) as client:
        error = client.api_healthcheck()
    if error is not None:
        raise TrainflowError(
            f"cannot reach the Prefect server at PREFECT_API_URL={url} "
            f"({type(error).__name__}): {start}, or correct PREFECT_API_URL"
        )
    return url


def limit_trainings(tag: str, limit: int) -> None:
    """At most `limit` task runs tagged `tag` (the training tasks) run at once, server-wide."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(f"tag:{tag}", limit)


def deploy_all(path: Path = PREFECT_YAML, work_pool: str | None = None) -> list[str]:
    """Register every deployment of prefect.yaml (with schedules and triggers) for a process
    work pool, created if missing; a `prefect worker start --pool POOL` then runs them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    entries = read_deployments(path)
    names = []
    for entry in entries:
        pool = work_pool or entry.get("work_pool", {}).get("name") or "trainflow-process"
        with get_client(sync_client=True) as client:
            try:
                client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            except ObjectAlreadyExists:
                pass
        deployment = runner_deployment(entry)
        deployment.apply(work_pool_name=pool)
        names.append(f"{deployment.flow_name}/{deployment.name}")
    return names


def serve_all(path: Path = PREFECT_YAML, limit: int | None = None) -> None:
    """Serve every deployment of prefect.yaml from this process, schedules and triggers on."""
    from prefect import serve

    deployments = [runner_deployment(entry) for entry in read_deployments(path)]
    serve(*deployments, limit=limit, print_starting_message=True)


def notify_data(pipeline: str, note: str | None = None) -> str:
    """Emit the "new data" event of a pipeline (its deployment trigger starts a retraining)."""
    import asyncio

    from prefect.events import Event
    from prefect.events.clients import get_events_client

    event = Event(
        event=NEW_DATA_EVENT,
        resource={
            "prefect.resource.id": pipeline_resource(pipeline),
            "prefect.resource.name": pipeline,
        },
        payload={"note": note} if note else {},
    )

    async def send() -> None:
        async with get_events_client() as client:
            await client.emit(event)

    asyncio.run(send())
    return str(event.id)
