"""The warm server: `trainflow run` commands in a row share one local Prefect server, which
shows what each run reused and ends a bounded time after the last of them (issue 15 part 8)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT
from tests.faults.test_server_lifetime import answers, environment

pytestmark = [
    pytest.mark.faults,
    pytest.mark.slow,
    pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="leases name processes by /proc"
    ),
]

TRAINFLOW = Path(sys.executable).with_name("trainflow")
SMALL = [
    "train.epochs=3",
    "evaluate.cv=null",
    "ensemble=null",
    "compress.quantize=null",
    "compress.prune=null",
]
IDLE_S = 600  # longer than a busy machine takes to start the second command


def warm_environment(home: Path) -> dict[str, str]:
    return {**environment(home), "TRAINFLOW_SERVER_IDLE_S": str(IDLE_S)}


def servers(home: Path) -> list[dict]:
    """The state of each warm server of this home that a command would find."""
    return [json.loads(p.read_text()) for p in (home / "trainflow-servers").glob("*.json")]


def run(tmp_path: Path, home: Path) -> subprocess.CompletedProcess:
    sets = [*SMALL, f"outputs.store={tmp_path / 'store'}", f"outputs.runs={tmp_path / 'runs'}"]
    spec = ROOT / "pipelines" / "breast_cancer_mlp.yaml"
    overrides = [a for s in sets for a in ("--set", s)]
    return subprocess.run(
        [str(TRAINFLOW), "run", str(spec), *overrides],
        env=warm_environment(home),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )


def task_states(port: int) -> dict[str, str]:
    """Task name -> state name of the latest pipeline run's tasks (its subflows' too), as the
    UI reads them."""
    api = f"http://127.0.0.1:{port}/api"
    flows = httpx.post(
        f"{api}/flow_runs/filter",
        json={
            "sort": "START_TIME_DESC",
            "limit": 1,
            "flows": {"name": {"any_": ["trainflow-pipeline"]}},
        },
    ).json()
    subflows = httpx.post(
        f"{api}/flow_runs/filter",
        json={"flow_runs": {"parent_flow_run_id": {"any_": [flows[0]["id"]]}}},
    ).json()  # prepare-data, the folds
    runs = httpx.post(
        f"{api}/task_runs/filter",
        json={"flow_runs": {"id": {"any_": [flows[0]["id"], *(f["id"] for f in subflows)]}}},
    ).json()
    return {r["name"].rsplit("-", 1)[0]: r["state"]["name"] for r in runs}


def wait_gone(port: int, pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not answers(port) and not Path(f"/proc/{pid}").exists():
            return True
        time.sleep(0.5)
    return False


def stop(states: list[dict]) -> None:
    for state in states:  # nothing outlives the test, whatever it asserted
        try:
            os.kill(state["pid"], 9)
        except ProcessLookupError:
            pass


def test_runs_in_a_row_share_one_server_which_shows_their_cached_tasks(tmp_path, prefect_home):
    home = prefect_home(tmp_path / "home")
    first = run(tmp_path, home)
    found = servers(home)
    try:
        assert first.returncode == 0, first.stderr[-3000:]
        assert len(found) == 1 and answers(found[0]["port"]), "no warm server after the run"
        second = run(tmp_path, home)
        assert second.returncode == 0, second.stderr[-3000:]
        assert "Starting temporary server" not in second.stderr
        assert servers(home) == found, "the second run did not reuse the first one's server"
        states = task_states(found[0]["port"])
        # the data steps at least (an edit of the engine between the runs retrains)
        assert all(states[t] == "Cached" for t in ("ingest", "clean", "split")), states
        assert answers(found[0]["port"]), "the server ended with its second run"
    finally:
        stop([*found, *servers(home)])


ATTACH = (
    "import sys, time; from trainflow import warmserver; "
    "pid, port = warmserver.attach(float(sys.argv[1])); "
    "warmserver.wait_ready(pid, port, 180); print(pid, port, flush=True); time.sleep(1)"
)


def test_commands_started_together_start_one_server_which_ends_when_idle(tmp_path):
    home = tmp_path / "home"
    env = {**warm_environment(home), "PREFECT_HOME": str(home)}
    commands = [
        subprocess.Popen(
            [sys.executable, "-c", ATTACH, "3"],
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(3)
    ]
    outputs = [c.communicate(timeout=300) for c in commands]
    found = servers(home)
    try:
        assert all(c.returncode == 0 for c in commands), [err[-2000:] for _, err in outputs]
        assert len({out for out, _ in outputs}) == 1, outputs  # one pid and port for all
        pid, port = map(int, outputs[0][0].split())
        assert wait_gone(port, pid, 3 + 30), "the server outlived its idle time"
    finally:
        stop(found)
