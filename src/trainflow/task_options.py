"""Prefect options of a pipeline's tasks from its spec: retries, timeouts, device tag, runner."""

from __future__ import annotations

import os
import socket
from typing import Any
from urllib.parse import urlparse

from prefect import Task
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import ValidationError

from trainflow import placement, registry
from trainflow.errors import TrainflowError

# Tasks that read or write files (registry.TASKS, io=True: a remote source, shards on a
# network store): a transient I/O error there deserves another try after a pause.
IO_RETRIES = (2, [2.0, 10.0])
# The data preparation tasks (polars on the CPU; `runner.data` sends them to Dask).
DATA_TASKS = frozenset({"ingest", "expect", "pool_validation", "shard", *registry.STEPS})


def retry_unless_deterministic(task: Task, task_run: Any, state: Any) -> bool:
    """Prefect's retry condition: a TrainflowError or a validation error would fail again
    with the same input, so it is never retried; anything else (I/O, network) may be."""
    try:
        state.result()
    except (TrainflowError, ValidationError, ValueError, TypeError, KeyError):
        return False
    except BaseException:  # noqa: BLE001 - every other failure is worth another try
        return True
    return True


def step(task: Task, spec: Any) -> Task:
    """The task with the options the spec declares for it (orchestration.steps.<name>), the
    default retries of I/O-bound steps, the device tag on training tasks, and, while a
    pipeline run records (trainflow.placement), the hook that records where it ran."""
    entry = registry.task(task.name)
    if entry is None:  # a flow runs a task the table does not list: options would miss it
        raise LookupError(f"task {task.name!r} is not in trainflow.registry.TASKS")
    declared = spec.orchestration.steps.get(task.name)
    retries, delays = IO_RETRIES if entry.io else (0, [0.0])
    options: dict[str, Any] = {}
    if declared is not None and declared.retries is not None:
        retries = declared.retries
    if declared is not None and declared.retry_delay_s is not None:
        delays = declared.retry_delay_s
    if retries:
        options.update(
            retries=retries,
            retry_delay_seconds=delays,
            retry_condition_fn=retry_unless_deterministic,
        )
    if declared is not None and declared.timeout_s is not None:
        options["timeout_seconds"] = declared.timeout_s
    if entry.trains and reports_to_a_server():
        options["tags"] = {*task.tags, spec.orchestration.device_tag}
    recorder = placement.recorder(task.name, entry.trains, task.name in DATA_TASKS, spec.train)
    if recorder is not None:  # a pipeline run records where each of its tasks ran
        options["on_completion"] = [*task.on_completion_hooks, recorder]
    return task.with_options(**options) if options else task


def reports_to_a_server() -> bool:
    """True when runs go to the server in PREFECT_API_URL, where a limit on the device tag can
    be set. The embedded server of `trainflow run` has none, and a tagged task pays a slot
    request there for nothing (at times a 2 s retry: see BENCHMARKS.md); nor has the warm
    local server, which the run points PREFECT_API_URL at (trainflow.runtime)."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return bool(url) and url != os.environ.get("TRAINFLOW_LOCAL_API_URL")


def cv_task_runner(spec: Any):
    """The task runner of the cross-validation subflow (and of the search's trials, and of
    the data steps with `runner.data`).

    The thread pool has one worker: each fold seeds torch's process-wide RNG, so folds must not
    interleave in threads. On Dask every worker is its own single-threaded process, and on Ray
    every task takes one CPU of a worker process of its own, so folds run in parallel and each
    still sees only its own seed.
    """
    if spec.runner.type == "thread":
        return ThreadPoolTaskRunner(max_workers=1)
    if spec.runner.type == "ray":
        return ray_task_runner(spec)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:  # pragma: no cover - a dependency of trainflow
        raise TrainflowError(
            "runner.type: dask needs the prefect-dask package (pip install prefect-dask)"
        ) from None
    if spec.runner.address:  # its workers need PREFECT_API_URL set where they run
        return DaskTaskRunner(address=spec.runner.address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": spec.runner.workers,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": None,
            "env": {"PREFECT_API_URL": api_url()},
        }
    )


def ray_task_runner(spec: Any):
    """prefect-ray's runner: the cluster at runner.address, or a local Ray it starts (and
    stops) when there is none. Ray ships tasks and results between processes with
    cloudpickle, as Dask does: our own objects in transit; results stay ArtifactRefs."""
    check_runner(spec)  # the extra is installed and the address answers, else one clear error
    from prefect_ray import RayTaskRunner

    return RayTaskRunner(address=spec.runner.address, init_kwargs=ray_init_kwargs(spec))


def ray_init_kwargs(spec: Any) -> dict[str, Any]:
    """ray.init's arguments. A local Ray: `runner.workers` CPUs on 127.0.0.1, no dashboard
    (a web server per run for nothing). Its workers report to this process's API (else each
    would start an embedded server of its own); on a cluster, only to a PREFECT_API_URL that
    is set, since this process's embedded server is out of the cluster's reach."""
    if spec.runner.address:
        from prefect.settings import get_current_settings

        url = get_current_settings().api.url
        return {"runtime_env": {"env_vars": {"PREFECT_API_URL": url}}} if url else {}
    return {
        "num_cpus": spec.runner.workers,  # a task takes one CPU (Ray's default): one per worker
        "include_dashboard": False,
        "_node_ip_address": "127.0.0.1",
        "runtime_env": {"env_vars": {"PREFECT_API_URL": api_url()}},
    }


def check_runner(spec: Any, timeout: float = 5.0) -> None:
    """The runner named in the spec must be usable before any task runs (else the run would
    train first and fail at cross-validation): Ray's extra installed, and the Dask scheduler
    or Ray cluster at runner.address answering."""
    if spec.runner.type == "ray":
        try:
            import prefect_ray  # noqa: F401
            import ray  # noqa: F401
        except ImportError:
            raise TrainflowError(
                "runner.type: ray needs Ray and prefect-ray, which are not installed: "
                "pip install 'trainflow[ray]' (or set runner.type: thread or dask)"
            ) from None
    address = spec.runner.address
    if not address:
        return
    if spec.runner.type == "ray":
        _answers(address, *_ray_host_port(address), "Ray cluster", "`ray start --head`", timeout)
    elif address.startswith(("tcp://", "tls://")):
        parsed = urlparse(address)
        _answers(
            address,
            parsed.hostname,
            parsed.port or 8786,
            "Dask scheduler",
            "`dask scheduler`",
            timeout,
        )


def _ray_host_port(address: str) -> tuple[str, int]:
    """ray://host[:port] (Ray Client, 10001 by default) or host:port (the head's GCS)."""
    if address.startswith("ray://"):
        parsed = urlparse(address)
        return parsed.hostname or "", parsed.port or 10001
    host, _, port = address.rpartition(":")
    return host, int(port)


def _answers(address: str, host, port: int, what: str, start: str, timeout: float) -> None:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        raise TrainflowError(
            f"runner.address: no {what} answers at {address} "
            f"({exc.__class__.__name__}, {timeout:g} s); start one ({start}) or "
            f"remove runner.address to use a local cluster"
        ) from None


def api_url() -> str:
    """The API this process reports to: PREFECT_API_URL, or the embedded server's address.

    Without it every Dask worker process would start an embedded server of its own (half a
    minute each) and record its task runs there, out of the UI's sight.
    """
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if url:
        return url
    server = SubprocessASGIServer()  # the embedded server of this process (one per process)
    if not server.running:
        server.start()
    return server.api_url
