"""Parquet tables with their trainflow schema: target, features, classes and image shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict

from trainflow.errors import DataError

META_KEY = "trainflow"
IMAGE_COLUMN = "image"
SYNTHETIC_COLUMN = "synthetic"  # 1 marks rows made by a synthesis step (never a feature)


class TableSchema(BaseModel):
    """What a table holds. Images are one flattened float column with their (C, H, W) shape."""

    model_config = ConfigDict(extra="forbid")

    target: str
    features: list[str]
    classes: list[str]
    image_shape: list[int] | None = None
    weight: str | None = None  # a per-row loss weight column (never a feature)
    # Sequences: the numeric feature columns, in order, reshaped to (steps, channels).
    feature_shape: list[int] | None = None
    # Multi-task: auxiliary target columns (never features) -> their classes.
    aux_targets: dict[str, list[str]] | None = None
    # What the target is: class labels (indices into `classes`) or numbers to regress on
    # (`classes` is then empty and the target column stays float).
    task: Literal["classification", "regression"] = "classification"

    @property
    def input_shape(self) -> list[int]:
        if self.image_shape:
            return self.image_shape
        return self.feature_shape if self.feature_shape else [len(self.features)]


# Fixed writer settings keep the bytes identical from run to run (content addressing); lz4
# because every step writes its output and zstd's extra ratio costs twice the write time.
WRITE_OPTIONS: dict[str, Any] = {"compression": "lz4", "statistics": True}


def write_table(df: pl.DataFrame, path: Path, schema: TableSchema) -> None:
    df.write_parquet(path, metadata={META_KEY: schema.model_dump_json()}, **WRITE_OPTIONS)


def sink_table(
    frame: pl.LazyFrame, path: Path, schema: TableSchema, lazy: bool = False
) -> pl.LazyFrame | None:
    """Write a lazy query's result with the streaming engine (bounded memory); with `lazy`,
    return the sink as a query for `pl.collect_all` to run with others."""
    return frame.sink_parquet(
        path, metadata={META_KEY: schema.model_dump_json()}, lazy=lazy, **WRITE_OPTIONS
    )  # type: ignore[call-overload]


def schema_file(path: Path) -> Path:
    """Where the schema of a table stored as the source's own bytes lives: beside it."""
    return path.with_name(f"{path.stem}.schema.json")


def table_schema(path: Path) -> TableSchema:
    """The schema in the Parquet file's metadata, or in its `schema_file` (which comes first:
    a file stored as is may carry metadata of its own)."""
    beside = schema_file(path)
    try:
        raw = (
            beside.read_text() if beside.is_file() else pl.read_parquet_metadata(path).get(META_KEY)
        )
    except Exception as exc:  # polars raises several types for unreadable files
        raise DataError(f"cannot read Parquet file {path}: {exc}") from None
    if raw is None:
        raise DataError(f"{path} is not a trainflow table (no '{META_KEY}' metadata)")
    return TableSchema(**json.loads(raw))


def scan_table(path: Path) -> tuple[pl.LazyFrame, TableSchema]:
    return pl.scan_parquet(path), table_schema(path)


def read_table(path: Path) -> tuple[pl.DataFrame, TableSchema]:
    schema = table_schema(path)
    return pl.read_parquet(path), schema


def to_arrays(df: pl.DataFrame, schema: TableSchema) -> tuple[np.ndarray, np.ndarray]:
    """Features as float32 (N, *input_shape) and labels as int64 class indices, or for a
    regression the target's numbers as float64."""
    x = feature_array(df, schema)
    bad = ~np.isfinite(x.reshape(len(df), -1) if len(df) else x.reshape(0, 0))  # (val: 0)
    if bad.any():
        if schema.image_shape:
            where = "image pixels"
        else:
            where = ", ".join(f"{c} ({int(n)})" for c, n in zip(schema.features, bad.sum(0)) if n)
        raise DataError(
            f"{int(bad.sum())} non-finite feature value(s) (NaN or inf) reach training in: "
            f"{where}. "
            "Add a `clean` step (missing: drop/mean/median/mode/constant) before `split`, "
            "or fix the source data."
        )
    if schema.task == "regression":
        return x, target_numbers(df, schema.target)
    y = _codes(df, schema.target, schema.classes, "target")
    if schema.aux_targets:  # labels (n, 1 + tasks): the main target first
        y = np.stack(
            [y, *(_codes(df, name, classes) for name, classes in schema.aux_targets.items())],
            axis=1,
        )
    return x, y


def feature_array(df: pl.DataFrame, schema: TableSchema) -> np.ndarray:
    """The features as the model takes them: float32 (N, *input_shape), writable and
    contiguous (training's shards and a package's predictions both come from here)."""
    if schema.image_shape:
        flat = np.asarray(df[IMAGE_COLUMN].to_list(), dtype=np.float32)
        x = flat.reshape(len(df), *schema.image_shape)
    else:
        text = [c for c in schema.features if not df[c].dtype.is_numeric()]
        if text:
            raise DataError(
                f"feature columns {text} hold text, which training cannot use: add "
                "an `encode` step (one_hot or ordinal) after `split`"
            )
        x = df.select(schema.features).cast(pl.Float32).to_numpy().astype(np.float32, copy=False)
        if schema.feature_shape:
            if int(np.prod(schema.feature_shape)) != len(schema.features):
                raise DataError(
                    f"the sequence shape {schema.feature_shape} needs "
                    f"{int(np.prod(schema.feature_shape))} feature columns, the "
                    f"table has {len(schema.features)}: a step before training "
                    "added or removed feature columns"
                )
            x = x.reshape(len(df), *schema.feature_shape)
    x = np.ascontiguousarray(x)
    return x if x.flags.writeable else x.copy()  # polars may hand out read-only views


