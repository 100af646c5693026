"""The column types polars infers from a CSV file's first rows, checked against the whole file:
a numeric column with a stray word in those rows is read as text, and one past them stops the
read; either is one message naming the column, the line, the value and the fix."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from trainflow.csvscan import CsvLayout
from trainflow.errors import DataError

INFER_ROWS = 10_000  # rows polars reads to infer the column types
SPEC_TYPES = {pl.Int64: "int64", pl.Float64: "float64", pl.Boolean: "bool", pl.Utf8: "str"}
SUGGESTED_COLUMNS = 8  # the declaration to paste is spelled out for files this narrow
MAX_TOKENS = 3  # distinct words among a numeric column's values that may be missing-value marks


def scan_csv_file(
    layout: CsvLayout, text: list[str], null_values: Sequence[str] = (), infer: bool = True
) -> pl.LazyFrame:
    """The lazy scan of a checked CSV file (the columns in `text` read as text; every column
    without `infer`), its `null_values` read as missing."""
    return pl.scan_csv(
        layout.path,
        separator=layout.delimiter,
        null_values=list(null_values) or None,
        infer_schema=infer,
        infer_schema_length=INFER_ROWS,
        schema_overrides=dict.fromkeys(text, pl.Utf8) if infer else None,
    )


def check_inferred_types(
    lf: pl.LazyFrame,
    layout: CsvLayout,
    path: Path,
    columns: list[str],
    read: list[str],
    null_values: Sequence[str] = (),
) -> None:
    """Raise a DataError when the whole file contradicts a type inferred for a column it
    reads (`read`: text past the inferred rows of a numeric column), or when one of `columns`
    (those meant to be numbers) is mostly numbers read as text; `read` are also the columns a
    declaration would list."""
    schema = lf.collect_schema()
    text = [c for c in columns if schema[c] == pl.Utf8]
    counts = [
        e
        for c in text
        for e in (
            _number(c).is_not_null().sum().alias(f"n:{c}"),
            pl.col(c).is_not_null().sum().alias(f"v:{c}"),
        )
    ]
    parsed = [pl.col(c).is_null().sum().alias(f"p:{c}") for c in read if schema[c] != pl.Utf8]
    try:
        found = lf.select(counts + parsed).collect(engine="streaming").row(0, named=True)
    except pl.exceptions.ComputeError as exc:
        raise _past_inferred_rows(exc, layout, path, schema, read, null_values) from None
    for c in text:
        numbers, values = found[f"n:{c}"], found[f"v:{c}"]
        if numbers and numbers < values and 2 * numbers >= values:
            bad = pl.col(c).is_not_null() & _number(c).is_null()
            row, value = _first(lf, c, bad)
            raise DataError(
                f"data.source.path: column {c!r} of {path} mixes numbers and text: {numbers} of "
                f"its {values} values are numbers, but {layout.where(row)} holds {value!r} "
                f"({_such(values - numbers)}); {token_hint(lf, c, bad, null_values)}"
                f"{_fix(c, schema, read)}"
            )


def token_hint(lf: pl.LazyFrame, column: str, bad: pl.Expr, null_values: Sequence[str]) -> str:
    """Where the `bad` values of a column are a few words (`-`, `missing`), the fix that
    reads them as missing: the null_values list to paste (JSON is YAML), else ""."""
    found = (
        lf.filter(bad)
        .group_by(column)
        .len()
        .sort(["len", column], descending=[True, False])
        .head(MAX_TOKENS + 1)
        .collect()
    )
    if found.height > MAX_TOKENS:
        return ""
    tokens = found[column].to_list()
    counted = " and ".join(f"{t!r} ({n} row{'s' * (n > 1)})" for t, n in found.iter_rows())
    how = (
        "marks a missing value, read it as one"
        if len(tokens) == 1
        else "mark missing values, read them as such"
    )
    listed = json.dumps([*null_values, *tokens])
    return f"if {counted} {how}: data.source.null_values: {listed}; otherwise, "


def _past_inferred_rows(
    exc: Exception,
    layout: CsvLayout,
    path: Path,
    schema: pl.Schema,
    read: list[str],
    null_values: Sequence[str],
) -> DataError:
    """Which value past the inferred rows does not parse as its column's type, and where."""
    typed = [c for c in read if schema[c] != pl.Utf8]
    raw = scan_csv_file(layout, [], null_values, infer=False).select(typed)
    bad = {c: pl.col(c).is_not_null() & _parsed(c, schema[c]).is_null() for c in typed}
    rows = (
        raw.with_row_index("__row")
        .select(pl.col("__row").filter(bad[c]).first().alias(c) for c in typed)
        .collect()
        .row(0, named=True)
        if typed
        else {}
    )
    rows = {c: r for c, r in rows.items() if r is not None}
    if not rows:
        first = str(exc).strip().splitlines()[0]
        return DataError(
            f"data.source.path: cannot read csv file {path}: {first}; {_fix(None, schema, read)}"
        )
    c = min(rows, key=rows.get)
    count = raw.select(bad[c].sum()).collect().item()
    value = raw.select(pl.col(c).gather(rows[c])).collect().item()
    kind = SPEC_TYPES.get(schema[c], str(schema[c]))
    return DataError(
        f"data.source.path: column {c!r} of {path} holds {kind} values in its first "
        f"{INFER_ROWS} rows, which set its type, but {layout.where(rows[c])} holds {value!r} "
        f"({_such(count)}); {token_hint(raw, c, bad[c], null_values)}{_fix(c, schema, read)}"
    )


