"""Checks on the data that a spec can make before any task runs."""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from importlib import metadata
from pathlib import Path

import polars as pl

from trainflow.engine.checks import check_model_and_training
from trainflow.errors import DataError, SpecError
from trainflow.feature_check import check_text_features
from trainflow.readers import check_file, read_labels
from trainflow.regression_target import (  # noqa: F401 (MAX_DECIMAL_CLASSES: its old home)
    MAX_DECIMAL_CLASSES,
    decide_task,
    load_for_task,
    source_task,
)
from trainflow.remote import store_folder
from trainflow.sourcegraph import tree_digest
from trainflow.spec.ensemble import ensemble_problems
from trainflow.spec.pipeline import PipelineSpec
from trainflow.spec.sources import FileSource, SequenceSource
from trainflow.spec.task import task_problems

LISTED = 5  # classes or values named in a message; the rest are counted
# Passed checks, per machine (TRAINFLOW_PREFLIGHT_CACHE moves them), beside the compute probe's.
VERDICTS = Path(
    os.environ.get("TRAINFLOW_PREFLIGHT_CACHE")
    or Path.home() / ".cache" / "trainflow" / "preflight"
)
CHECKED_WITH = ("polars", "numpy", "scikit-learn", "torch", "albumentations", "pyarrow")


def check_data(spec: PipelineSpec) -> None:
    """Raise DataError when the source, its target or its class counts cannot work, and
    TrainflowError when the model and training knobs cannot work together.

    A spec that passed on this very data and code passes again without the checks (see
    `verdict_key`): they load the data (for scikit-learn's tables, scikit-learn itself) and
    build the model (torch), seconds a rerun need not spend before its cached tasks."""
    store_folder(spec.outputs)  # an s3:// store's bucket answers (and accepts us) first
    key = verdict_key(spec)
    verdict = VERDICTS / f"{key}.json" if key else None
    if verdict is not None and verdict.is_file():
        return
    _check_data(spec)
    if verdict is not None:
        _remember(verdict)


