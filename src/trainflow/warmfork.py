"""The warm worker's own process: import what a run needs, then fork a child per command.

Started by trainflow.warmworker (`python -P -m trainflow.warmfork KEY IDLE_S`), in the first
command's cwd and environment, in a session of its own. It holds no thread and has made no
Prefect client and run no torch op when it forks (a fork copies only the forking thread, and a
lock another thread held stays locked in the child); the child sets torch's threads and talks
to Prefect as an in-process run does. One thread serves: it accepts a command, forks, and
reaps its children between accepts, so commands run side by side as separate processes.
"""

from __future__ import annotations

import gc
import importlib
import io
import json
import os
import select
import signal
import socket
import sys
import threading
import time
import warnings

from trainflow.warmworker import MESSAGE_LIMIT, Place, peer_pid, peer_uid, worker_key

TICK_S = 0.25  # how often the worker reaps its children and looks at its idle time
STALE_CHECK_S = 5.0  # how often an idle worker compares its key with the files (about 20 ms)
FLOWS = ("trainflow.cli", "trainflow.runtime", "trainflow.flows.pipeline", "trainflow.flows.search")
# imported inside the functions of a run (the report's plots); absent ones are skipped
LIBRARIES = ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg")
# optional integrations that cost seconds to import and most runs never load
SKIPPED = ("trainflow.mlflow_model", "trainflow.mlflow_log", "trainflow.warmfork")


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} worker {os.getpid()}: {message}", flush=True)


def preload() -> None:
    """The flows, every trainflow module a run may look up by name, and the libraries that
    run functions import when called."""
    from trainflow.sourcegraph import module_files

    with warnings.catch_warnings():  # an in-process run imports these itself, warning there
        warnings.simplefilter("ignore")
        for name in (*FLOWS, *sorted(module_files()), *LIBRARIES):
            if name in SKIPPED:
                continue
            try:
                importlib.import_module(name)
            except Exception as exc:  # noqa: BLE001 - an optional extra absent: a run that needs it imports it
                log(f"not preloaded: {name} ({type(exc).__name__})")


def listen(place: Place) -> socket.socket | None:
    """Bind the socket (0600) and record this process as the worker of its key; None when
    another worker of the key runs."""
    with place.lock():
        state = place.read_state()
        if state and state["pid"] != os.getpid():
            return None
        place.socket.unlink(missing_ok=True)  # a killed worker's
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        mask = os.umask(0o177)
        try:
            listener.bind(str(place.socket))
        finally:
            os.umask(mask)
        os.chmod(place.socket, 0o600)
        listener.listen(16)
        from trainflow.warmserver import start_time

        place.state.write_text(json.dumps({"pid": os.getpid(), "started": start_time(os.getpid())}))
    return listener


def serve(place: Place, listener: socket.socket, idle_s: float) -> tuple | None:
    """Serve until idle for `idle_s`; in a forked child, return what it is to run."""
    children: dict[int, socket.socket] = {}
    # a child's end wakes the loop at once (its command waits for the status), not at a tick
    woken, wake = os.pipe()
    os.set_blocking(wake, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake)
    last_used = checked = time.monotonic()
    while True:
        readable, _, _ = select.select([listener.fileno(), woken], [], [], TICK_S)
        if woken in readable:
            os.read(woken, 4096)
        if listener.fileno() in readable:
            forked = accept(listener, children)
            if forked is not None:  # the child: none of the worker's wake-up is its own
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                os.close(woken)
                os.close(wake)
                return forked
        reap(children)
        if children:
            last_used = time.monotonic()
        elif time.monotonic() - last_used >= idle_s and end(place, listener):
            log("idle: ended")
            return None
        elif time.monotonic() - checked >= STALE_CHECK_S:
            checked = time.monotonic()
            if stale(place.key) and end(place, listener):
                log("trainflow's sources or settings changed: ended")
                return None


def stale(key: str) -> bool:
    """Whether the sources or settings files changed since the worker imported them: no later
    command has its key, so it ends now rather than after its idle time."""
    from trainflow import sourcegraph

    for cached in (sourcegraph.module_files, sourcegraph.source, sourcegraph.tree_digest):
        cached.cache_clear()  # the files as they are now; the same values while unchanged
    return worker_key(os.environ) != key


