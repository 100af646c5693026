"""Normalize: scale features with statistics learned from the training part only."""

from __future__ import annotations

import numpy as np
import polars as pl

from trainflow.errors import DataError
from trainflow.spec.steps import NormalizeParams
from trainflow.steps import Frame, State, like
from trainflow.tables import IMAGE_COLUMN, TableSchema


def _image_values(df: pl.DataFrame, schema: TableSchema) -> np.ndarray:
    """(channels, values) matrix of the pixels."""
    flat = np.asarray(df[IMAGE_COLUMN].to_list(), dtype=np.float64)
    channels = flat.reshape(len(df), schema.image_shape[0], -1).transpose(1, 0, 2)
    return channels.reshape(schema.image_shape[0], -1)


def _channel_names(schema: TableSchema) -> list[str]:
    return [f"channel_{i}" for i in range(schema.image_shape[0])]


def _column_stats(frame: Frame, features: list[str], params: NormalizeParams) -> State:
    """Shift and scale per column as one streaming aggregation over the training part."""
    col = {c: pl.col(c).cast(pl.Float64).fill_nan(None) for c in features}
    if params.method == "standard":
        shift = [e.mean() for e in col.values()]
        scale = [e.std(ddof=0) for e in col.values()]
    elif params.method == "minmax":
        shift = [e.min() for e in col.values()]
        scale = [e.max() - e.min() for e in col.values()]
    elif params.method == "robust":
        shift = [e.quantile(0.5, "linear") for e in col.values()]
        scale = [e.quantile(0.75, "linear") - e.quantile(0.25, "linear") for e in col.values()]
    else:  # max_abs
        shift = [pl.lit(0.0) for _ in features]
        scale = [e.abs().max() for e in col.values()]
    row = (
        frame.lazy()
        .select(
            *(e.alias(f"shift:{c}") for c, e in zip(features, shift)),
            *(e.alias(f"scale:{c}") for c, e in zip(features, scale)),
        )
        .collect(engine="streaming")
        .row(0)
    )
    n = len(features)
    return {
        "shift": {c: float(v) if v is not None else 0.0 for c, v in zip(features, row[:n])},
        "scale": {c: _usable(v) for c, v in zip(features, row[n:])},
    }


def _usable(scale: float | None) -> float:
    return float(scale) if scale is not None and np.isfinite(scale) and scale > 0 else 1.0


def fit(frame: Frame, schema: TableSchema, params: NormalizeParams, seed: int = 0) -> State:
    if params.method == "log1p":
        return {}
    if params.method == "quantile":
        if schema.image_shape:
            raise DataError(
                "normalize: method quantile is for tabular features; use standard, "
                "minmax, robust, max_abs or log1p for images"
            )
        values = frame.lazy().select(schema.features).cast(pl.Float64).collect().to_numpy().T
        grid = np.linspace(0, 1, min(params.quantiles, max(values.shape[1], 2)))
        return {
            "quantiles": {
                n: np.nanquantile(v, grid).tolist() for n, v in zip(schema.features, values)
            }
        }
    if not schema.image_shape:
        return _column_stats(frame, schema.features, params)
    values = _image_values(frame.lazy().collect(), schema)
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
    names = _channel_names(schema)
    return {
        "shift": dict(zip(names, shift.tolist())),
        "scale": {n: _usable(v) for n, v in zip(names, scale.tolist())},
    }


def _scale_images(
    values: np.ndarray, params: NormalizeParams, state: State, schema: TableSchema
) -> np.ndarray:
    if params.method == "log1p":
        return np.sign(values) * np.log1p(np.abs(values))
    names = _channel_names(schema)
    shift = np.array([state["shift"][n] for n in names])[:, None]
    scale = np.array([state["scale"][n] for n in names])[:, None]
    return (values - shift) / scale


def _quantile_map(column: pl.Series, ranks: list[float], output: str) -> pl.Series:
    mapped = np.interp(column.to_numpy(), np.asarray(ranks), np.linspace(0, 1, len(ranks)))
    if output == "normal":  # clipped so that the extremes stay finite
        from scipy.special import ndtri  # here: SciPy costs a second where no quantile runs

        mapped = ndtri(np.clip(mapped, 1e-7, 1 - 1e-7))
    return pl.Series(column.name, mapped)


def _column_expr(name: str, params: NormalizeParams, state: State) -> pl.Expr:
    value = pl.col(name).cast(pl.Float64)
    if params.method == "log1p":
        return (value.sign() * value.abs().log1p()).alias(name)
    if params.method == "quantile":
        ranks = state["quantiles"][name]
        return value.map_batches(
            lambda s: _quantile_map(s, ranks, params.output), return_dtype=pl.Float64
        ).alias(name)
    return ((value - state["shift"][name]) / state["scale"][name]).alias(name)


def apply(
    frame: Frame, schema: TableSchema, params: NormalizeParams, state: State
) -> tuple[Frame, TableSchema]:
    if not schema.image_shape:
        return like(
            frame,
            frame.lazy().with_columns(_column_expr(c, params, state) for c in schema.features),
        ), schema
    df = frame.lazy().collect()
    scaled = _scale_images(_image_values(df, schema), params, state, schema)
    flat = scaled.reshape(schema.image_shape[0], len(df), -1).transpose(1, 0, 2)
    series = pl.Series(IMAGE_COLUMN, flat.reshape(len(df), -1).astype(np.float32))
    return df.with_columns(series.cast(pl.List(pl.Float32))), schema
