"""Synthesize: new training rows for scarce classes, marked in a `synthetic` column."""

from __future__ import annotations

import numpy as np
import polars as pl
from sklearn.mixture import GaussianMixture

from trainflow.errors import DataError
from trainflow.spec.steps import SynthesizeParams
from trainflow.steps import State
from trainflow.tables import SYNTHETIC_COLUMN as MARKER
from trainflow.tables import TableSchema


def fit(df: pl.DataFrame, schema: TableSchema, params: SynthesizeParams, seed: int = 0) -> State:
    return {"seed": seed}


def _generate(
    x: np.ndarray, n: int, params: SynthesizeParams, rng: np.random.Generator, seed: int
) -> np.ndarray:
    if params.method == "interpolate" or len(x) < 2 * params.components:
        first, second = rng.integers(0, len(x), n), rng.integers(0, len(x), n)
        return x[first] + rng.random((n, 1)) * (x[second] - x[first])
    mixture = GaussianMixture(params.components, covariance_type="diag", random_state=seed)
    return mixture.fit(x).sample(n)[0][rng.permutation(n)]


def apply(
    df: pl.DataFrame, schema: TableSchema, params: SynthesizeParams, state: State
) -> tuple[pl.DataFrame, TableSchema]:
    if schema.image_shape:
        raise DataError("synthesize works on tabular features; for images use train.augment.mixup")
    text = [c for c in schema.features if not df[c].dtype.is_numeric()]
    if text or any(df[c].null_count() for c in schema.features):
        raise DataError(
            f"synthesize needs complete numeric features ({text or 'gaps'}): add "
            "`clean` and `encode` steps before it"
        )
    rng = np.random.default_rng(state["seed"])
    counts = df[schema.target].value_counts()
    counts = dict(zip(counts[schema.target].to_list(), counts["count"].to_list()))
    target = params.target or max(counts.values())
    real = df.with_columns(pl.lit(0, pl.Int8).alias(MARKER)) if MARKER not in df.columns else df
    parts = [real]
    for label in sorted(counts):
        missing = target - counts[label]
        if missing <= 0:
            continue
        rows = df.filter(pl.col(schema.target) == label)
        x = rows.select(schema.features).cast(pl.Float64).to_numpy()
        new = _generate(x, missing, params, rng, state["seed"])
        synthetic = {
            c: pl.Series(c, new[:, i]).cast(df[c].dtype, strict=False)
            for i, c in enumerate(schema.features)
        }
        block = pl.DataFrame(
            {
                **synthetic,
                schema.target: [label] * missing,
                MARKER: pl.Series([1] * missing, dtype=pl.Int8),
            }
        )
        for other in (c for c in real.columns if c not in block.columns):  # weight 1, else null
            block = block.with_columns(
                pl.lit(1.0 if other == schema.weight else None, real[other].dtype).alias(other)
            )
        parts.append(block.select(real.columns))
    return pl.concat(parts), schema
