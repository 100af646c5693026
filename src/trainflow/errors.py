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
    choices = [str(a) for a in allowed]
    typed = str(written)
    # two letters swapped ("trian") is the likelier slip than one changed ("trial" for it)
    swaps = {typed[:i] + typed[i + 1] + typed[i] + typed[i + 2 :] for i in range(len(typed) - 1)}
    swapped = [c for c in choices if c in swaps and c != typed]
    close = swapped[:1] or difflib.get_close_matches(typed, choices, n=1, cutoff=0.6)
    return f"; did you mean `{close[0]}`?" if close else ""
