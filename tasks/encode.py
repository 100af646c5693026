"""Encode: categorical (text) feature columns as one-hot or ordinal numbers, fitted on train."""

from __future__ import annotations

from typing import Literal

import polars as pl
from prefect import task
from pydantic import Field

from trainflow.artifacts import ArtifactRef
from trainflow.caching import CACHED
from trainflow.spec.base import Section
from trainflow.steps import State, transform
from trainflow.tables import TableSchema


class EncodeParams(Section):
    """Categories are learned from the training part (after split) or the whole table.

    one_hot: a 0/1 column `<column>=<category>` per category; a missing or unseen value is all
    zeros. ordinal: the category's index in sorted order; missing or unseen is -1.
    """

    type: Literal["encode"]
    method: Literal["one_hot", "ordinal"] = "one_hot"
    columns: list[str] | None = None
    unknown: Literal["ignore", "error"] = Field(
        "ignore", description="a category not seen when fitting: encode as unknown, or fail")


def _targets(df: pl.DataFrame, schema: TableSchema, params: EncodeParams) -> list[str]:
    if params.columns is not None:
        return params.columns
    return [c for c in schema.features if c in df.columns and not df[c].dtype.is_numeric()]


def fit(df: pl.DataFrame, schema: TableSchema, params: EncodeParams, seed: int = 0) -> State:
    from trainflow.errors import DataError

    columns = _targets(df, schema, params)
    unknown = [c for c in columns if c not in schema.features]
    if unknown:
        raise DataError(f"encode.columns: {unknown} are not feature columns; "
                        f"features are {schema.features}")
    return {"categories": {c: sorted(df[c].cast(pl.Utf8).drop_nulls().unique().to_list())
                           for c in columns}}


def apply(df: pl.DataFrame, schema: TableSchema, params: EncodeParams,
          state: State) -> tuple[pl.DataFrame, TableSchema]:
    features: list[str] = []
    for column in schema.features:
        categories = state["categories"].get(column)
        if categories is None:
            features.append(column)
            continue
        values = pl.col(column).cast(pl.Utf8)
        if params.unknown == "error":
            unseen = sorted(set(df[column].cast(pl.Utf8).drop_nulls().unique()) - set(categories))
            if unseen:
                from trainflow.errors import DataError
                raise DataError(f"encode: column {column!r} has categories {unseen[:10]} not "
                                f"seen when fitting (known: {categories[:20]}); set "
                                "unknown: ignore to encode them as unknown")
        if params.method == "ordinal":
            mapping = {c: i for i, c in enumerate(categories)}
            df = df.with_columns(values.replace_strict(mapping, default=-1,
                                                       return_dtype=pl.Int32).alias(column))
            features.append(column)
        else:
            names = [f"{column}={c}" for c in categories]
            df = df.with_columns((values == c).fill_null(False).cast(pl.Float32).alias(name)
                                 for c, name in zip(categories, names)).drop(column)
            features += names
    order = features + [c for c in df.columns if c not in features]
    return df.select(order), schema.model_copy(update={"features": features})


@task(name="encode", **CACHED)
def encode(data: ArtifactRef, params: EncodeParams, seed: int, store: str) -> ArtifactRef:
    """Turn text feature columns into numbers, with categories learned on the training part."""
    return transform(data, params, fit, apply, seed, store)
