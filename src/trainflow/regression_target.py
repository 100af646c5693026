"""Which task a target makes (classification or regression), and a table's target as the
numbers a regression trains on."""

from __future__ import annotations

from typing import Any

import polars as pl

from trainflow.errors import DataError
from trainflow.readers import Table, load_source, read_labels
from trainflow.spec.task import SKLEARN_REGRESSION
from trainflow.tables import TableSchema

# A target of decimal numbers with more distinct values than this is a regression target.
MAX_DECIMAL_CLASSES = 20
LISTED = 5  # values named in a message


def decide_task(labels: pl.Series, declared: str) -> tuple[str, str]:
    """The task of a target (`labels`, as read) under the spec's `task`, and why, in words
    for the log. A float target of many distinct values is a regression under auto; under
    task: classification it is refused (each value would be a class of one row), and a
    target that is not numbers is refused under task: regression."""
    many = _many_decimals(labels)
    if declared == "regression":
        check_numeric_target(labels)
        return "regression", "task: regression (declared)"
    if declared == "classification":
        if many:
            raise DataError(_decimal_classes(labels, many))
        return "classification", "task: classification (declared)"
    if many:
        return "regression", (
            f"task: regression (auto: target {labels.name!r} holds {many} distinct decimal "
            f"numbers, more than {MAX_DECIMAL_CLASSES}; set task: classification for labels)"
        )
    return "classification", (
        f"task: classification (auto: target {labels.name!r} holds class labels; set "
        "task: regression for a numeric target)"
    )


def _many_decimals(labels: pl.Series) -> int:
    """The count of distinct values of a float target above MAX_DECIMAL_CLASSES, else 0."""
    if not labels.dtype.is_float():
        return 0
    count = labels.drop_nulls().n_unique()
    return count if count > MAX_DECIMAL_CLASSES else 0


def _decimal_classes(labels: pl.Series, count: int) -> str:
    values = labels.drop_nulls().unique()
    shown = ", ".join(f"{v:g}" for v in values.head(LISTED).sort().to_list())
    return (
        f"data.source.target: column {labels.name!r} holds {count} distinct decimal numbers "
        f"(such as {shown}): it looks like a regression target, and task: classification "
        "makes one class per value; set task: regression (or auto), or name a column of "
        "class labels as data.source.target"
    )


def check_numeric_target(labels: pl.Series) -> None:
    """A regression target must be numbers: the first value that is not is named, with its
    row (a missing value is a `clean` step's to drop)."""
    if labels.dtype.is_numeric():
        return
    if labels.dtype == pl.Boolean:
        raise DataError(
            f"data.source.target: column {labels.name!r} holds true/false values, and "
            "task: regression needs numbers: set task: classification (or auto)"
        )
    text = labels.cast(pl.Utf8)
    numbers = text.str.strip_chars().cast(pl.Float64, strict=False)
    bad = (numbers.is_null() & text.is_not_null()).arg_true()
    if len(bad):
        row = int(bad[0])
        raise DataError(
            f"data.source.target: column {labels.name!r} holds text, such as {text[row]!r} "
            f"(data row {row + 1}; {len(bad)} such row(s)), and task: regression needs "
            "numbers: set task: classification for class labels, or fix the column"
        )


def as_regression(
    table: pl.DataFrame | pl.LazyFrame, schema: TableSchema
) -> tuple[pl.DataFrame | pl.LazyFrame, TableSchema]:
    """The table with its target as Float64 (read as text by the classification path, whose
    polars text of a float reads back exactly) and a regression schema: no classes."""
    target = schema.target
    converted = pl.col(target).cast(pl.Utf8).str.strip_chars().cast(pl.Float64, strict=False)
    lazy = table.lazy().with_columns(converted.alias(target))
    out = lazy if isinstance(table, pl.LazyFrame) else lazy.collect()
    return out, schema.model_copy(update={"classes": [], "task": "regression"})


def load_for_task(source: Any, task: str) -> Table:
    """The declared source as a table (trainflow.readers), its target numbers for a
    regression (`task`, as source_task decided it)."""
    table, schema = load_source(source)
    if task == "regression" and schema.task != "regression":
        table, schema = as_regression(table, schema)
    return table, schema


def source_task(source: Any, declared: str) -> tuple[str, str]:
    """The task the source's target makes under the spec's `task` (auto, classification,
    regression), and why in words (for the log)."""
    if source.type == "sklearn":  # (the spec refused a declared task it does not make)
        task = "regression" if source.dataset in SKLEARN_REGRESSION else "classification"
        return task, f"task: {task} (the {source.dataset} dataset's target)"
    if source.type in ("image_folder", "sequences"):
        if declared == "regression":
            raise DataError(
                f"task: regression needs a numeric target column, and a {source.type} "
                "source's target is its class names: set task: classification (or auto)"
            )
        return "classification", f"task: classification (a {source.type} source's classes)"
    return decide_task(read_labels(source), declared)
