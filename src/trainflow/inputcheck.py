"""The check of rows to score against a model package's input schema, before any is scored:
every problem is a DataError naming the column (or file), the value, where, and the fix."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import polars as pl

from trainflow.errors import DataError
from trainflow.tables import IMAGE_COLUMN

if TYPE_CHECKING:
    from trainflow.predictor import Model

SHOWN = 10  # values or columns a message lists


def check_rows(rows: pl.LazyFrame, model: Model, where: str) -> None:
    """Columns first (from the schema alone), then every value in one streaming pass."""
    types = rows.collect_schema()
    needed = list(model.input_schema["columns"])
    missing = [c for c in needed if c not in types]
    if missing:
        more = f" and {len(missing) - SHOWN} more" if len(missing) > SHOWN else ""
        raise DataError(
            f"{where}: missing column(s) {missing[:SHOWN]}{more}: the model reads "
            f"{_listed(needed)}, the columns of its training data (before any "
            "step); add them, named as in training"
        )
    converted = model.converted(types)
    checks = {
        f"type:{c}": _lost(c, types[c], model.types[c], e)
        for c, e in converted.items()
        if types[c] != model.types[c]
    }
    shape = model.input_schema["image_shape"]
    if shape and IMAGE_COLUMN in converted:
        checks["image"] = converted[IMAGE_COLUMN].list.len().fill_null(0) != math.prod(shape)
    for column, known in model.unseen_policies().items():
        if column in converted:
            value = converted[column].cast(pl.String)
            checks[f"unseen:{column}"] = value.is_not_null() & ~value.is_in(known)
    if not checks:
        return
    counts = (
        rows.select(e.sum().alias(k) for k, e in checks.items())
        .collect(engine="streaming")
        .row(0, named=True)
    )
    for key, count in counts.items():
        if count:
            raise _problem(rows, key, checks[key], converted, count, model, where)


def _lost(name: str, source: pl.DataType, target: pl.DataType, converted: pl.Expr) -> pl.Expr:
    """A value present in the input that its conversion loses (NaN counts as missing, and a
    fraction as lost on the way to an integer)."""
    value = pl.col(name)
    present = value.is_not_null()
    if source == pl.String:
        present &= value.str.strip_chars() != ""
    if source.is_float():
        present &= ~value.is_nan()
    lost = present & converted.is_null()
    if source.is_float() and target.is_integer():
        lost |= present & (converted.cast(pl.Float64) != value)
    return lost


def _problem(
    rows: pl.LazyFrame,
    key: str,
    bad: pl.Expr,
    converted: dict[str, pl.Expr],
    count: int,
    model: Model,
    where: str,
) -> DataError:
    kind, _, column = key.partition(":")
    column = column or IMAGE_COLUMN
    found = (
        rows.with_row_index("__row")
        .filter(bad)
        .select("__row", pl.col(column).alias("value"))
        .head(3)
        .collect()
    )
    row, values = int(found["__row"][0]) + 1, found["value"].to_list()
    schema = model.input_schema
    if kind == "type":
        return DataError(
            f"{where}: column {column!r}: {count} value(s) do not convert to "
            f"{schema['columns'][column]}, the type it had in training, such as "
            f"{[_short(v) for v in values]} (the first at row {row}); fix those values"
        )
    if kind == "unseen":
        seen = (
            rows.filter(bad)
            .select(converted[column].cast(pl.String).unique().sort().head(SHOWN))
            .collect()[column]
            .to_list()
        )
        return DataError(
            f"{where}: column {column!r}: {count} row(s) hold categories the model never saw "
            f"in training: {seen} (the first at row {row}); its encode step is declared "
            "unknown: error: map them to known categories "
            f"({_listed(schema['categories'][column])}), "
            "or retrain with encode unknown: ignore (unseen categories then encode as unknown)"
        )
    shape = schema["image_shape"]
    size = len(values[0]) if values[0] is not None else 0
    return DataError(
        f"{where}: row {row}: the image holds {size} pixel values, but the model takes images "
        f"of shape {shape} (channels, height, width: {math.prod(shape)} values); {count} "
        f"row(s) differ: resize the images to {shape[2]}x{shape[1]} pixels with {shape[0]} "
        "channel(s)"
    )


def _listed(values: list[str]) -> str:
    shown = ", ".join(map(str, values[:SHOWN]))
    return f"[{shown}{f', ... ({len(values)} in all)' if len(values) > SHOWN else ''}]"


def _short(value: object) -> object:
    text = repr(value)
    return value if len(text) <= 40 else f"{text[:37]}..."
