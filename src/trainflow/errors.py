"""Errors a user can act on: each names the problem, the value and where it is."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TrainflowError(Exception):
    """A user-facing error: the CLI prints its message without a traceback."""


class SpecError(TrainflowError):
    """One or more problems in a pipeline spec, each with its YAML path."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {len(problems)} problem(s) in the pipeline spec"]
        lines += [f"  - {path}: {message}" for path, message in problems]
        super().__init__("\n".join(lines))


class DataError(TrainflowError):
    """Input data that cannot be used as declared (missing file, column, bad values)."""


class ArtifactError(TrainflowError):
    """A stored artifact (shard, checkpoint, table) is missing or does not match its manifest."""


def did_you_mean(written: object, allowed: Iterable[object]) -> str:
    """ "; did you mean `epochs`?" when one of `allowed` is close to what was written, else ""
    (for messages that list the allowed values: the closest is the likely typo's fix)."""
    choices = {str(a): a for a in allowed}
    close = difflib.get_close_matches(str(written), list(choices), n=1, cutoff=0.6)
    return f"; did you mean `{close[0]}`?" if close else ""
