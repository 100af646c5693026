"""Clean: drop rows without a label, fill or drop missing values, drop duplicate rows."""

from __future__ import annotations

from typing import Literal

import polars as pl
from prefect import task
from pydantic import model_validator

from trainflow.artifacts import ArtifactRef
from trainflow.caching import CACHED
from trainflow.spec.base import Section
from trainflow.steps import State, transform
from trainflow.tables import TableSchema


class CleanParams(Section):
    """Before `split` it is fitted on the whole table; after `split`, on the training part."""

    type: Literal["clean"]
    drop_duplicates: bool = True
    missing: Literal["drop", "mean", "median", "mode", "constant", "keep"] = "drop"
    fill_value: float | None = None
    drop_missing_label: bool = True

    @model_validator(mode="after")
    def _fill_value_for_constant(self):
        if self.missing == "constant" and self.fill_value is None:
            raise ValueError("missing: constant needs a fill_value")
        return self


def _numeric(df: pl.DataFrame, schema: TableSchema) -> list[str]:
    return [c for c in schema.features if c in df.columns and df[c].dtype.is_numeric()]


def fit(df: pl.DataFrame, schema: TableSchema, params: CleanParams,
        seed: int = 0) -> State:
    columns = _numeric(df, schema)
    if params.missing in ("drop", "keep") or not columns:
        return {"fill": {}}
    if params.missing == "constant":
        return {"fill": {c: params.fill_value for c in columns}}
    # Statistics describe the rows that stay: labelled (if so declared) and de-duplicated.
    kept = apply(df, schema, params.model_copy(update={"missing": "keep"}), {"fill": {}})[0]
    nan_free = kept.select(columns)
    stat = {"mean": lambda s: s.mean(), "median": lambda s: s.median(),
            "mode": lambda s: s.drop_nulls().mode().sort().first()}[params.missing]
    fill = {c: stat(nan_free[c]) for c in columns}
    return {"fill": {c: (0.0 if v is None else float(v)) for c, v in fill.items()}}


def apply(df: pl.DataFrame, schema: TableSchema, params: CleanParams,
          state: State) -> tuple[pl.DataFrame, TableSchema]:
    columns = _numeric(df, schema)
    df = df.with_columns(pl.col(c).fill_nan(None) for c in columns if df[c].dtype.is_float())
    if params.drop_missing_label:
        df = df.filter(pl.col(schema.target).is_not_null())
    if params.missing == "drop" and columns:
        df = df.drop_nulls(subset=columns)
    elif state["fill"]:
        df = df.with_columns(pl.col(c).fill_null(v) for c, v in state["fill"].items())
    if params.drop_duplicates:
        df = df.unique(maintain_order=True)
    return df, schema


@task(name="clean", **CACHED)
def clean(data: ArtifactRef, params: CleanParams, seed: int,
          store: str) -> ArtifactRef:
    """Clean a table (before split) or every part of the splits, fitted on train (after split)."""
    return transform(data, params, fit, apply, seed, store)
