"""Encode: categorical (text) feature columns as one-hot or ordinal numbers, fitted on train."""

from __future__ import annotations

import polars as pl

from trainflow.errors import DataError
from trainflow.spec.steps import EncodeParams, one_hot_name
from trainflow.steps import Frame, State, like
from trainflow.tables import TableSchema


def _targets(frame: Frame, schema: TableSchema, params: EncodeParams) -> list[str]:
    if params.columns is not None:
        return params.columns
    dtypes = frame.lazy().collect_schema()
    return [c for c in schema.features if c in dtypes and not dtypes[c].is_numeric()]


def fit(frame: Frame, schema: TableSchema, params: EncodeParams, seed: int = 0) -> State:
    columns = _targets(frame, schema, params)
    unknown = [c for c in columns if c not in schema.features]
    if unknown:
        raise DataError(
            f"encode.columns: {unknown} are not feature columns; features are {schema.features}"
        )
    lf = frame.lazy()
    return {
        "categories": {
            c: lf.select(pl.col(c).cast(pl.Utf8))
            .drop_nulls()
            .unique()
            .collect(engine="streaming")[c]
            .sort()
            .to_list()
            for c in columns
        }
    }


def _check_seen(frame: Frame, column: str, categories: list[str]) -> None:
    values = pl.col(column).cast(pl.Utf8)
    unseen = (
        frame.lazy()
        .filter(values.is_not_null() & ~values.is_in(categories))
        .select(values.unique().sort().head(10))
        .collect(engine="streaming")[column]
    )
    if len(unseen):
        raise DataError(
            f"encode: column {column!r} has categories {unseen.to_list()} not "
            f"seen when fitting (known: {categories[:20]}); set unknown: ignore to "
            "encode them as unknown"
        )


def apply(
    frame: Frame, schema: TableSchema, params: EncodeParams, state: State
) -> tuple[Frame, TableSchema]:
    lf, features = frame.lazy(), []
    for column in schema.features:
        categories = state["categories"].get(column)
        if categories is None:
            features.append(column)
            continue
        if params.unknown == "error":
            _check_seen(frame, column, categories)
        values = pl.col(column).cast(pl.Utf8)
        if params.method == "ordinal":
            mapping = {c: i for i, c in enumerate(categories)}
            lf = lf.with_columns(
                values.replace_strict(mapping, default=-1, return_dtype=pl.Int32).alias(column)
            )
            features.append(column)
        else:
            names = [one_hot_name(column, c) for c in categories]
            lf = lf.with_columns(
                (values == c).fill_null(False).cast(pl.Float32).alias(name)
                for c, name in zip(categories, names)
            ).drop(column)
            features += names
    rest = [c for c in lf.collect_schema().names() if c not in features]
    return like(frame, lf.select(features + rest)), schema.model_copy(update={"features": features})


def decode(df: pl.DataFrame, state: State) -> pl.DataFrame:
    """The inverse of `apply` for reports: encoded columns back to their category names.

    One-hot columns become one text column again (null where every indicator is 0, i.e. the
    value was missing or unseen); ordinal codes map back to names (-1 to null).
    """
    for column, categories in state["categories"].items():
        names = [one_hot_name(column, c) for c in categories]
        if column in df.columns and df[column].dtype.is_integer():  # ordinal
            df = df.with_columns(
                pl.col(column).replace_strict(
                    dict(enumerate(categories)), default=None, return_dtype=pl.Utf8
                )
            )
            continue
        if not names or not all(n in df.columns for n in names):
            continue
        decoded = pl.coalesce(
            pl.when(pl.col(n) > 0.5).then(pl.lit(c)) for n, c in zip(names, categories)
        )
        position = df.columns.index(names[0])
        df = df.with_columns(decoded.alias(column)).drop(names)
        order = [c for c in df.columns if c != column]
        df = df.select(order[:position] + [column] + order[position:])
    return df
