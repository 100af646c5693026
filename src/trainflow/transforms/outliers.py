"""Outliers: clip or drop values beyond z-score or IQR bounds learned from the training part."""

from __future__ import annotations

import polars as pl

from trainflow.spec.steps import OutliersParams
from trainflow.steps import State
from trainflow.tables import TableSchema

DEFAULT_THRESHOLD = {"zscore": 3.0, "iqr": 1.5}


def numeric_columns(df: pl.DataFrame, schema: TableSchema, columns: list[str] | None) -> list[str]:
    chosen = columns if columns is not None else schema.features
    return [c for c in chosen if c in df.columns and df[c].dtype.is_numeric()]


def fit(df: pl.DataFrame, schema: TableSchema, params: OutliersParams, seed: int = 0) -> State:
    t = params.threshold or DEFAULT_THRESHOLD[params.method]
    bounds = {}
    for c in numeric_columns(df, schema, params.columns):
        values = df[c].cast(pl.Float64).fill_nan(None).drop_nulls()
        if not len(values):
            continue
        if params.method == "zscore":
            # polars types these as any Python literal; on a Float64 series they are floats
            centre = float(values.mean())  # type: ignore[arg-type]
            spread = float(values.std(ddof=0))  # type: ignore[arg-type]
            bounds[c] = [centre - t * spread, centre + t * spread]
        else:
            q1 = float(values.quantile(0.25, "linear"))  # type: ignore[arg-type]
            q3 = float(values.quantile(0.75, "linear"))  # type: ignore[arg-type]
            bounds[c] = [q1 - t * (q3 - q1), q3 + t * (q3 - q1)]
    return {"bounds": bounds}


def apply(
    df: pl.DataFrame, schema: TableSchema, params: OutliersParams, state: State
) -> tuple[pl.DataFrame, TableSchema]:
    bounds = state["bounds"]
    if params.action == "clip":
        return df.with_columns(
            pl.col(c).clip(lo, hi).cast(df[c].dtype) for c, (lo, hi) in bounds.items()
        ), schema
    inside = [pl.col(c).is_null() | pl.col(c).is_between(lo, hi) for c, (lo, hi) in bounds.items()]
    return (df.filter(pl.all_horizontal(inside)) if inside else df), schema


def apply_at_prediction(
    df: pl.DataFrame, schema: TableSchema, params: OutliersParams, state: State
) -> tuple[pl.DataFrame, TableSchema]:
    """`apply` for rows to score: `clip` clips as at training; `drop` keeps every row as it
    is (each input row gets a prediction)."""
    return apply(df, schema, params, state) if params.action == "clip" else (df, schema)
