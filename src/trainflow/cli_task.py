"""`trainflow task NAME`: one task of a pipeline run alone, bare (`.fn`), on the artifact
refs given with --input and the spec sections it reads (trainflow.registry.TASKS)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def read_ref(text: str):
    from pydantic import ValidationError

    from trainflow.artifacts import ArtifactRef
    from trainflow.errors import TrainflowError

    try:
        raw = Path(text).read_bytes() if Path(text).is_file() else text
    except OSError:  # JSON text too long to be a file name, or an unreadable file
        raw = text
    try:
        return ArtifactRef.model_validate_json(raw)
    except ValidationError as exc:
        raise TrainflowError(
            f"--input {text[:60]!r} is not an artifact ref (JSON printed by "
            f"`trainflow task`): {exc.errors()[0]['msg']}"
        ) from None


def run_step(args, spec) -> Any:
    """One task of the pipeline, bare (`.fn`), with its refs and the spec sections it reads
    (trainflow.registry.TASKS)."""
    import inspect

    from trainflow import registry
    from trainflow.errors import TrainflowError, did_you_mean

    task = registry.task(args.step)
    if task is None or task.inputs is None:
        names = [
            n
            for n in registry.task_names()
            if getattr(registry.task(n), "inputs", None) is not None
        ]
        raise TrainflowError(
            f"unknown step {args.step!r}{did_you_mean(args.step, names)} "
            f"(steps: {', '.join(names)})"
        )
    refs = [read_ref(text) for text in args.inputs]
    many = bool(task.inputs) and task.inputs[0].startswith("*")  # `*folds`: one or more
    if (many and not refs) or (not many and len(refs) != len(task.inputs)):
        count = "one or more" if many else len(task.inputs)
        raise TrainflowError(
            f"task {args.step} takes {count} --input ref(s), got "
            f"{len(refs)}" + (f" (in order: {', '.join(task.inputs)})" if task.inputs else "")
        )
    from trainflow.remote import store_folder

    fn = task.impl.fn
    kwargs: dict[str, object] = (
        {task.inputs[0][1:]: refs} if many else dict(zip(task.inputs, refs, strict=True))
    )
    for name, path in task.reads.items():
        kwargs[name] = spec_value(args, spec, path)
    given = {
        "store": str(store_folder(spec.outputs)),  # s3://: its mirror, tied to the bucket
        "seed": spec.seed,
        "fold": args.fold,
        "folds": spec.evaluate.cv.folds if spec.evaluate.cv else 5,
        "rows": spec.evaluate.cv.rows if spec.evaluate.cv else "train+validation",
    }
    takes = inspect.signature(fn).parameters
    kwargs.update({k: v for k, v in given.items() if k in takes and k not in kwargs})
    return fn(**kwargs)


def spec_value(args, spec, path: str) -> object:
    """The spec value at `path` a task reads: the chosen `data.steps` entry of its type, or
    an optional section's default when the spec leaves it out."""
    from trainflow import registry
    from trainflow.errors import TrainflowError

    if path == "data.steps":
        chosen = [(i, s) for i, s in enumerate(spec.data.steps) if s.type == args.step]
        if args.index is not None:
            chosen = [(i, s) for i, s in chosen if i == args.index]
        if not chosen:
            raise TrainflowError(
                f"the spec has no `{args.step}` step"
                + (f" at data.steps.{args.index}" if args.index is not None else "")
            )
        if len(chosen) > 1:
            at = ", ".join(str(i) for i, _ in chosen)
            raise TrainflowError(
                f"the spec has {len(chosen)} `{args.step}` steps (data.steps {at}): say which "
                f"with --index, e.g. --index {chosen[0][0]}"
            )
        return chosen[0][1]
    value = spec
    for key in path.split("."):
        value = getattr(value, key)
    if value is None and path in registry.OPTIONAL_SECTIONS:
        name, entry = next(iter(registry.OPTIONAL_SECTIONS[path].items()))
        return entry.params(type=name)
    return value
