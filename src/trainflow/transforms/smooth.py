"""Smooth: rolling mean, exponential or Gaussian smoothing of numeric series columns."""

from __future__ import annotations

import polars as pl

from trainflow.errors import DataError
from trainflow.spec.steps import SmoothParams
from trainflow.steps import State
from trainflow.tables import TableSchema


def fit(df: pl.DataFrame, schema: TableSchema, params: SmoothParams, seed: int = 0) -> State:
    return {}


def _smoothed(column: str, params: SmoothParams) -> pl.Expr:
    col = pl.col(column).cast(pl.Float64)
    if params.method == "rolling_mean":
        expr = col.rolling_mean(params.window, min_samples=1)
    elif params.method == "exponential":
        expr = col.ewm_mean(alpha=params.alpha, adjust=False)
    else:  # centred Gaussian weights, sigma = window / 4
        half, sigma = params.window // 2, params.window / 4
        weights = [
            pow(2.718281828459045, -((i - half) ** 2) / (2 * sigma**2))
            for i in range(params.window)
        ]
        expr = col.rolling_mean(params.window, weights=weights, center=True, min_samples=1)
    return (expr.over(params.group_by) if params.group_by else expr).alias(column)


def apply(
    df: pl.DataFrame, schema: TableSchema, params: SmoothParams, state: State
) -> tuple[pl.DataFrame, TableSchema]:
    named = [*params.columns, *filter(None, (params.order_by, params.group_by))]
    missing = [c for c in named if c not in df.columns]
    if missing:
        raise DataError(f"smooth: columns {missing} are not in the table; columns are {df.columns}")
    if not len(df):
        return df, schema
    index = "__trainflow_row__"
    ordered = df.with_row_index(index)
    if params.order_by:
        ordered = ordered.sort(params.order_by, maintain_order=True)
    smoothed = ordered.with_columns(_smoothed(c, params) for c in params.columns)
    return smoothed.sort(index).drop(index), schema
