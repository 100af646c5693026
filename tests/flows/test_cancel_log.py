"""A run cancelled through the server while a runner (`trainflow serve`, `flow.serve`) runs it
ends its log with the state it ends in, Cancelled, not Prefect's stale "Running()"."""

import os
import subprocess
import sys
import time

import pytest
from prefect import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL
from prefect.states import Cancelling

pytestmark = pytest.mark.slow  # a runner process, a cancellation

SERVED = """
import time

from prefect import flow, task

import trainflow.logs  # noqa: F401  (every trainflow flow module imports it)


@task
def step(i: int) -> int:
    time.sleep(1)
    return i


@flow
def long_flow() -> None:
    for i in range(600):
        step(i)


if __name__ == "__main__":
    long_flow.serve(name="cancel-me")
"""


def wait(check, what: str, timeout: float = 180):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_run_cancelled_under_its_runner_logs_that_it_finished_cancelled(prefect_engine, tmp_path):
    script = tmp_path / "served.py"
    script.write_text(SERVED)
    # (the tests' PREFECT_LOGGING_LEVEL is WARNING: these lines are INFO)
    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    with open(tmp_path / "serve.log", "w") as out:
        served = subprocess.Popen([sys.executable, str(script)], env=env, stdout=out, stderr=out)
    try:
        with get_client(sync_client=True) as client:

            def deployed():
                try:
                    return client.read_deployment_by_name("long-flow/cancel-me")
                except Exception:  # not registered yet
                    return None

            wait(deployed, "the runner to register its deployment")
            run = run_deployment("long-flow/cancel-me", timeout=0)
            wait(lambda: client.read_flow_run(run.id).state.is_running(), "the run to start")
            time.sleep(2)  # a task or two in
            client.set_flow_run_state(run.id, Cancelling())
            state = wait(
                lambda: (s := client.read_flow_run(run.id).state).is_final() and s,
                "the runner to cancel the run",
            )
            assert state.is_cancelled()

            def finished():
                logs = client.read_logs(
                    log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id]))
                )
                lines = [log.message for log in logs if log.name == "prefect.flow_runs"]
                return lines if any(m.startswith("Finished in state") for m in lines) else None

            lines = wait(finished, "the run's last log line")
    finally:
        served.terminate()
        served.wait(60)
    assert "Flow run was cancelled." in lines
    assert lines[-1] == "Finished in state Cancelled()", lines
