"""Expectations and profile: check declared facts about the ingested table, all at once, and
profile its columns (flagging id-like, constant and almost-numeric ones, see
trainflow.columnflags)."""

from __future__ import annotations

import json
from typing import Literal

import polars as pl
from prefect import task

from trainflow.artifacts import ArtifactRef, Store
from trainflow.caching import CACHED
from trainflow.columnflags import column_flags
from trainflow.errors import DataError
from trainflow.logs import run_logger
from trainflow.spec.data import ExpectSpec
from trainflow.steps import read_parts
from trainflow.tables import IMAGE_COLUMN

Kind = Literal["numeric", "integer", "float", "text"]


def _kind_ok(dtype: pl.DataType, kind: str) -> bool:
    return {
        "numeric": dtype.is_numeric(),
        "integer": dtype.is_integer(),
        "float": dtype.is_float(),
        "text": dtype in (pl.Utf8, pl.Categorical),
    }[kind]


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def failures(df: pl.DataFrame, target: str, expect: ExpectSpec) -> list[str]:
    found = []
    missing = [
        c
        for c in {*expect.columns, *expect.dtypes, *expect.ranges, *expect.not_null}
        if c not in df.columns
    ]
    found += [f"column {c!r} is missing (columns: {df.columns})" for c in sorted(missing)]
    for column, kind in expect.dtypes.items():
        if column in df.columns and not _kind_ok(df[column].dtype, kind):
            found.append(f"column {column!r} should be {kind}, is {df[column].dtype}")
    for column, (low, high) in expect.ranges.items():
        if column not in df.columns or not df[column].dtype.is_numeric():
            continue
        values = df[column].drop_nulls()
        below = int((values < low).sum()) if low is not None else 0
        above = int((values > high).sum()) if high is not None else 0
        if below or above:
            found.append(
                f"column {column!r}: {below} value(s) below {_num(low)}, {above} above "
                f"{_num(high)} "
                f"(min {values.min()}, max {values.max()})"
            )
    for column in [c for c in expect.not_null if c in df.columns]:
        if nulls := df[column].null_count():
            found.append(f"column {column!r} has {nulls} missing value(s)")
    if expect.label_not_null and (nulls := df[target].null_count()):
        found.append(f"label {target!r} is missing in {nulls} row(s)")
    if expect.classes is not None:
        extra = sorted(set(df[target].drop_nulls().to_list()) - set(expect.classes))
        if extra:
            found.append(f"label {target!r} has values {extra} outside {expect.classes}")
    return found


def profile(df: pl.DataFrame, features: list[str] | None = None) -> list[dict]:
    """Per column: type, missing values and, for numbers, min/mean/max; a feature column
    worth a second look has a `note` saying why and what to do."""
    flags = column_flags(df, features or [])
    rows = []
    for column in df.columns:
        series = df[column]
        if column == IMAGE_COLUMN:
            rows.append({"column": column, "dtype": "image", "missing": series.null_count()})
            continue
        row = {"column": column, "dtype": str(series.dtype), "missing": series.null_count()}
        if series.dtype.is_numeric():
            clean = series.cast(pl.Float64).fill_nan(None)
            row.update(
                missing=clean.null_count(), min=clean.min(), mean=clean.mean(), max=clean.max()
            )
        else:
            row["distinct"] = series.n_unique()
        if column in flags:
            row["note"] = flags[column]
        rows.append(row)
    return rows


@task(name="expect", **CACHED)
def check_expectations(table: ArtifactRef, expect: ExpectSpec, store: str) -> ArtifactRef:
    """Raise a DataError listing every failed expectation; otherwise record the data profile."""
    ((df, schema),) = read_parts(table).values()
    problems = failures(df, schema.target, expect)
    if problems:
        raise DataError(
            f"{len(problems)} data expectation(s) failed:\n"
            + "\n".join(f"  - data.expect: {p}" for p in problems)
        )
    target = Store(store)
    with target.writer("report") as staging:
        rows = profile(df, schema.features)
        for row in rows:
            if "note" in row:
                run_logger().warning("data profile: column %r is %s", row["column"], row["note"])
        (staging / "profile.json").write_text(json.dumps(rows, indent=1, default=str))
        return target.commit(staging, "report", count=len(df), meta={"profile": rows})
