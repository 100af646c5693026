"""The logger and progress artifacts of the current Prefect run (plain logging when a task runs
bare with `.fn`), Prefect's logs of a user's mistake cut to one line, the failed state that
names the step it stopped at, and a cancelled run ending in the state it ended in."""

import logging
import re
import time
from collections.abc import Callable
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import ProgressArtifact, update_progress_artifact
from prefect.context import FlowRunContext, get_run_context
from prefect.exceptions import MissingContextError
from prefect.runtime import flow_run
from prefect.states import Failed, State

from trainflow.errors import TrainflowError

# The loggers of Prefect's task and flow engines: they log a failed run with its traceback.
PREFECT_RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")
MAX_LINE = 2000
FAILED_STATE = re.compile(
    r"^Finished in state Failed\(.*encountered an exception:? (\w+):", re.DOTALL
)


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("trainflow")


def _error_names() -> set[str]:
    names, todo = set(), [TrainflowError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return names


class OneLineUserErrors(logging.Filter):
    """A TrainflowError is the user's to fix, and its message says how: Prefect logs it once,
    as one line without a traceback (where it was raised), not again for every flow it
    passes through; the `Finished in state Failed(...)` lines name its type only. Every other
    exception keeps Prefect's full logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, TrainflowError):
            if getattr(exc, "_trainflow_logged", False):
                return False  # a flow re-raising what a task has already logged
            exc._trainflow_logged = True
            text = one_line(exc)
            run = "Task run" if record.name.endswith("task_runs") else "Flow run"
            if run == "Task run":  # the step it stopped at, for the run's state (failed_run)
                exc._trainflow_step = getattr(record, "task_name", None)
            record.msg, record.args = f"{run} failed: {type(exc).__name__}: {text}", ()
            record.exc_info, record.exc_text = None, None
            return True
        if isinstance(record.msg, str) and record.msg.startswith("Finished in state Failed("):
            found = FAILED_STATE.match(record.getMessage())
            if found and found.group(1) in _error_names():
                record.msg, record.args = f"Finished in state Failed ({found.group(1)})", ()
        return True


class CancelledNotRunning(logging.Filter):
    """A run cancelled by the runner that started it (`trainflow serve`, a worker) logs
    "Flow run was cancelled." and then "Finished in state Running()": the runner owns the
    Cancelled state, so Prefect's flow engine leaves its own copy at Running and logs that
    (prefect/flow_engine.py, handle_cancellation and the `finally` after it; Prefect 3.9).
    The run is Cancelled on the server; its last line says so."""

    def __init__(self) -> None:
        super().__init__()
        self.cancelled: set[str] = set()  # flow run ids between those two lines

    def filter(self, record: logging.LogRecord) -> bool:
        run = getattr(record, "flow_run_id", None)
        if record.msg == "Flow run was cancelled.":
            self.cancelled.add(run)
        elif run in self.cancelled and str(record.msg).startswith("Finished in state "):
            self.cancelled.discard(run)
            if str(record.msg).startswith(STALE_STATES):
                record.msg, record.args = "Finished in state Cancelled()", ()
        return True


def one_line(exc: BaseException) -> str:
    """The exception's message on one line, cut at MAX_LINE characters."""
    text = " ".join(str(exc).split())
    return text if len(text) <= MAX_LINE else f"{text[:MAX_LINE]}..."


def failure_line(exc: TrainflowError) -> str:
    """ "normalize failed: <its message>": the step a user's mistake stopped the run at
    (wherever it ran: a task of this run, of a subflow, on a Dask worker), else the message.
    The task's failure line noted the step on the exception (OneLineUserErrors): Prefect
    tells which task failed there and nowhere the calling flow can read it back."""
    step = getattr(exc, "_trainflow_step", None)
    return f"{step} failed: {one_line(exc)}" if step else one_line(exc)


def log_user_error(exc: TrainflowError) -> None:
    """Log a user's mistake on the current run as its one error line (its message as written,
    problems one per line); Prefect's own record of it is then dropped (OneLineUserErrors)."""
    get_run_logger().error("%s", exc)
    exc._trainflow_logged = True  # type: ignore[attr-defined]


def failed_run(exc: TrainflowError) -> State:
    """The state a flow returns for a user's mistake: the runs list shows its message, the
    run's last log line ("Finished in state Failed('normalize failed: ...')") is it, and
    no traceback is logged. A caller of the flow still gets `exc` raised (the state's data)."""
    return Failed(message=failure_line(exc), data=exc)


STALE_STATES = tuple(f"Finished in state {name}(" for name in ("Running", "Cancelling"))
RUN_LOG_FILTERS = (OneLineUserErrors, CancelledNotRunning)


def quiet_user_errors() -> None:
    """Install RUN_LOG_FILTERS on Prefect's run loggers (once per process)."""
    for name in PREFECT_RUN_LOGGERS:
        logger = logging.getLogger(name)
        for kind in RUN_LOG_FILTERS:
            if not any(isinstance(f, kind) for f in logger.filters):
                logger.addFilter(kind())


# Installed on import as well: every process that runs trainflow's tasks imports this module
# (Dask workers included), and not all of them start from the CLI.
quiet_user_errors()


def calling_run(subflow: str) -> UUID | None:
    """The flow run that called the current flow run when that is the subflow named
    `subflow` (the run a user watches, where its progress belongs); None elsewhere."""
    context = FlowRunContext.get()
    if context is None or context.flow is None or context.flow.name != subflow:
        return None
    parent = flow_run.parent_flow_run_id  # (read from the API: the subflow's parent task)
    return UUID(str(parent)) if parent else None


class Progress:
    """A progress artifact of the current Prefect run, moved as work advances; outside a run
    (a task called bare with `.fn`) it does nothing.

    Each update is an "artifact updated" event in the UI's feed, so updates are throttled: one
    goes out when the work has moved STEP (5 points) and EVERY_S seconds have passed since the
    last, and always at 100 %. A run of any length sends at most 21 (one per 5 %, however
    slow), a short one two or three (however many epochs it has). `clock` is for tests;
    `flow_run` puts the artifact on another flow run than the current one (a subflow's
    progress on the run a user watches)."""

    STEP, EVERY_S = 5.0, 10.0

    def __init__(
        self,
        key: str,
        description: str,
        clock: Callable[[], float] = time.monotonic,
        flow_run: UUID | None = None,
    ) -> None:
        self.id, self.clock, self.sent = None, clock, 0  # sent: the updates that went out
        self.shown, self.shown_at = 0.0, clock()
        try:
            get_run_context()
        except MissingContextError:
            return
        made = ProgressArtifact(
            progress=0.0, key=key, description=description, flow_run_id=flow_run
        )  # flow_run None: the current run's
        self.id = made.create(_sync=True).id  # type: ignore[call-arg]  (Prefect's sync call)

    def update(self, fraction: float) -> None:
        percent = round(100 * min(max(fraction, 0.0), 1.0), 1)
        if self.id is None or not self._due(percent):
            return
        update_progress_artifact(self.id, percent)
        self.shown, self.shown_at, self.sent = percent, self.clock(), self.sent + 1

    def _due(self, percent: float) -> bool:
        if percent >= 100.0:
            return self.shown < 100.0
        return percent - self.shown >= self.STEP and self.clock() - self.shown_at >= self.EVERY_S
