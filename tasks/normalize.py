"""Normalize: scale features with statistics learned from the training part only."""

from __future__ import annotations

from typing import Literal

import numpy as np
import polars as pl
from prefect import task
from pydantic import Field
from scipy.special import ndtri

from trainflow.artifacts import ArtifactRef
from trainflow.caching import CACHED
from trainflow.errors import DataError
from trainflow.spec.base import Section
from trainflow.steps import State, transform
from trainflow.tables import IMAGE_COLUMN, TableSchema


class NormalizeParams(Section):
    """Tabular features are scaled per column; images per channel.

    standard: (x - mean) / std; minmax: to [0, 1]; robust: (x - median) / IQR; max_abs: x / max|x|;
    log1p: sign(x) * log(1 + |x|), learns nothing; quantile (tabular only): each column mapped
    through the training part's quantiles to a uniform or normal distribution.
    """

    type: Literal["normalize"]
    method: Literal["standard", "minmax", "robust", "max_abs", "log1p", "quantile"] = "standard"
    quantiles: int = Field(100, ge=2, le=10_000)
    output: Literal["uniform", "normal"] = "uniform"


def _values(df: pl.DataFrame, schema: TableSchema) -> tuple[np.ndarray, list[str]]:
    """(columns-or-channels, values) matrix of the features and the names of its rows."""
    if schema.image_shape:
        flat = np.asarray(df[IMAGE_COLUMN].to_list(), dtype=np.float64)
        channels = flat.reshape(len(df), schema.image_shape[0], -1).transpose(1, 0, 2)
        return channels.reshape(schema.image_shape[0], -1), [
            f"channel_{i}" for i in range(schema.image_shape[0])]
    return df.select(schema.features).cast(pl.Float64).to_numpy().T, schema.features


def fit(df: pl.DataFrame, schema: TableSchema, params: NormalizeParams, seed: int = 0) -> State:
    if params.method == "log1p":
        return {}
    values, names = _values(df, schema)
    if params.method == "quantile":
        if schema.image_shape:
            raise DataError("normalize: method quantile is for tabular features; use standard, "
                            "minmax, robust, max_abs or log1p for images")
        grid = np.linspace(0, 1, min(params.quantiles, max(values.shape[1], 2)))
        return {"quantiles": {n: np.nanquantile(v, grid).tolist() for n, v in zip(names, values)}}
    if params.method == "standard":
        shift, scale = np.nanmean(values, axis=1), np.nanstd(values, axis=1)
    elif params.method == "minmax":
        shift = np.nanmin(values, axis=1)
        scale = np.nanmax(values, axis=1) - shift
    elif params.method == "robust":
        low, shift, high = np.nanpercentile(values, [25, 50, 75], axis=1)
        scale = high - low
    else:  # max_abs
        shift, scale = np.zeros(len(values)), np.nanmax(np.abs(values), axis=1)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    return {"shift": dict(zip(names, shift.tolist())), "scale": dict(zip(names, scale.tolist()))}


def _scale(values: np.ndarray, names: list[str], params: NormalizeParams,
           state: State) -> np.ndarray:
    if params.method == "log1p":
        return np.sign(values) * np.log1p(np.abs(values))
    if params.method == "quantile":
        out = np.empty_like(values)
        for i, name in enumerate(names):
            ranks = np.asarray(state["quantiles"][name])
            out[i] = np.interp(values[i], ranks, np.linspace(0, 1, len(ranks)))
        if params.output == "normal":  # clipped so that the extremes stay finite
            out = ndtri(np.clip(out, 1e-7, 1 - 1e-7))
        return out
    shift = np.array([state["shift"][n] for n in names])[:, None]
    scale = np.array([state["scale"][n] for n in names])[:, None]
    return (values - shift) / scale


def apply(df: pl.DataFrame, schema: TableSchema, params: NormalizeParams,
          state: State) -> tuple[pl.DataFrame, TableSchema]:
    values, names = _values(df, schema)
    scaled = _scale(values, names, params, state)
    if schema.image_shape:
        flat = scaled.reshape(schema.image_shape[0], len(df), -1).transpose(1, 0, 2)
        series = pl.Series(IMAGE_COLUMN, flat.reshape(len(df), -1).astype(np.float32))
        return df.with_columns(series.cast(pl.List(pl.Float32))), schema
    return df.with_columns(pl.Series(name, column) for name, column in zip(names, scaled)), schema


@task(name="normalize", **CACHED)
def normalize(data: ArtifactRef, params: NormalizeParams, seed: int,
              store: str) -> ArtifactRef:
    """Scale features with statistics learned from the training part, applied to every part."""
    return transform(data, params, fit, apply, seed, store)