def _first(lf: pl.LazyFrame, column: str, bad: pl.Expr) -> tuple[int, str]:
    row, value = (
        lf.with_row_index("__row").filter(bad).select("__row", column).head(1).collect().row(0)
    )
    return int(row), str(value)[:40]


def _number(column: str) -> pl.Expr:
    return pl.col(column).str.strip_chars().cast(pl.Float64, strict=False)


def _parsed(column: str, dtype: pl.DataType) -> pl.Expr:
    """The text as polars' CSV reader would parse it for `dtype` (null where it would fail)."""
    if dtype == pl.Boolean:
        word = pl.col(column).str.to_lowercase()
        return pl.when(word.is_in(["true", "false"])).then(word == "true")
    return pl.col(column).cast(dtype, strict=False)


def _fix(column: str | None, schema: pl.Schema, read: list[str]) -> str:
    """What to do: fix the values, or declare the column types (a declaration lists every
    column to read, so the one to paste is spelled out where it is short)."""
    types = {c: "str" if c == column else SPEC_TYPES.get(schema[c], "str") for c in read}
    if len(read) <= SUGGESTED_COLUMNS:
        declare = (
            "declare every column's type: data.source.columns: {"
            + ", ".join(f"{c}: {t}" for c, t in types.items())
            + "}"
        )
    else:
        declare = "declare every column's type in data.source.columns" + (
            f", with {column}: str" if column else ""
        )
    if column is None:
        return f"fix the file, or {declare}"
    return (
        f"if {column!r} is numeric, fix those values (an empty cell is a missing value); "
        f"if it is text, {declare}"
    )


def _such(count: int) -> str:
    return "the only such value" if count == 1 else f"one of {count} such values"


def check_target_tokens(
    layout: CsvLayout, labels: pl.Series, null_values: Sequence[str], path: Path
) -> None:
    """Labels that `null_values` reads as missing (a class called `None`?): refused when that
    is every label, else a warning naming them, since their rows count as unlabelled (a
    `clean` step drops them)."""
    target = str(labels.name)
    raw = scan_csv_file(layout, [], (), infer=False).select(target)
    found = (
        raw.filter(pl.col(target).is_in([t for t in null_values if t]))
        .group_by(target)
        .len()
        .sort(["len", target], descending=[True, False])
        .collect()
    )
    if found.is_empty():
        return
    counted = ", ".join(f"{t!r} ({n} row{'s' * (n > 1)})" for t, n in found.iter_rows())
    kept = json.dumps([t for t in null_values if t not in found[target].to_list()])
    fix = f"if they are classes, read them as labels: data.source.null_values: {kept}"
    if labels.null_count() == len(labels):
        raise DataError(
            f"data.source.null_values: every label of the target {target!r} in {path} is "
            f"read as missing: it holds only {counted}, which null_values lists; {fix}"
        )
    logging.getLogger("trainflow").warning(
        "data.source.null_values: labels %s of the target %r in %s are read as missing: "
        "their rows are unlabelled (a clean step drops them); %s",
        counted,
        target,
        path,
        fix,
    )
