"""A local Prefect server that several `trainflow run` commands in a row share (the warm server).

Without PREFECT_API_URL each run used to start Prefect's ephemeral server (3 s on an idle
machine, more under load) and stop it at the end, so a fully cached rerun spent most of its
time starting a server. The warm server is the same server (Prefect's app, uvicorn, bound to
127.0.0.1, the same database in PREFECT_HOME) left running for a bounded time:

- each command holds a lease (a file naming its pid) while it uses the server;
- the server ends `idle_s` seconds after the last lease ends (TRAINFLOW_SERVER_IDLE_S, default
  600; 0 turns the warm server off: each run's server then dies with it, as before);
- a command killed without cleanup (kill -9) leaves a lease whose process is gone: when no
  other command uses the server, the server ends at once, so a killed run leaves nothing behind;
- one lock file serializes finding, starting and ending it, so two commands never start two
  servers for the same settings, and a server never ends under a command that just found it.

Servers are keyed by the Prefect settings they were started with (and Prefect's version), so a
command with other settings gets a server of its own.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

DEFAULT_IDLE_S = 600.0
TICK_S = 0.25  # how often the server looks at its leases
KILL_GRACE_S = 3.0  # an orderly shutdown that takes longer than this is cut short
APP = "prefect.server.api.server:create_app"


def idle_seconds() -> float:
    """TRAINFLOW_SERVER_IDLE_S: how long the server outlives its last command (0: not at all)."""
    return seconds_setting(
        "TRAINFLOW_SERVER_IDLE_S", DEFAULT_IDLE_S, "no warm server, each run's server ends with it"
    )


def seconds_setting(name: str, default: float, zero: str) -> float:
    """The environment variable `name` as seconds >= 0 (`default` when unset); a bad value is
    one error naming it, the value, and what 0 means (`zero`)."""
    from trainflow.errors import TrainflowError

    text = os.environ.get(name, str(default))
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise TrainflowError(f"{name} must be a number of seconds >= 0, got {text!r} (0: {zero})")
    return value


def start_time(pid: int) -> str | None:
    """The kernel's start time of process `pid` (None when gone): with the pid it names one
    process, never a later one that reuses the pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def alive(pid: int, started: str | None) -> bool:
    return started is not None and start_time(pid) == started


@contextmanager
def flocked(path: Path, blocking: bool = True):
    """An exclusive lock on the file `path` while the block runs: yields True, or False at once
    when `blocking` is off and another process holds it (the warm server's and worker's
    place of finding, starting and ending them)."""
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def live_state(path: Path) -> dict | None:
    """The JSON state at `path` while the process it names (pid and start time) runs."""
    try:
        state = json.loads(path.read_text())
        return state if alive(state["pid"], state["started"]) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


class Place:
    """The files of one warm server: its state, its lock, its leases, its log."""

    def __init__(self, home: Path, key: str):
        self.root = home / "trainflow-servers"
        self.state = self.root / f"{key}.json"
        self.lock_file = self.root / f"{key}.lock"
        self.leases = self.root / f"{key}.leases"
        self.log = self.root / f"{key}.log"

    def lock(self, blocking: bool = True):
        self.root.mkdir(parents=True, exist_ok=True)
        return flocked(self.lock_file, blocking)

    def read_state(self) -> dict | None:
        return live_state(self.state)

    def lease_states(self) -> tuple[list[Path], list[Path]]:
        """(live, dead) lease files: a dead one's command ended without removing it."""
        live: list[Path] = []
        dead: list[Path] = []
        for lease in self.leases.glob("*") if self.leases.is_dir() else []:
            pid, _, started = lease.name.partition("-")
            (live if pid.isdigit() and alive(int(pid), started) else dead).append(lease)
        return live, dead


# ---- the command's side -----------------------------------------------------------------

_KEPT: list[object] = []  # the server process we started: kept so it is never collected


def settings_key(environment: dict[str, str]) -> str:
    import prefect

    material = json.dumps([prefect.__version__, sys.executable, sorted(environment.items())])
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def server_environment() -> dict[str, str]:
    """Prefect's own environment for its ephemeral server (see SubprocessASGIServer)."""
    from prefect.settings import get_current_settings

    return {
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        **get_current_settings().to_environment_variables(exclude_unset=True),
    }


