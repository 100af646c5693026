"""Clean: drop rows without a label, fill or drop missing values, drop duplicate rows."""

from __future__ import annotations

from typing import Literal

import polars as pl
from prefect import task
from pydantic import Field, model_validator

from trainflow.artifacts import ArtifactRef
from trainflow.caching import CACHED
from trainflow.errors import DataError
from trainflow.spec.base import Section
from trainflow.steps import State, transform
from trainflow.tables import TableSchema


class CleanParams(Section):
    """Before `split` it is fitted on the whole table; after `split`, on the training part.

    mean/median/constant fill numeric columns; text columns are filled with their mode.
    """

    type: Literal["clean"]
    drop_duplicates: bool | list[str] = Field(
        True, description="true: identical rows; a list: rows sharing these key columns")
    missing: Literal["drop", "mean", "median", "mode", "constant", "forward_fill",
                     "backward_fill", "keep"] = "drop"
    fill_value: float | None = None
    drop_missing_label: bool = True

    @model_validator(mode="after")
    def _fill_value_for_constant(self):
        if self.missing == "constant" and self.fill_value is None:
            raise ValueError("missing: constant needs a fill_value")
        return self


def _columns(df: pl.DataFrame, schema: TableSchema) -> tuple[list[str], list[str]]:
    """Numeric and text feature columns (images have neither: their pixels are never null)."""
    present = [c for c in schema.features if c in df.columns and not schema.image_shape]
    numeric = [c for c in present if df[c].dtype.is_numeric()]
    return numeric, [c for c in present if c not in numeric]


def fit(df: pl.DataFrame, schema: TableSchema, params: CleanParams, seed: int = 0) -> State:
    numeric, text = _columns(df, schema)
    if params.missing in ("drop", "keep", "forward_fill", "backward_fill"):
        return {"fill": {}}
    # Statistics describe the rows that stay: labelled (if so declared) and de-duplicated.
    kept = apply(df, schema, params.model_copy(update={"missing": "keep"}), {"fill": {}})[0]
    fill: dict = {c: _mode(kept[c]) for c in text}  # text columns: the most frequent value
    if params.missing == "constant":
        fill.update({c: params.fill_value for c in numeric})
    else:
        stat = {"mean": lambda s: s.mean(), "median": lambda s: s.median(),
                "mode": _mode}[params.missing]
        fill.update({c: stat(kept[c]) for c in numeric})
    return {"fill": {c: v if isinstance(v, str) else (0.0 if v is None else float(v))
                     for c, v in fill.items()}}


def _mode(series: pl.Series):
    values = series.drop_nulls()
    return values.mode().sort().first() if len(values) else None


def apply(df: pl.DataFrame, schema: TableSchema, params: CleanParams,
          state: State) -> tuple[pl.DataFrame, TableSchema]:
    numeric, text = _columns(df, schema)
    df = df.with_columns(pl.col(c).fill_nan(None) for c in numeric if df[c].dtype.is_float())
    if params.drop_missing_label:
        df = df.filter(pl.col(schema.target).is_not_null())
    if params.missing == "drop" and numeric + text:
        df = df.drop_nulls(subset=numeric + text)
    elif params.missing in ("forward_fill", "backward_fill"):  # along the row order
        strategy = params.missing.removesuffix("_fill")
        df = df.with_columns(pl.col(c).fill_null(strategy=strategy) for c in numeric + text)
    elif state["fill"]:
        df = df.with_columns(pl.col(c).fill_null(v) for c, v in state["fill"].items()
                             if v is not None)
    if params.drop_duplicates:
        keys = params.drop_duplicates if isinstance(params.drop_duplicates, list) else None
        missing_keys = [k for k in keys or [] if k not in df.columns]
        if missing_keys:
            raise DataError(f"clean.drop_duplicates: key columns {missing_keys} are not in the "
                            f"table; columns are {df.columns}")
        df = df.unique(subset=keys, keep="first", maintain_order=True)
    return df, schema


@task(name="clean", **CACHED)
def clean(data: ArtifactRef, params: CleanParams, seed: int,
          store: str) -> ArtifactRef:
    """Clean a table (before split) or every part of the splits, fitted on train (after split)."""
    return transform(data, params, fit, apply, seed, store)