def verdict_key(spec: PipelineSpec) -> str | None:
    """What the checks' verdict depends on: the whole spec, the data's files (path, size,
    modification time, inode: the checks read them whole otherwise), the versions of the
    libraries that read the data and build the model, and trainflow's own sources (any
    edit: checked again). None for a folder of images (a stat per file is a read)."""
    paths: list[Path] = getattr(spec.data.source, "content_paths", list)()
    files = []
    for path in paths:
        try:
            info = Path(path).stat()
        except OSError:
            return None  # missing: the checks name it
        if not Path(path).is_file():
            return None
        files.append([str(Path(path).resolve()), info.st_size, info.st_mtime_ns, info.st_ino])
    material = {
        "spec": spec.model_dump(mode="json"),
        "files": files,
        "libraries": {name: _version(name) for name in CHECKED_WITH},
        "python": sys.version,
        "code": tree_digest(),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def _remember(verdict: Path) -> None:
    """Record a pass (atomically; an unwritable cache folder only costs the next run the
    checks)."""
    try:
        verdict.parent.mkdir(parents=True, exist_ok=True)
        temporary = verdict.with_name(f".{verdict.name}.{os.getpid()}.tmp")
        temporary.write_text('{"passed": true}')
        os.replace(temporary, verdict)
    except OSError:
        pass


def _check_data(spec: PipelineSpec) -> None:
    source = spec.data.source
    shape = [source.length, source.channels] if isinstance(source, SequenceSource) else None
    aux = (
        source.aux_targets
        if isinstance(source, FileSource)
        else ["amplitude"]
        if isinstance(source, SequenceSource) and source.aux
        else []
    )
    if isinstance(source, FileSource):
        check_file(source)
    labels = read_labels(source) if isinstance(source, FileSource) else None
    task, _ = (
        decide_task(labels, spec.task) if labels is not None else source_task(source, spec.task)
    )
    if spec.task == "auto":  # the data decided: the other task's knobs are refused now
        problems = task_problems(spec, task) + ensemble_problems(spec, task)
        if problems:
            raise SpecError(f"pipeline {spec.name!r} (a {task} by its target)", problems)
    if labels is None:
        labels = read_labels(source)
    _check_labelled(labels, spec)
    if task == "regression":
        _check_regression(spec, labels, shape, aux)
        return
    target = labels.name
    counts = _class_counts(labels)
    if not counts:
        raise DataError(
            f"target {target!r} has no values: the data has {len(labels)} rows, "
            "none of them labelled"
        )
    if len(counts) < 2:
        raise DataError(
            f"target {target!r} has a single class {sorted(counts)} in "
            f"{len(labels)} rows: a stratified split needs at least two classes"
        )
    split = spec.data.split
    if split.strategy == "stratified":
        _check_stratified_split(counts, target, split.validation, split.test)
    if spec.evaluate.cv:
        folds = spec.evaluate.cv.folds
        keep = 1 - split.test if isinstance(split.test, float) else 1.0  # (column: given)
        scarce = {c: n for c, n in counts.items() if int(n * keep) < folds}
        if scarce:
            raise DataError(
                f"evaluate.cv.folds is {folds} but class(es) {_listed(scarce)} of {target!r} "
                f"have too few rows: about {keep:.0%} of each class remains for "
                f"cross-validation after the test split; lower evaluate.cv.folds or add data"
            )
    _check_transform_values(spec)
    if isinstance(source, FileSource):
        table, schema = load_for_task(source, task)
        check_text_features(spec.data.steps, table, schema.features)
    # last: its size check builds the model on torch's meta device, and a run whose data
    # cannot work answers without importing torch
    check_model_and_training(spec.model, spec.train, shape, dict.fromkeys(aux, []))


def _check_regression(spec: PipelineSpec, labels: pl.Series, shape, aux) -> None:
    """A regression's target (numbers: decide_task named the first that is not) has enough
    rows for its parts; then the features and the model, as a classifier's."""
    source = spec.data.source
    if isinstance(source, FileSource):
        table, schema = load_for_task(source, "regression")
        check_text_features(spec.data.steps, table, schema.features)
    rows = len(labels) - labels.null_count()
    if rows < 10:
        raise DataError(
            f"target {labels.name!r} has {rows} numeric row(s): a regression needs at least "
            "10 to split into train, validation and test; add rows"
        )
    check_model_and_training(spec.model, spec.train, shape, dict.fromkeys(aux, []))


def _check_transform_values(spec: PipelineSpec) -> None:
    """The values of albumentations transforms, which only the library can judge (the spec
    checked their names and keyword names without importing it)."""
    augment = spec.train.augment
    problems = []
    for index, transform in enumerate(augment.transforms if augment else []):
        try:
            transform.check_values()
        except ValueError as exc:
            problems.append(
                (
                    f"train.augment.transforms.{index}",
                    f"{exc}; see albumentations' documentation of {transform.name} "
                    "for the values it takes",
                )
            )
    if problems:
        raise SpecError(f"pipeline {spec.name!r}", problems)


def _check_labelled(labels: pl.Series, spec: PipelineSpec) -> None:
    """Rows without a label must be dropped by a `clean` step before the split: no split,
    shard or loss can use them."""
    missing = labels.null_count()
    if missing and not any(
        step.type == "clean" and getattr(step, "drop_missing_label", False)
        for step in spec.data.pre_split
    ):
        first = int(labels.is_null().arg_true()[0])
        where = f" (the first is data row {first + 1})"
        raise DataError(
            f"target {labels.name!r} has {missing} row(s) without a label{where}; "
            "add a `clean` step before `split` (it drops them), or fill in the "
            "labels"
        )


def _check_stratified_split(
    counts: dict[str, int], target: str, validation: float, test: float
) -> None:
    """Every class needs a row in each of the three parts, and each part at least one row
    per class (scikit-learn's stratified split refuses otherwise)."""
    scarce = {c: n for c, n in counts.items() if n < 3}
    if scarce:
        raise DataError(
            f"class(es) {_listed(scarce)} of target {target!r} have fewer than 3 rows: a "
            "stratified split puts rows of every class in train, validation and test; add "
            "rows of these classes, remove them from the data, or split with strategy: "
            "random"
        )
    rows = sum(counts.values())
    n_test = math.ceil(test * rows)
    n_val = math.ceil(validation / (1 - test) * (rows - n_test))
    parts = {"test": n_test, "validation": n_val, "train": rows - n_test - n_val}
    if not validation:  # validation: 0, no validation part
        del parts["validation"]
    small = {name: n for name, n in parts.items() if n < len(counts)}
    if small:
        raise DataError(
            f"a stratified split of {rows} rows gives the {' and '.join(small)} part(s) "
            f"{' and '.join(str(n) for n in small.values())} row(s), fewer than the "
            f"{len(counts)} classes of {target!r}: add rows, or raise data.steps' split "
            "fractions (validation, test)"
        )


def _class_counts(labels: pl.Series) -> dict[str, int]:
    counts = labels.drop_nulls().cast(pl.Utf8).value_counts(sort=True)
    return dict(zip(counts[labels.name].to_list(), counts["count"].to_list()))


def _listed(counts: dict[str, int]) -> str:
    """{'a': 1, 'b': 2} for a few classes, then how many more (a message stays short)."""
    shown = dict(sorted(counts.items(), key=lambda kv: kv[1])[:LISTED])
    more = len(counts) - len(shown)
    return f"{shown}" + (f" and {more} more" if more else "")
