"""Feature columns worth a second look before training, for the data profile: id-like ones
(every value distinct), constant ones, and text columns that are numbers but for a few words
(`-`, `missing`) that mark missing values. Each flag names the column and the fix."""

from __future__ import annotations

import json

import polars as pl

from trainflow.spec.sources import NULL_VALUES

MIN_ID_ROWS = 20  # in fewer rows, distinct values are common by chance
MAX_TOKENS = 3  # distinct words among numbers that read as missing-value marks


def column_flags(df: pl.DataFrame, features: list[str]) -> dict[str, str]:
    """Feature column -> why it is flagged and what to do (unflagged columns are absent)."""
    flags: dict[str, str] = {}
    for column in features:
        series = df[column]
        if series.dtype == pl.List or series.dtype == pl.Array:
            continue  # image pixels
        flag = _constant(series) or _id_like(series) or _tokens(series)
        if flag:
            flags[column] = flag
    return flags


def _constant(series: pl.Series) -> str | None:
    if len(series) < 2 or series.n_unique() > 1:
        return None
    value = series[0]
    held = "no value (all missing)" if value is None else f"the one value {value!r}"
    return (
        f"constant: every row holds {held}, which tells classes nothing; leave it out "
        f"with data.source.drop: [{series.name}]"
    )


def _id_like(series: pl.Series) -> str | None:
    if (
        series.dtype.is_float()
        or len(series) < MIN_ID_ROWS
        or series.null_count()
        or series.n_unique() < len(series)
    ):
        return None
    return (
        f"id-like: each of its {len(series)} values is distinct (a row id, a name?), so "
        f"a model can only memorise it; leave it out with data.source.drop: [{series.name}]"
    )


def _tokens(series: pl.Series) -> str | None:
    """A text column whose values are numbers but for a few distinct words."""
    if series.dtype != pl.Utf8:
        return None
    numbers = series.str.strip_chars().cast(pl.Float64, strict=False)
    words = series.filter(series.is_not_null() & numbers.is_null())
    if not numbers.is_not_null().any() or words.is_empty():
        return None
    counts = words.value_counts(sort=True)
    if len(counts) > MAX_TOKENS:
        return None
    found = [(str(w), int(n)) for w, n in counts.iter_rows()]
    counted = " and ".join(f"{w!r} ({n} row{'s' * (n > 1)})" for w, n in found)
    tokens = [w for w, _ in found]
    return (
        f"text only because of {counted}: the rest are numbers, and as text the column is "
        f"one-hot encoded; if {'it marks' if len(tokens) == 1 else 'they mark'} missing "
        f"values, read {'it' if len(tokens) == 1 else 'them'} as such: data.source."
        f"null_values: {json.dumps([*NULL_VALUES, *tokens])} (or add "
        f"{'it' if len(tokens) == 1 else 'them'} to the list you set)"
    )
