"""Running a whole pipeline the way `trainflow run` does: checks first, then the Prefect flow.

Nothing heavy is imported before the checks pass (a run that fails them answers at once), and
the local Prefect server starts while the flow's modules import (see trainflow.warmserver).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from trainflow.spec.pipeline import PipelineSpec


def run_pipeline(spec: PipelineSpec) -> dict:
    """Check the data, then run the pipeline flow (on the server in PREFECT_API_URL, if set;
    else on the warm local server, started when none runs)."""
    from trainflow.preflight import check_data

    check_data(spec)
    from trainflow.logs import quiet_user_errors  # imports Prefect: after the checks

    quiet_user_errors()
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        get_current_settings,
        temporary_settings,
    )

    from trainflow.task_options import check_runner

    check_runner(spec)
    embedded = not get_current_settings().api.url
    warm = embedded and ties_here() and _idle_seconds() > 0
    if warm:
        from trainflow import warmserver

        pid, port = warmserver.attach(_idle_seconds())
    from trainflow.flows.pipeline import pipeline  # the heavy imports, while it starts

    flow: Any = pipeline
    if spec.search is not None:  # a study of the spec's variants (flows/search.py)
        from trainflow.flows.search import search_flow

        flow = search_flow(spec)

    updates: dict = {}
    if embedded:
        if warm:  # Prefect pointed at it like any server: its server package stays unloaded
            updates[PREFECT_API_URL] = warmserver.wait_ready(pid, port, _startup_timeout())
        else:
            start_embedded_server()
        # Nothing reads crash-detection heartbeats of a local server's runs; and joining the
        # heartbeat thread costs up to 1 s per flow.
        updates[PREFECT_FLOWS_HEARTBEAT_FREQUENCY] = None
    with temporary_settings(updates=updates), api_url_in_environment(updates.get(PREFECT_API_URL)):
        state = flow(spec, return_state=True)
        if embedded:
            wait_until_recorded(state.state_details.flow_run_id)
        return state.result()


@contextmanager
def api_url_in_environment(url: str | None) -> Iterator[None]:
    """PREFECT_API_URL in the environment too while the flow runs: Prefect's service threads
    (events, logs) read their settings from it, not from the caller's settings context; and
    TRAINFLOW_LOCAL_API_URL, which says that this URL is the warm local server's."""
    if not url:
        yield
        return
    names = ("PREFECT_API_URL", "TRAINFLOW_LOCAL_API_URL")  # the second: task_options
    before = {name: os.environ.get(name) for name in names}
    os.environ.update(dict.fromkeys(names, url))
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def ties_here() -> bool:
    """A server started for a run is tied to it only from the main thread on Linux (see
    start_embedded_server); elsewhere Prefect starts its own as before."""
    main = threading.current_thread() is threading.main_thread()
    return sys.platform.startswith("linux") and main


def _idle_seconds() -> float:
    from trainflow.warmserver import idle_seconds

    return idle_seconds()


def _startup_timeout() -> float:
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    return float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())


def wait_until_recorded(flow_run_id: UUID, timeout: float = 15.0) -> bool:
    """Wait until the server has recorded a final state for every task run of the run.

    Task-run states reach the server as events a moment after the flow returns; stopping the
    embedded server before then loses them (and prints the server's shutdown errors).
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])
            )
        )
        runs = TaskRunFilter(
            flow_run_id=TaskRunFilterFlowRunId(
                any_=[flow_run_id, *(child.id for child in children)]
            )
        )
        while time.monotonic() < deadline:
            if all(
                t.state and t.state.is_final() for t in client.read_task_runs(task_run_filter=runs)
            ):
                return True
            time.sleep(0.1)
    return False


PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def start_embedded_server() -> None:
    """Start Prefect's ephemeral server now, from this thread, so that it dies with this process.

    Prefect starts it on first use as a plain child, which outlives a run killed with kill -9
    (it kept answering for minutes). This is the same server, started the way Prefect starts it,
    but its process asks the kernel for SIGKILL when this process dies (Linux). Prefect's own
    calls for the ephemeral server get this instance: it is the one registered without a port.
    The kernel signals when the *thread* that started the child ends, so only the main thread
    (`trainflow run`'s) ties it; from another thread Prefect starts it as before.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    import prefect
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    class TiedServer(SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen:
            # Prefect's command and environment for its ephemeral server, plus the tie.
            return subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "--app-dir",
                    str(prefect.__module_path__.parent),
                    "--factory",
                    "prefect.server.api.server:create_app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--log-level",
                    "error",
                    "--lifespan",
                    "on",
                ],
                env={
                    **os.environ,
                    "PREFECT_UI_ENABLED": "0",
                    "PREFECT__SERVER_EPHEMERAL": "1",
                    "PREFECT__SERVER_FINAL": "1",
                    **get_current_settings().to_environment_variables(exclude_unset=True),
                },
                preexec_fn=die_with(os.getpid()),
            )

    TiedServer().start()  # a no-op when a default server of this process already runs


def die_with(parent: int) -> Callable[[], None] | None:
    """A preexec_fn asking the kernel to SIGKILL the child when `parent` dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork: the child only calls

    def tie() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the tie was made
            os._exit(1)

    return tie
