"""A pipeline's champion: the model package `trainflow predict PIPELINE` scores with, and the
history of how it came to be (each run's decision, each promotion or rollback by hand).

It is a pointer in the store, `<store>/champions/<pipeline>.json`, not a content-addressed
artifact: it changes over time. Every change happens under a file lock (`<pipeline>.lock`,
so two runs finishing at once decide one after the other, each against the champion the
other left) and is one atomic replace of the file (old pointer or new, never half of one).
Packages are named relative to the store (`package/<fingerprint>`), so a store can move.
"""

from __future__ import annotations

import fcntl
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from trainflow.errors import ArtifactError, TrainflowError
from trainflow.spec.promote import LOWER_IS_BETTER, PromoteSpec
from trainflow.storage import atomic_write_text

FOLDER = "champions"
FORMAT = 1
DEFAULT_STORE = ".trainflow"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # a spec's `name` (no path in it)
Decision = Literal["promoted", "kept", "promoted by hand", "rolled back"]
CHANGES = ("promoted", "promoted by hand", "rolled back")  # decisions that set the champion


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Event(_Strict):
    """One entry of the history: what was decided about `package`, when, by which run."""

    when: str  # UTC, ISO 8601
    run: str | None  # the flow run (name and id), None for a change by hand
    package: str  # the package judged (store-relative when inside the store)
    decision: Decision
    reason: str
    metric: str | None = None
    metrics: dict[str, float] = {}  # the package's, on the run's test split
    champion_metrics: dict[str, float] | None = None  # the champion's, on the same rows
    champion: str | None  # the champion after this event


class Pointer(_Strict):
    format: int = FORMAT
    pipeline: str
    lineage: list[str] = []  # every package made champion, the current one last
    history: list[Event] = []

    @property
    def current(self) -> str | None:
        return self.lineage[-1] if self.lineage else None


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def checked_name(pipeline: str) -> str:
    if not isinstance(pipeline, str) or not NAME.match(pipeline):
        raise TrainflowError(
            f"{pipeline!r} is not a pipeline name (letters, digits, '_', '.', "
            "'-'; the `name` of a pipeline spec)"
        )
    return pipeline


def store_for(pipeline: str, store: str | Path | None = None) -> Path:
    """The store that holds `pipeline`'s champion: `store` when given; else the
    `outputs.store` of `<pipelines dir>/<pipeline>.yaml` ($TRAINFLOW_PIPELINES_DIR, else
    ./pipelines), relative to the working folder as `trainflow run` reads it; else
    ./.trainflow, the default store."""
    if store is not None:
        return Path(store).resolve()
    from trainflow.deploy import pipelines_dir  # light: no flow is imported
    from trainflow.spec.loading import load_raw

    spec = pipelines_dir() / f"{checked_name(pipeline)}.yaml"
    declared, mirror = DEFAULT_STORE, None
    if spec.is_file():
        outputs = load_raw(spec).get("outputs")
        if isinstance(outputs, dict) and isinstance(outputs.get("store"), str):
            declared, mirror = outputs["store"], outputs.get("mirror")
    from trainflow.remote import local_folder  # an s3:// store: its local mirror

    return local_folder(declared, mirror if isinstance(mirror, str) else None)


def pointer_file(store: Path, pipeline: str) -> Path:
    return Path(store) / FOLDER / f"{checked_name(pipeline)}.json"


def read_pointer(store: Path, pipeline: str) -> Pointer | None:
    """The pipeline's pointer, or None when it has never had a champion."""
    file = pointer_file(store, pipeline)
    if not file.is_file():
        return None
    try:
        pointer = Pointer.model_validate_json(file.read_bytes())
    except (OSError, ValidationError) as exc:
        raise ArtifactError(
            f"{file} is not a trainflow champion pointer ({exc}); restore it "
            "from a backup, or remove it (the next run becomes the champion)"
        ) from None
    if pointer.format > FORMAT or pointer.pipeline != pipeline:
        raise ArtifactError(
            f"{file} holds the champion of {pointer.pipeline!r} (format "
            f"{pointer.format}), not of {pipeline!r} in format {FORMAT}"
        )
    return pointer


def write_pointer(store: Path, pointer: Pointer) -> None:
    atomic_write_text(
        pointer_file(store, pointer.pipeline), pointer.model_dump_json(indent=1) + "\n"
    )


@contextmanager
def locked(store: Path, pipeline: str) -> Iterator[Pointer]:
    """Hold the pipeline's champion lock; yield its pointer (an empty one before the first
    champion). Changes are written with `write_pointer` inside the block."""
    folder = Path(store) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{checked_name(pipeline)}.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield read_pointer(store, pipeline) or Pointer(pipeline=pipeline)


def named(store: Path, package: str | Path) -> str:
    """How a pointer names a package: relative to the store when inside it."""
    path = Path(package).resolve()
    return (
        path.relative_to(Path(store).resolve()).as_posix()
        if path.is_relative_to(Path(store).resolve())
        else str(path)
    )


def located(store: Path, name: str) -> Path:
    return Path(name) if Path(name).is_absolute() else Path(store) / name