def target_numbers(df: pl.DataFrame, column: str) -> np.ndarray:
    """A regression target as float64; a missing or non-finite value is an error."""
    y = df[column].cast(pl.Float64).to_numpy().astype(np.float64)
    bad = ~np.isfinite(y)
    if bad.any():
        raise DataError(
            f"target {column!r}: {int(bad.sum())} row(s) without a number (the first is row "
            f"{int(np.argmax(bad)) + 1} of its part) reach the shards; add a `clean` step "
            "before `split` (it drops rows without a label)"
        )
    return y


def _codes(
    df: pl.DataFrame, column: str, classes: list[str], role: str = "aux target"
) -> np.ndarray:
    """Class indices of a target column; a missing or unknown label is an error."""
    index = {name: i for i, name in enumerate(classes)}
    values = df[column].cast(pl.Utf8).to_list()
    bad = [v for v in values if v is None or v not in index]
    if bad and role == "target":
        raise DataError(
            f"target {column!r}: {len(bad)} row(s) without a known label (such as "
            f"{bad[:3]}) reach the shards; add a `clean` step before `split` (it "
            "drops rows without a label)"
        )
    if bad:
        raise DataError(
            f"aux target {column!r}: {len(bad)} row(s) without a known label (such "
            f"as {bad[:3]}); rows made by resample or synthesize have none, so "
            "multi-task data cannot use SMOTE-style or synthesis steps"
        )
    return np.asarray([index[v] for v in values], dtype=np.int64)


def sample_weights(df: pl.DataFrame, schema: TableSchema) -> np.ndarray | None:
    """The rows' loss weights (float32), or None when the table declares no weight column."""
    if not schema.weight:
        return None
    return df[schema.weight].cast(pl.Float32).fill_null(1.0).to_numpy().astype(np.float32)


def class_counts(df: pl.DataFrame | pl.LazyFrame, schema: TableSchema) -> dict[str, int]:
    if schema.task == "regression":  # no classes to count
        return {}
    # counted on the column as stored (Enum codes stay codes); only the counts become text
    counts = df.lazy().group_by(schema.target).len().collect(engine="streaming")
    found = {str(k): int(v) for k, v in zip(counts[schema.target].cast(pl.Utf8), counts["len"])}
    return {c: found.get(c, 0) for c in schema.classes}


def unique_rows(frame: pl.LazyFrame, subset: list[str] | None = None) -> pl.LazyFrame:
    """The rows `frame.unique(subset, keep="first", maintain_order=True)` keeps, found by
    `first_rows` (runs `frame`; returns a query over it)."""
    return keep_rows(frame, first_rows(frame, subset))


def keep_rows(frame: pl.LazyFrame, keep: np.ndarray) -> pl.LazyFrame:
    """The rows of `frame` whose entry in the boolean array `keep` (one per row) is true."""
    if keep.all():
        return frame
    return (
        frame.with_row_index("__row")
        .filter(pl.lit(pl.Series(keep)).gather(pl.col("__row")))
        .drop("__row")
    )


def row_hashes(frame: pl.LazyFrame, subset: list[str] | None = None) -> np.ndarray:
    """One 64-bit hash per row over `subset` (default all columns): equal rows (as polars'
    `unique` compares them: nulls equal, -0.0 equal to 0.0) get equal numbers."""
    columns = subset or frame.collect_schema().names()
    # each column's hash, then the row's (polars 2.1's struct hash refuses a list column
    # next to a float column holding -0.0)
    row_hash = pl.struct(pl.col(c).hash(0).alias(f"__{i}") for i, c in enumerate(columns))
    return frame.select(row_hash.hash(0)).collect(engine="streaming").to_series().to_numpy()


def first_rows(
    frame: pl.LazyFrame, subset: list[str] | None = None, hashes: np.ndarray | None = None
) -> np.ndarray:
    """Whether each row is the first of its set of duplicates (over `subset`, default all
    columns): true for the rows `frame.unique(subset, keep="first", maintain_order=True)`
    keeps, found twice as fast. Each row is hashed to one number (`row_hashes`, unless the
    caller has them); rows whose number is unique have no duplicate, and only the rows whose
    numbers repeat are compared in full, so a hash collision never drops a row."""
    columns = subset or frame.collect_schema().names()
    if hashes is None:
        hashes = row_hashes(frame, subset)
    ordered = np.sort(hashes)
    repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    keep = np.ones(len(hashes), dtype=bool)
    if len(repeated):
        candidate = pl.Series(hashes).is_in(pl.Series(repeated).implode()).to_numpy()
        keep[candidate] = False
        first = (
            keep_rows(frame.with_row_index("__first"), candidate)
            .unique(subset=columns, keep="first", maintain_order=True)
            .select("__first")
            .collect()
            .to_series()
            .to_numpy()
        )  # (streaming: no lists)
        keep[first] = True
    return keep
