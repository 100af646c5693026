"""Normalize: standard or min-max scaling, fitted on the training part only."""

from __future__ import annotations

from typing import Literal

import numpy as np
import polars as pl
from prefect import task

from trainflow.artifacts import ArtifactRef
from trainflow.caching import CACHED
from trainflow.spec.base import Section
from trainflow.steps import State, transform
from trainflow.tables import IMAGE_COLUMN, TableSchema


class NormalizeParams(Section):
    """Tabular features are scaled per column; images per channel."""

    type: Literal["normalize"]
    method: Literal["standard", "minmax"] = "standard"


def _channels(df: pl.DataFrame, schema: TableSchema) -> np.ndarray:
    flat = np.asarray(df[IMAGE_COLUMN].to_list(), dtype=np.float64)
    return flat.reshape(len(df), schema.image_shape[0], -1)


def fit(df: pl.DataFrame, schema: TableSchema, params: NormalizeParams,
        seed: int = 0) -> State:
    if schema.image_shape:
        values = _channels(df, schema).transpose(1, 0, 2).reshape(schema.image_shape[0], -1)
        names = [f"channel_{i}" for i in range(len(values))]
    else:
        values = df.select(schema.features).cast(pl.Float64).to_numpy().T
        names = schema.features
    if params.method == "standard":
        shift, scale = np.nanmean(values, axis=1), np.nanstd(values, axis=1)
    else:
        shift = np.nanmin(values, axis=1)
        scale = np.nanmax(values, axis=1) - shift
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    return {"shift": dict(zip(names, shift.tolist())), "scale": dict(zip(names, scale.tolist()))}


def apply(df: pl.DataFrame, schema: TableSchema, params: NormalizeParams,
          state: State) -> tuple[pl.DataFrame, TableSchema]:
    shift, scale = state["shift"], state["scale"]
    if schema.image_shape:
        channels = _channels(df, schema)
        shift_v = np.array(list(shift.values()))[None, :, None]
        scale_v = np.array(list(scale.values()))[None, :, None]
        scaled = ((channels - shift_v) / scale_v).astype(np.float32).reshape(len(df), -1)
        series = pl.Series(IMAGE_COLUMN, scaled).cast(pl.List(pl.Float32))
        return df.with_columns(series), schema
    return df.with_columns(((pl.col(c).cast(pl.Float64) - shift[c]) / scale[c]).alias(c)
                           for c in schema.features), schema


@task(name="normalize", **CACHED)
def normalize(data: ArtifactRef, params: NormalizeParams, seed: int,
              store: str) -> ArtifactRef:
    """Scale features with statistics learned from the training part, applied to every part."""
    return transform(data, params, fit, apply, seed, store)
