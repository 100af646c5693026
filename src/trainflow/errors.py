"""Errors a user can act on: each names the problem, the value and where it is."""


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