def champion_package(pipeline: str, store: str | Path | None = None) -> Path:
    """The folder of `pipeline`'s champion package; a clear error when it has none."""
    root = store_for(pipeline, store)
    pointer = read_pointer(root, pipeline)
    if pointer is None or pointer.current is None:
        raise TrainflowError(
            f"pipeline {pipeline!r} has no champion yet (no {pointer_file(root, pipeline)}): "
            f"run it (`trainflow run pipelines/{pipeline}.yaml`: its first run becomes the "
            f"champion), or make a package the champion with `trainflow models promote "
            f"{pipeline} PACKAGE`; or pass a package folder instead of a pipeline name"
        )
    return located(root, pointer.current)


def judge(
    rule: PromoteSpec, challenger: dict[str, float], champion: dict[str, float] | None
) -> tuple[bool, str]:
    """Whether the challenger becomes the champion under `rule`, and why."""
    metric = rule.metric
    if champion is None:
        return True, "the first model of this pipeline: there is no champion yet"
    new, old = challenger[metric], champion[metric]
    lower = metric in LOWER_IS_BETTER
    gain = old - new if lower else new - old
    side = f"{metric} {new:.4f} against the champion's {old:.4f} on the same test rows"
    better = "lower" if lower else "higher"
    if gain > rule.min_delta:
        return True, f"{side}: {gain:.4f} {better}, more than min_delta {rule.min_delta:g}"
    return False, (
        f"{side}: {'not ' if gain <= 0 else ''}{better}"
        + (f" by {gain:.4f}" if gain > 0 else "")
        + f"; a challenger must be more than min_delta {rule.min_delta:g} "
        f"{better} to replace the champion"
    )


def decide(store: Path, pointer: Pointer, event: Event) -> Event:
    """Append `event` to the history (setting the champion if it was promoted) and write the
    pointer; call it inside `locked`."""
    if event.decision in CHANGES and event.decision != "rolled back":
        pointer.lineage.append(event.package)
    event = event.model_copy(update={"champion": pointer.current})
    pointer.history.append(event)
    write_pointer(store, pointer)
    return event


def promote_by_hand(pipeline: str, package: str | Path, store: str | Path | None = None) -> Event:
    """Make a package of this pipeline its champion (`trainflow models promote`)."""
    from trainflow.package import load_package

    root = store_for(pipeline, store)
    found = load_package(package)
    if found.info.pipeline != pipeline:
        raise TrainflowError(
            f"{found.path} is a package of pipeline {found.info.pipeline!r}, not of "
            f"{pipeline!r}: a champion must come from its own pipeline (for that one: "
            f"`trainflow models promote {found.info.pipeline} {package}`)"
        )
    from trainflow.artifacts import Store

    Store(root)  # a marked store of trainflow's (created if missing) before writing into it
    with locked(root, pipeline) as pointer:
        name = named(root, found.path)
        if pointer.current == name:
            raise TrainflowError(f"{found.path} is already the champion of {pipeline!r}")
        return decide(
            root,
            pointer,
            Event(
                when=now(),
                run=None,
                package=name,
                decision="promoted by hand",
                reason="made the champion by hand (`trainflow models promote`)",
                metrics=numbers(found.info.metrics),
                champion=None,
            ),
        )


def rollback(pipeline: str, store: str | Path | None = None) -> Event:
    """Make the champion before the current one the champion again."""
    from trainflow.package import load_package

    root = store_for(pipeline, store)
    if read_pointer(root, pipeline) is None:
        champion_package(pipeline, root)  # raises: no champion yet
    with locked(root, pipeline) as pointer:
        if len(pointer.lineage) < 2:
            raise TrainflowError(
                f"pipeline {pipeline!r} has no previous champion to roll back to: "
                f"{pointer.current or 'none'} is the first champion it had, earlier "
                f"rollbacks counted (see `trainflow models list {pipeline}`)"
            )
        previous = pointer.lineage[-2]
        load_package(located(root, previous))  # intact before it serves again
        replaced = pointer.lineage.pop()
        return decide(
            root,
            pointer,
            Event(
                when=now(),
                run=None,
                package=previous,
                decision="rolled back",
                reason=f"rolled back by hand from {replaced} (`trainflow models rollback`)",
                champion=None,
            ),
        )


def numbers(metrics: dict[str, Any]) -> dict[str, float]:
    """The scalar figures of a metrics dict (no confusion matrix, no tables)."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def history_lines(pipeline: str, store: str | Path | None = None) -> list[str]:
    """`trainflow models list`: the champion and the history, newest last, the event that
    made the current champion marked `*`."""
    root = store_for(pipeline, store)
    pointer = read_pointer(root, pipeline)
    if pointer is None:
        return [
            f"pipeline {pipeline!r} has no champion yet in {root} (its first run "
            "becomes the champion)"
        ]
    made = max(
        (
            i
            for i, e in enumerate(pointer.history)
            if e.decision in CHANGES and e.package == pointer.current
        ),
        default=None,
    )
    lines = [
        f"champion of {pipeline}: {located(root, pointer.current)}"
        if pointer.current
        else f"{pipeline} has no champion",
        f"store: {root}",
        "",
    ]
    for i, e in enumerate(pointer.history):
        figure = f" {e.metric}={e.metrics[e.metric]:.4f}" if e.metric in e.metrics else ""
        against = (
            f" (champion {e.champion_metrics[e.metric]:.4f})"
            if e.champion_metrics and e.metric in e.champion_metrics
            else ""
        )
        lines.append(
            f"{'*' if i == made else ' '} {e.when}  {e.decision:<16} {e.package}"
            f"{figure}{against}  run={e.run or '-'}  {e.reason}"
        )
    return lines