def accept(listener: socket.socket, children: dict[int, socket.socket]) -> tuple | None:
    connection, _ = listener.accept()
    fds: list[int] = []
    try:
        if peer_uid(connection) != os.getuid():
            raise ValueError("a command of another user")
        connection.settimeout(5.0)
        message, fds, flags, _ = socket.recv_fds(connection, MESSAGE_LIMIT, 3)
        if flags & socket.MSG_TRUNC or len(fds) != 3:
            raise ValueError("a truncated request")
        request = json.loads(message)
        if threading.active_count() != 1:  # a fork would copy a lock another thread holds
            raise ValueError(f"{threading.active_count()} threads in the worker: not forking")
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
    except (OSError, ValueError) as exc:  # the command, sent nothing back, runs in-process
        log(f"not served: {exc}")
        for fd in fds:
            os.close(fd)
        connection.close()
        return None
    if pid == 0:
        listener.close()
        for other in children.values():
            other.close()
        return connection, request, fds
    for fd in fds:  # the command's files: the child's alone (its pipes close when it ends)
        os.close(fd)
    try:
        connection.send(str(pid).encode())
    except OSError:  # the command is gone already: its child sees that and ends
        pass
    children[pid] = connection
    log(f"command {peer_pid(connection)} in child {pid}: {' '.join(request['argv'][1:])}")
    return None


def reap(children: dict[int, socket.socket]) -> None:
    """Send each ended child's exit status to its command (negative: the signal it died of)."""
    while children:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        connection = children.pop(pid, None)
        if connection is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        log(f"child {pid} exited {code} ({usage.ru_utime + usage.ru_stime:.2f} s CPU)")
        try:
            connection.send(str(code).encode())
        except OSError:
            pass
        connection.close()


def end(place: Place, listener: socket.socket) -> bool:
    """Stop being found, unless a command holds the lock (it may be starting a worker)."""
    with place.lock(blocking=False) as locked:
        if not locked:
            return False
        state = place.read_state()
        if state and state["pid"] == os.getpid():
            place.state.unlink(missing_ok=True)
            place.socket.unlink(missing_ok=True)
        listener.close()  # a command that connected just now gets no pid: it runs in-process
    return True


# ---- the child ----------------------------------------------------------------------------


def run_child(connection: socket.socket, request: dict, fds: list[int]) -> int:
    """Become the command: its files, cwd, umask, environment, argv and sys.path; then run it."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv[:] = request["argv"]
    sys.path[:] = request["path"]
    take_stdio(request["stdio"])
    if "prefect.logging.configuration" in sys.modules:  # its console: this terminal's colours
        sys.modules["prefect.logging.configuration"].setup_logging(incremental=False)
    if "numpy" in sys.modules:  # a fresh process's global generator, not the worker's copy
        sys.modules["numpy"].random.seed()
    die_with(connection)
    from trainflow.cli import main

    return main(sys.argv[1:])


def take_stdio(modes: list) -> None:
    """Buffer sys.stdout and sys.stderr as the command's were (a terminal's line by line, a
    file's in blocks). Their encoding is the locale's, the same by the worker's key; stdin is
    the command's file under the worker's reader, which has read nothing."""
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    for stream, mode in zip((sys.stdout, sys.stderr), modes[1:], strict=True):
        if isinstance(stream, io.TextIOWrapper) and mode is not None:
            stream.reconfigure(line_buffering=mode[2], write_through=unbuffered)


def die_with(connection: socket.socket) -> None:
    """When the command ends without waiting for this child (kill -9), the child dies as the
    command did: its connection closes, and a thread waiting on it kills the child."""
    connection.settimeout(None)

    def watch() -> None:
        try:
            connection.recv(1)  # the command sends nothing more: this returns when it ends
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="trainflow-command-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    key, idle = argv if argv is not None else sys.argv[1:]
    place = Place(key)
    started = time.monotonic()
    preload()
    if worker_key(os.environ) != key:
        log("trainflow's sources changed while it imported: not serving")
        with place.lock():  # the next command starts a worker of its own key
            place.state.unlink(missing_ok=True)
        return 0
    gc.freeze()  # what the imports made stays shared with the children, page for page
    listener = listen(place)
    if listener is None:
        log("another worker serves this key")
        return 0
    log(f"ready in {time.monotonic() - started:.1f} s ({len(sys.modules)} modules)")
    forked = serve(place, listener, float(idle))
    return 0 if forked is None else run_child(*forked)


if __name__ == "__main__":
    sys.exit(main())
