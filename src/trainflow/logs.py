"""The logger and progress artifacts of the current Prefect run (plain logging when a task runs
bare with `.fn`)."""

import logging

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import get_run_context
from prefect.exceptions import MissingContextError


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("trainflow")


class Progress:
    """A progress artifact of the current Prefect run, moved as work advances; outside a run
    (a task called bare with `.fn`) it does nothing."""

    def __init__(self, key: str, description: str):
        self.id = None
        try:
            get_run_context()
        except MissingContextError:
            return
        self.id = create_progress_artifact(0.0, key=key, description=description)

    def update(self, fraction: float) -> None:
        if self.id is not None:
            update_progress_artifact(self.id, round(100 * min(max(fraction, 0.0), 1.0), 1))
