"""A real `prefect server` on 127.0.0.1 and `trainflow serve` against it, once per session.

Both run as subprocesses with their own PREFECT_HOME, so the in-process test harness of the
flow tests is untouched; the tests talk to the server over its REST API, as the UI does.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(home: Path, api_url: str | None, **extra: str) -> dict[str, str]:
    """The environment of a child process: its own Prefect home, the test server's API."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="INFO",
        **extra,
    )
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def start(command: list[str], env: dict, cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        command,
        env=env,
        cwd=cwd,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(process: subprocess.Popen) -> None:
    """Stop a child and its own children (the server's workers, the runner's flow runs)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def wait_for(check, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Server:
    """The test server: its URLs, a REST client and the log files of the processes."""

    def __init__(self, root: Path, port: int):
        self.root = root
        self.ui = f"http://127.0.0.1:{port}"
        self.api_url = f"{self.ui}/api"
        self.http = httpx.Client(base_url=self.api_url, timeout=30)

    def healthy(self) -> bool:
        try:
            return self.http.get("/health").status_code == 200
        except httpx.HTTPError:
            return False

    def request(self, method: str, path: str, body: dict | None = None) -> httpx.Response:
        """One API call; a 503 (SQLite busy while flow runs write their states) is retried,
        as Prefect's own client does."""
        for attempt in range(8):
            response = self.http.request(method, path, json=body)
            if response.status_code != 503:
                break
            time.sleep(0.5 * (attempt + 1))
        return response

    def post(self, path: str, body: dict | None = None):
        response = self.request("POST", path, body or {})
        response.raise_for_status()
        return response.json()

    def get(self, path: str):
        response = self.request("GET", path)
        response.raise_for_status()
        return response.json()

    def deployment(self, name: str) -> dict:
        return self.get(f"/deployments/name/trainflow/{name}")

    def run(self, deployment: str, parameters: dict) -> dict:
        """Create a flow run from a deployment, as the UI's Run button does."""
        deployment_id = self.deployment(deployment)["id"]
        return self.post(
            f"/deployments/{deployment_id}/create_flow_run",
            {"parameters": parameters, "state": {"type": "SCHEDULED"}},
        )

    def flow_run(self, run_id: str) -> dict:
        return self.get(f"/flow_runs/{run_id}")

    def wait_final(self, run_id: str, timeout: float = 240) -> dict:
        def final():
            run = self.flow_run(run_id)
            return (
                run
                if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
                else None
            )

        return wait_for(final, timeout, f"flow run {run_id} to finish", interval=1.0)

    def task_runs(self, flow_run_ids: list[str]) -> list[dict]:
        return self.post(
            "/task_runs/filter",
            {"task_runs": {"flow_run_id": {"any_": flow_run_ids}}, "limit": 200},
        )

    def run_tree(self, run_id: str) -> list[str]:
        """The flow run and every subflow run below it."""
        ids, frontier = [run_id], [run_id]
        while frontier:
            children = self.post(
                "/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": frontier}}}
            )
            frontier = [c["id"] for c in children]
            ids += frontier
        return ids

    def artifacts(self, flow_run_ids: list[str]) -> list[dict]:
        return self.post(
            "/artifacts/filter",
            {"artifacts": {"flow_run_id": {"any_": flow_run_ids}}, "limit": 200},
        )


@pytest.fixture(scope="session")
def prefect_server(prefect_home):
    """`prefect server start` on 127.0.0.1 and a free port, with a fresh (migrated) database."""
    root = Path(tempfile.mkdtemp(prefix="trainflow-server-"))
    port = free_port()
    server = Server(root, port)
    process = start(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        child_env(prefect_home(root / "server-home"), None, PREFECT_UI_API_URL=server.api_url),
        root,
        root / "server.log",
    )
    try:
        wait_for(
            lambda: server.healthy() or process.poll() is not None,
            180,
            "the Prefect server to start",
        )
        assert process.poll() is None, (root / "server.log").read_text()[-3000:]
        yield server
    finally:
        stop(process)


@pytest.fixture(scope="session")
def served(prefect_server):
    """`trainflow serve --max-trainings 1` in a scratch folder: every shipped deployment."""
    workdir = prefect_server.root / "serve"
    workdir.mkdir()
    env = child_env(
        workdir / "home",
        prefect_server.api_url,
        TRAINFLOW_PIPELINES_DIR=str(ROOT / "pipelines"),
        PREFECT_RUNNER_POLL_FREQUENCY="1",
    )
    process = start(
        [str(BIN / "trainflow"), "serve", "--max-trainings", "1"],
        env,
        workdir,
        workdir / "serve.log",
    )
    try:

        def registered():
            assert process.poll() is None, (workdir / "serve.log").read_text()[-3000:]
            names = {d["name"] for d in prefect_server.post("/deployments/filter")}
            return {p.stem for p in (ROOT / "pipelines").glob("*.yaml")} <= names

        wait_for(registered, 120, "trainflow serve to register the deployments")
        time.sleep(2)  # the runner starts polling just after registering
        yield workdir
    finally:
        stop(process)
