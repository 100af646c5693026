"""The warm worker (trainflow.warmworker): a `trainflow run` after the first is run by a fork of a
process that has imported the flows already (issue 15 part 8). It prints what an in-process run
prints, dies with its command, is never used by a command of other code or settings, and ends
when idle.

Each command is a real `trainflow` process. The package runs from a copy of trainflow's sources
on PYTHONPATH, so that other edits of the tree between two commands do not change the worker's
key, and so that the test can edit a source without touching the tree.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.faults.test_server_lifetime import environment
from tests.faults.test_warm_server import servers, task_states

pytestmark = [
    pytest.mark.faults,
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork and SO_PEERCRED"),
]

TRAINFLOW = Path(sys.executable).with_name("trainflow")
SPEC = ROOT / "pipelines" / "breast_cancer_mlp.yaml"
SMALL = ("train.epochs=1", "evaluate.cv=null", "ensemble=null", "compress={}")
MISSING = "data.source={type: csv, path: missing.csv, target: label}"  # a user's mistake
UNCACHED = {"promote", "publish_report", "measure_latency"}  # run every time by design
IDLE_S = "600"  # the module's worker outlives every gap between its tests
READY_S = 300  # a busy machine imports torch, scikit-learn and Prefect slowly


@dataclass
class Warm:
    root: Path  # short: a socket's path has at most 107 bytes
    tree: Path
    home: Path
    env: dict[str, str]
    first: tuple[int, str, str] = (0, "", "")  # the in-process cold run's code, stdout, stderr
    worker: int = 0  # the pid of the worker that first run started

    @property
    def workers(self) -> Path:
        return self.root / "w"

    def log(self) -> str:
        return "".join(p.read_text() for p in sorted(self.workers.glob("*.log")))


def copy_of_trainflow(dest: Path) -> Path:
    """trainflow as installed (src/trainflow, with tasks/ and flows/ inside it), importable."""
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "src" / "trainflow", dest / "trainflow", ignore=skip)
    for package in ("tasks", "flows"):
        shutil.rmtree(dest / "trainflow" / package, ignore_errors=True)
        shutil.copytree(ROOT / package, dest / "trainflow" / package, ignore=skip)
    return dest


def command(warm: Warm, *sets: str, env: dict | None = None) -> subprocess.Popen:
    store = [f"outputs.store={warm.root / 'store'}", f"outputs.runs={warm.root / 'runs'}"]
    argv = [str(TRAINFLOW), "run", str(SPEC)]
    argv += [a for s in (*store, *SMALL, *sets) for a in ("--set", s)]
    return subprocess.Popen(
        argv,
        env={**warm.env, **(env or {})},
        cwd=warm.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=900)
    return process.returncode, out, err


def served(warm: Warm, pid: int) -> bool:
    """Whether a worker ran command `pid` (each worker logs the command's pid it serves)."""
    return f" command {pid} in child " in warm.log()


def child_of(warm: Warm, pid: int) -> int | None:
    for line in warm.log().splitlines():
        if f" command {pid} in child " in line:
            return int(line.split(" in child ")[1].split(":")[0])
    return None


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has ended; its parent reaps it


def wait_for(condition, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def ready_workers(warm: Warm) -> list[int]:
    return [int(line.split()[2][:-1]) for line in warm.log().splitlines() if " ready in " in line]


def stop_everything(warm: Warm) -> None:
    """Every worker, child and warm server of the test ends, whatever the test asserted."""
    pids = {int(w.split(":")[0]) for w in warm.log().split(" worker ")[1:]}
    pids |= {int(c.split(":")[0]) for c in warm.log().split(" in child ")[1:]}
    pids |= {s["pid"] for s in servers(warm.home)}
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"trainflow" in cmdline or b"prefect" in cmdline:  # not a pid reused since
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def warm(prefect_home):
    root = Path(tempfile.mkdtemp(prefix="tfw-"))
    tree = copy_of_trainflow(root / "tree")
    home = prefect_home(root / "home")
    env = {
        **environment(home),
        "PYTHONPATH": str(tree),
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "TRAINFLOW_SERVER_IDLE_S": IDLE_S,
        "TRAINFLOW_WORKER_IDLE_S": IDLE_S,
        "TRAINFLOW_WORKER_DIR": str(root / "w"),
    }
    setup = Warm(root, tree, home, env)
    try:
        setup.first = finish(command(setup))  # no worker yet: in-process, and starts one
        assert setup.first[0] == 0, setup.first[2][-3000:]
        wait_for(lambda: ready_workers(setup), READY_S, f"no worker got ready:\n{setup.log()}")
        setup.worker = ready_workers(setup)[0]
        yield setup
    finally:
        stop_everything(setup)
        shutil.rmtree(root, ignore_errors=True)


def test_a_rerun_is_served_by_the_worker_and_prints_what_an_in_process_run_prints(warm):
    rerun = command(warm)
    code, out, err = finish(rerun)
    assert code == 0, err[-3000:]
    assert served(warm, rerun.pid), warm.log()
    port = servers(warm.home)[0]["port"]
    states = task_states(port)
    assert states["train"] == "Cached" and states["ingest"] == "Cached", states
    assert {t for t, s in states.items() if s != "Cached"} <= UNCACHED, states

    # the fixture's first run, in-process (no worker yet), printed the same but for its folder
    assert (code, err) == (0, warm.first[2])
    assert [line for line in out.splitlines() if '"run_dir"' not in line] == [
        line for line in warm.first[1].splitlines() if '"run_dir"' not in line
    ]


def test_a_users_mistake_through_the_worker_is_one_error_line_and_exit_2(warm):
    mistake = command(warm, MISSING)
    code, out, err = finish(mistake)
    assert served(warm, mistake.pid), warm.log()
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and "missing.csv" in err, err
    here = command(warm, MISSING, env={"TRAINFLOW_WORKER_IDLE_S": "0"})
    assert finish(here) == (code, out, err)  # byte for byte


def test_a_command_killed_mid_run_leaves_no_child_and_the_rerun_completes(warm):
    run = command(warm)
    try:
        child = in_flow(warm, run)
        run.send_signal(signal.SIGKILL)
        run.wait(30)
        wait_for(lambda: not running(child), 5, f"child {child} outlived its killed command")
    finally:
        run.kill()
        run.communicate()
    rerun = command(warm)
    code, _, err = finish(rerun)
    assert code == 0, err[-3000:]
    assert served(warm, rerun.pid), warm.log()


def in_flow(warm: Warm, run: subprocess.Popen) -> int:
    """Wait until the worker's child runs command `run`'s flow (it holds the warm server's
    lease); the child's pid."""
    wait_for(lambda: child_of(warm, run.pid), 60, f"not served:\n{warm.log()}")
    child = child_of(warm, run.pid)
    leases = f"trainflow-servers/*.leases/{child}-*"
    wait_for(lambda: any(warm.home.glob(leases)), 120, "the child never leased the server")
    return child


# what an in-process run does on each (the same code runs in the child)
@pytest.mark.parametrize(
    ("signum", "code", "printed"),
    [(signal.SIGINT, 130, "interrupted\n"), (signal.SIGTERM, -signal.SIGTERM, "")],
    ids=["ctrl-c", "sigterm"],
)
def test_a_signal_to_the_command_reaches_its_child_and_ends_it_as_in_process(
    warm, signum, code, printed
):
    run = command(warm)
    try:
        child = in_flow(warm, run)
        run.send_signal(signum)
        got, out, err = finish(run)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert (got, out) == (code, "") and err.endswith(printed), err[-3000:]
    wait_for(lambda: not running(child), 5, f"child {child} outlived its command")


def test_other_settings_get_a_worker_of_their_own_which_ends_when_idle(warm):
    before = set(ready_workers(warm))
    other = {"TRAINFLOW_WORKER_IDLE_S": "3"}  # another TRAINFLOW_ variable: another key
    first = command(warm, MISSING, env=other)
    assert finish(first)[0] == 2
    assert not served(warm, first.pid), "a worker of other settings served the command"
    wait_for(lambda: set(ready_workers(warm)) - before, READY_S, "no worker for the settings")
    (worker,) = set(ready_workers(warm)) - before
    prefect = command(warm, MISSING, env={**other, "PREFECT_LOGGING_LEVEL": "ERROR"})
    assert finish(prefect)[0] == 2
    assert not served(warm, prefect.pid), "a worker of other Prefect settings served it"
    wait_for(lambda: not running(worker), 3 + 60, f"worker {worker} outlived its idle time")
    (log,) = [p for p in warm.workers.glob("*.log") if f"worker {worker}: ready" in p.read_text()]
    assert f"worker {worker}: idle: ended" in log.read_text()
    assert not log.with_suffix(".sock").exists() and not log.with_suffix(".json").exists()


def test_an_edited_source_is_not_served_by_the_old_worker_which_ends(warm):
    edited = warm.tree / "trainflow" / "errors.py"
    original = edited.read_text()
    edited.write_text(original + "\n# an edit\n")
    try:
        mistake = command(warm, MISSING)
        code, _, err = finish(mistake)
        # no command can have its key any more: it ends within seconds, not after its idle time
        wait_for(lambda: not running(warm.worker), 30, "the stale worker did not end")
    finally:
        edited.write_text(original)
    assert code == 2 and err.startswith("error: ")
    assert not served(warm, mistake.pid), "the worker of the old sources served the command"
    assert f"worker {warm.worker}: trainflow's sources or settings changed: ended" in warm.log()
