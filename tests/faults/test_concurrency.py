"""Concurrent runs on one store: two `trainflow run` started together in one folder, of one spec
or of two, both complete with the test metrics a lone run gets.

The CLI runs here are the real command in subprocesses: one pair with the embedded Prefect
server of each run and one Prefect home (the issue's case), then pairs against one real
server, with a shared or a per-process home. benchmarks/concurrent_runs.py repeats each case
(5 times by default) for the figures in RELIABILITY.md.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.faults, pytest.mark.slow]

BIN = Path(sys.executable).parent
SPEC = ROOT / "pipelines" / "breast_cancer_mlp.yaml"
# Small, but with a checkpoint every epoch: the resume folder is written all through training.
SMALL = [
    "train.epochs=30",
    "train.checkpoint_interval_s=0",
    "evaluate.cv=null",
    "ensemble=null",
    "compress.quantize=null",
    "compress.prune=null",
]
OTHER = [*SMALL, "train.lr=0.003"]  # another spec: the same data steps, another training


def command(sets: list[str]) -> list[str]:
    """`trainflow run` with the store and runs folder at their defaults: in the working folder."""
    return [str(BIN / "trainflow"), "run", str(SPEC), *(a for s in sets for a in ("--set", s))]


def environment(home: Path, api_url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
        OMP_NUM_THREADS="1",
    )
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def together(runs: list[tuple[list[str], dict, Path]], timeout: float = 600) -> list[dict]:
    """Start every (overrides, environment, working folder) run at once; the test metrics each
    printed, in order (an AssertionError with a run's log when one did not exit 0)."""
    logs = []
    for i, (_, _, folder) in enumerate(runs):
        folder.mkdir(parents=True, exist_ok=True)
        logs.append(folder / f"run{i}.log")
    started = [
        subprocess.Popen(
            command(sets),
            env=env,
            cwd=folder,
            stdout=subprocess.PIPE,
            stderr=log.open("wb"),
            text=True,
            start_new_session=True,
        )
        for (sets, env, folder), log in zip(runs, logs)
    ]
    try:
        outputs = [process.communicate(timeout=timeout)[0] for process in started]
    finally:
        for process in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    metrics = []
    for process, out, log in zip(started, outputs, logs):
        assert process.returncode == 0, f"exit {process.returncode}:\n{log.read_text()[-4000:]}"
        metrics.append(json.loads(out[out.index("{\n") : out.rindex("}") + 1])["test"])
    return metrics


class Server:
    """A real `prefect server` on 127.0.0.1 (API only), in its own process group."""

    def __init__(self, home: Path):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.api_url = f"http://127.0.0.1:{port}/api"
        home.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                str(BIN / "prefect"),
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-services",
                "--no-ui",
            ],
            env=environment(home),
            stdout=(home / "server.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 240
        while not self.healthy():
            assert self.process.poll() is None, (home / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the Prefect server did not start in 240 s"
            time.sleep(0.5)

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory, prefect_home):
    running = Server(prefect_home(tmp_path_factory.mktemp("server-home")))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def lone(server, tmp_path_factory):
    """The test metrics of each spec run alone on a store of its own (the two runs are on
    separate stores and homes, so they may as well run at the same time)."""
    root = tmp_path_factory.mktemp("lone")
    small, other = together(
        [
            (sets, environment(root / f"home-{name}", server.api_url), root / name)
            for name, sets in (("small", SMALL), ("other", OTHER))
        ]
    )
    return {"small": small, "other": other}


COMMITTERS = """
import multiprocessing, sys

def commit_rounds(root, barrier, rounds):
    from trainflow.artifacts import Store
    store = Store(root)
    for i in range(rounds):
        with store.writer("table") as staging:
            (staging / "rows.txt").write_text(f"{i}\\n" * 100)
            barrier.wait()  # both commit the same content at the same moment
            assert store.commit(staging, "table").is_valid()

if __name__ == "__main__":
    fork = multiprocessing.get_context("fork")  # before any thread of this fresh process
    barrier = fork.Barrier(2, timeout=20)  # a worker that failed breaks it for the other
    workers = [fork.Process(target=commit_rounds, args=(sys.argv[1], barrier, 500))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    sys.exit(max(worker.exitcode for worker in workers))
"""


def test_commits_of_one_artifact_at_once_all_succeed(tmp_path):
    """The store's side of it: two processes committing the same content at the same moment
    both get the artifact (the one that loses the rename finds the other's copy)."""
    done = subprocess.run(
        [sys.executable, "-c", COMMITTERS, str(tmp_path / "store")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def pair(case: str, folder: Path, api_url: str | None) -> list[tuple[list[str], dict, Path]]:
    """The two runs of a case ("one spec" or "two specs", "one home" or "a home each"), both
    working in `folder`."""
    specs = [SMALL, OTHER] if case.startswith("two specs") else [SMALL, SMALL]
    homes = (
        [folder / "home"] * 2
        if case.endswith("one home")
        else [folder / "home-a", folder / "home-b"]
    )
    return [
        (sets, environment(home, api_url), folder / "project") for sets, home in zip(specs, homes)
    ]


def expected(case: str, lone: dict) -> list[dict]:
    return [lone["small"], lone["other" if case.startswith("two specs") else "small"]]


# "one spec, a home each" runs in benchmarks/concurrent_runs.py (the suite's time is short).
@pytest.mark.parametrize("case", ["one spec, one home", "two specs, a home each"])
def test_two_runs_at_once_against_a_server(server, lone, tmp_path, case):
    assert together(pair(case, tmp_path, server.api_url)) == expected(case, lone)


def test_two_runs_of_one_spec_at_once_with_their_embedded_servers(lone, tmp_path):
    # one fresh Prefect home, as one user's runs have: both first starts migrate it at once
    case = "one spec, one home"
    assert together(pair(case, tmp_path, None)) == expected(case, lone)
