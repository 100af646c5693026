"""No orphaned server: the ephemeral Prefect server of `trainflow run` dies with the run, even
when the run is killed with SIGKILL (no cleanup code runs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT

pytestmark = [
    pytest.mark.faults,
    pytest.mark.slow,
    pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's"
    ),
]

TRAINFLOW = Path(sys.executable).with_name("trainflow")
SERVER_APP = "prefect.server.api.server:create_app"


def environment(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
        OMP_NUM_THREADS="1",
    )
    return env


def servers_of(parent: int) -> dict[int, int]:
    """{pid: port} of the Prefect server processes whose parent is `parent` (from /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().decode().split("\0")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if ppid == parent and SERVER_APP in argv and "--port" in argv:
            found[int(entry.name)] = int(argv[argv.index("--port") + 1])
    return found


def answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


# 0: the run's own server; else the warm server it starts, which later runs may share
@pytest.mark.parametrize("idle_s", ["0", "600"], ids=["own server", "warm server"])
def test_a_killed_run_takes_its_ephemeral_server_with_it(tmp_path, idle_s, prefect_home):
    command = [
        str(TRAINFLOW),
        "run",
        str(ROOT / "pipelines" / "breast_cancer_mlp.yaml"),
        "--set",
        f"outputs.store={tmp_path / 'store'}",
        "--set",
        f"outputs.runs={tmp_path / 'runs'}",
    ]
    log = (tmp_path / "run.log").open("wb")
    env = {**environment(prefect_home(tmp_path / "home")), "TRAINFLOW_SERVER_IDLE_S": idle_s}
    run = subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    servers: dict[int, int] = {}
    try:
        deadline = time.monotonic() + 240
        while not any(answers(port) for port in servers.values()):
            assert run.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the run's server never answered"
            time.sleep(0.5)
            servers = servers_of(run.pid) or servers
        run.send_signal(signal.SIGKILL)
        run.wait(30)
        deadline = time.monotonic() + 5
        while any(answers(port) for port in servers.values()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(answers(port) for port in servers.values()), (
            f"the server of the killed run still answers on port(s) {sorted(servers.values())}"
        )
    finally:  # nothing the run started outlives the test, whatever it asserted
        for pid in servers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(run.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        run.wait(30)
        log.close()