def attach(idle_s: float) -> tuple[int, int]:
    """Lease the warm server of these settings, starting it when none runs; (pid, port).
    Returns without waiting for a new server to answer (`wait_ready` does), so the caller can
    import the flow meanwhile."""
    import atexit

    from prefect.settings import get_current_settings

    environment = server_environment()
    place = Place(Path(get_current_settings().home).expanduser(), settings_key(environment))
    with place.lock():
        place.leases.mkdir(parents=True, exist_ok=True)
        lease = place.leases / f"{os.getpid()}-{start_time(os.getpid())}"
        lease.touch()  # first: a server found below sees this command before it could end
        atexit.register(lease.unlink, missing_ok=True)
        state = place.read_state() or _spawn(place, environment, idle_s)
    return state["pid"], state["port"]


def _spawn(place: Place, environment: dict[str, str], idle_s: float) -> dict:
    port = free_port()
    with open(place.log, "ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "trainflow.warmserver",
                "--factory",
                APP,
                "--port",
                str(port),
                "--idle",
                str(idle_s),
                "--state",
                str(place.state),
            ],
            env={**os.environ, **environment},
            cwd=place.root,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )  # a Ctrl-C is the command's alone
    _KEPT.append(process)
    state = {"pid": process.pid, "started": start_time(process.pid), "port": port}
    place.state.write_text(json.dumps(state))
    return state


def free_port() -> int:
    """A port of 127.0.0.1 free now (the kernel's pick). Prefect's own port finder lives in
    its server package, whose import costs the client seconds it never needs otherwise."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_ready(pid: int, port: int, timeout: float) -> str:
    """Wait until the warm server answers; its API URL, for the command to point Prefect at
    (runtime.run_pipeline), so that the client never imports Prefect's server package."""
    import httpx

    from trainflow.errors import TrainflowError

    deadline = time.monotonic() + timeout
    with httpx.Client() as client:
        while True:
            try:
                if client.get(f"http://127.0.0.1:{port}/api/health").status_code == 200:
                    return f"http://127.0.0.1:{port}/api"
            except httpx.HTTPError:
                pass
            ended = not Path(f"/proc/{pid}").exists()
            if ended or time.monotonic() > deadline:
                what = "ended" if ended else f"did not answer within {timeout:g} s"
                raise TrainflowError(
                    f"the local Prefect server (pid {pid}, port {port}) {what}; its log is "
                    f"in {Path(get_home()) / 'trainflow-servers'}; raise "
                    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS on a busy machine, or "
                    "set TRAINFLOW_SERVER_IDLE_S=0 to use a server of this run's own"
                )
            time.sleep(0.05)


def get_home() -> str:
    from prefect.settings import get_current_settings

    return str(Path(get_current_settings().home).expanduser())


# ---- the server's side ------------------------------------------------------------------


def watch(server, place: Place, idle_s: float) -> None:
    """End the server when its leases say so (see the module's docstring)."""
    last_used = time.monotonic()
    while not server.should_exit:
        time.sleep(TICK_S)
        live, dead = place.lease_states()
        if live:
            last_used = time.monotonic()
            for lease in dead:  # a killed command among others: only its lease goes
                lease.unlink(missing_ok=True)
            continue
        if not dead and time.monotonic() - last_used < idle_s:
            continue
        with place.lock(blocking=False) as locked:
            if not locked or place.lease_states()[0]:
                continue  # a command is finding or leasing it right now
            for lease in dead:
                lease.unlink(missing_ok=True)
            state = place.read_state()
            if state and state["pid"] == os.getpid():
                place.state.unlink(missing_ok=True)  # no command finds it from now on
            server.should_exit = True
    cut_short = threading.Timer(KILL_GRACE_S, os._exit, (0,))
    cut_short.daemon = True
    cut_short.start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m trainflow.warmserver")
    parser.add_argument("--factory", default=APP)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--idle", type=float, required=True)
    parser.add_argument("--state", required=True)
    args = parser.parse_args(argv)
    import uvicorn

    state = Path(args.state)
    place = Place(state.parent.parent, state.stem)
    server = uvicorn.Server(
        uvicorn.Config(
            args.factory,
            factory=True,
            host="127.0.0.1",
            port=args.port,
            log_level="error",
            lifespan="on",
        )
    )
    threading.Thread(target=watch, args=(server, place, args.idle), daemon=True).start()
    server.run()


if __name__ == "__main__":
    main()
