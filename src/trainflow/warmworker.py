"""A process that has imported what a run needs and runs each command in a fork of itself.

A fully cached rerun spends most of its wall time importing torch, scikit-learn and Prefect,
not running its flow (BENCHMARKS.md, "The CLI's latency"). The warm worker imports them once:

- the first `trainflow run` or `trainflow search` finds no worker, runs in its own process as
  before, and starts one in the background (a new session, its output in a log file);
- a later command connects to the worker's Unix socket, sends its argv, cwd, environment and
  its stdin/stdout/stderr; the worker forks, the child takes over those files and runs
  `trainflow.cli.main` (trainflow.warmfork): the same code as in-process, so the same output;
- the worker sends the child's pid, then its exit status; the command forwards SIGINT and
  SIGTERM to the child and exits as the child did; when the command dies (kill -9), the child
  sees its connection close and kills itself, as the killed command would have died;
- the worker ends `TRAINFLOW_WORKER_IDLE_S` after its last command (default: the warm server's
  TRAINFLOW_SERVER_IDLE_S; 0: no worker).

A worker serves only commands of its key (`worker_key`): the digest of trainflow's sources, the
interpreter, the versions of the heavy libraries, the settings files Prefect reads and every
environment variable read at import; an edited source is another key, so another worker, and the
stale one idles out. Any failure to reach or use a worker runs the command here (a message
with TRAINFLOW_DEBUG=1 only).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import struct
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from trainflow.warmserver import flocked, live_state, start_time

SERVED = ("run", "search")
# read at import (Prefect its settings), or how stdout encodes (the locale): a worker has them
KEYED_PREFIXES = ("PREFECT_", "TRAINFLOW_", "CUDA_", "PYTHON", "LC_", "LANG")
KEYED_SUFFIXES = ("_NUM_THREADS",)
VERSIONED = ("torch", "prefect", "polars", "scikit-learn", "numpy")
# files Prefect reads its settings from, besides the environment (relative: the command's cwd)
SETTINGS_FILES = (".env", "prefect.toml", "pyproject.toml")
MESSAGE_LIMIT = 1 << 20  # a request (argv, environment) larger than this is run here
REPLY_TIMEOUT_S = 10.0  # a worker that does not fork within this is not used


def idle_seconds() -> float:
    """TRAINFLOW_WORKER_IDLE_S: how long the worker outlives its last command (0: no worker;
    unset: the warm server's idle time)."""
    from trainflow.warmserver import idle_seconds as server_idle
    from trainflow.warmserver import seconds_setting

    if "TRAINFLOW_WORKER_IDLE_S" not in os.environ:
        return server_idle()
    zero = "no warm worker, each command imports what it runs"
    return seconds_setting("TRAINFLOW_WORKER_IDLE_S", 0.0, zero)


def debug(message: str) -> None:
    if os.environ.get("TRAINFLOW_DEBUG") == "1":
        print(f"trainflow: warm worker: {message}", file=sys.stderr, flush=True)


def keyed(name: str) -> bool:
    return name.startswith(KEYED_PREFIXES) or name.endswith(KEYED_SUFFIXES)


def worker_key(environ: dict[str, str] | os._Environ) -> str:
    """What a worker must share with a command to serve it, without importing any of it."""
    from importlib.metadata import PackageNotFoundError, version

    from trainflow.sourcegraph import tree_digest

    versions: list[str | None] = []
    for name in VERSIONED:
        try:
            versions.append(version(name))
        except PackageNotFoundError:
            versions.append(None)
    home = Path(environ.get("PREFECT_HOME") or "~/.prefect").expanduser()
    profiles = environ.get("PREFECT_PROFILES_PATH") or str(home / "profiles.toml")
    files: dict[str, str | None] = {}
    for name in (*SETTINGS_FILES, profiles):
        try:
            files[name] = hashlib.sha256(Path(name).expanduser().read_bytes()).hexdigest()
        except OSError:
            files[name] = None
    material = [
        tree_digest(),
        sys.executable,
        sys.version,
        versions,
        files,
        sorted((k, v) for k, v in environ.items() if keyed(k)),
    ]
    return hashlib.sha256(json.dumps(material).encode()).hexdigest()[:20]


class Place:
    """The files of one worker: its socket, state (pid), lock and log, in a 0700 folder."""

    def __init__(self, key: str):
        default = Path(tempfile.gettempdir()) / f"trainflow-workers-{os.getuid()}"
        self.root = Path(os.environ.get("TRAINFLOW_WORKER_DIR") or default)
        self.key = key
        self.socket = self.root / f"{key}.sock"
        self.state = self.root / f"{key}.json"
        self.lock_file = self.root / f"{key}.lock"
        self.log = self.root / f"{key}.log"

    def private(self) -> bool:
        """The folder exists, is ours and no one else's to read or write (made so if absent)."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = self.root.lstat()
        mine = info.st_uid == os.getuid() and (info.st_mode & 0o077) == 0
        return mine and self.root.is_dir() and not self.root.is_symlink()

    def lock(self, blocking: bool = True):
        return flocked(self.lock_file, blocking)

    def read_state(self) -> dict | None:
        return live_state(self.state)


def usable() -> bool:
    """Fork, SO_PEERCRED and fd passing are Linux's here; interpreter options (-X, -W, -O)
    that a worker started without them would not share leave the command in-process."""
    plain = not (sys._xoptions or sys.warnoptions or sys.flags.optimize or sys.flags.dev_mode)
    return sys.platform.startswith("linux") and plain


# ---- the command's side -----------------------------------------------------------------


def serve_elsewhere() -> int | None:
    """Run this command (sys.argv) in the warm worker: its exit code; None: run it here (and a
    worker is started for the next command when none runs)."""
    if not usable() or idle_seconds() <= 0:
        return None
    try:
        place = Place(worker_key(os.environ))
        if not place.private():
            debug(f"{place.root} is not a private folder of this user: not used")
            return None
        code = ask(place)
        if code is None:
            start(place, idle_seconds())
        return code
    except OSError as exc:
        debug(f"not used ({exc})")
        return None


def ask(place: Place) -> int | None:
    """Send this command to the worker; the child's exit code, or None (no worker served it)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as connection:
        try:
            connection.connect(str(place.socket))
        except (FileNotFoundError, ConnectionRefusedError):
            debug(f"none answers at {place.socket}")
            return None
        mask = os.umask(0o022)
        os.umask(mask)
        request = {
            "argv": sys.argv,
            "cwd": os.getcwd(),
            "env": dict(os.environ),
            "umask": mask,
            "path": sys.path,
            "stdio": [stdio_mode(stream) for stream in (sys.stdin, sys.stdout, sys.stderr)],
        }
        sys.stdout.flush()
        sys.stderr.flush()
        connection.settimeout(REPLY_TIMEOUT_S)
        try:
            socket.send_fds(connection, [json.dumps(request).encode()], [0, 1, 2])
            reply = connection.recv(64)  # the child's pid; empty: the worker did not serve it
        except OSError as exc:  # closing now: a child forked later sees it and ends at once
            debug(f"the worker did not answer ({exc})")
            return None
        if not reply:
            return None
        connection.settimeout(None)
        with forwarding(int(reply)):
            status = connection.recv(64)
    if not status:  # the worker ended while its child ran: the child's status is lost
        print("error: the warm worker ended during this command; run it again", file=sys.stderr)
        return 1
    return exit_like(int(status))


def stdio_mode(stream) -> list | None:
    """How the command's stream encodes and buffers, for the child to do the same."""
    if stream is None:
        return None
    return [
        getattr(stream, "encoding", None),
        getattr(stream, "errors", None),
        getattr(stream, "line_buffering", False),
    ]


@contextmanager
def forwarding(child: int):
    """A Ctrl-C or a SIGTERM of the command goes to the child that runs it."""

    def forward(signum, _frame):
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    before = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def exit_like(code: int) -> int:
    """The child's exit code; a child killed by a signal: this command dies of it too."""
    if code >= 0:
        return code
    try:
        signal.signal(-code, signal.SIG_DFL)
    except (OSError, ValueError):  # SIGKILL's action is the default already, and fixed
        pass
    os.kill(os.getpid(), -code)
    return 128 - code  # not reached for a deadly signal


_KEPT: list[object] = []  # the worker process we started: kept so it is never collected


def start(place: Place, idle_s: float) -> None:
    """Start the worker of this key in the background, unless one runs (or is starting)."""
    import subprocess

    with place.lock():
        if place.read_state():
            return
        with open(place.log, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-P", "-m", "trainflow.warmfork", place.key, str(idle_s)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # a Ctrl-C of this command is not the worker's
            )  # in this cwd and environment: Prefect reads its settings from them at import
        _KEPT.append(process)
        state = {"pid": process.pid, "started": start_time(process.pid)}
        place.state.write_text(json.dumps(state))
    debug(f"started pid {process.pid} for the next command")


def peer_uid(connection: socket.socket) -> int:
    creds = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def peer_pid(connection: socket.socket) -> int:
    creds = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[0]
