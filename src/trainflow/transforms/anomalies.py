"""Anomalies: find unusual rows (IsolationForest, LocalOutlierFactor, z-score, IQR); drop them,
flag them in a column, or only report them."""

from __future__ import annotations

import numpy as np
import polars as pl

from trainflow.errors import DataError
from trainflow.spec.steps import ANOMALY_FLAG as FLAG
from trainflow.spec.steps import AnomaliesParams
from trainflow.steps import State
from trainflow.tables import TableSchema
from trainflow.transforms.outliers import DEFAULT_THRESHOLD, numeric_columns

SAMPLE_ROWS = 5


def _matrix(df: pl.DataFrame, schema: TableSchema, method: str) -> tuple[np.ndarray, list[str]]:
    columns = numeric_columns(df, schema, None)
    text = [c for c in schema.features if c not in columns]
    if method in ("isolation_forest", "lof") and (text or schema.image_shape):
        raise DataError(
            f"anomalies ({method}) needs numeric tabular features; {text or 'images'} "
            "are not: add an `encode` step first"
        )
    x = df.select(columns).cast(pl.Float64).to_numpy()
    if method in ("isolation_forest", "lof") and not np.isfinite(x).all():
        raise DataError(f"anomalies ({method}) needs complete features: add a `clean` step first")
    return x, columns


def _flags(
    df: pl.DataFrame, schema: TableSchema, params: AnomaliesParams, state: State
) -> np.ndarray:
    x, columns = _matrix(df, schema, params.method)
    if params.method in ("isolation_forest", "lof"):
        return state["_detector"].predict(x) == -1 if len(x) else np.zeros(0, bool)
    lo = np.array([state["bounds"][c][0] for c in columns])
    hi = np.array([state["bounds"][c][1] for c in columns])
    with np.errstate(invalid="ignore"):
        return ((x < lo) | (x > hi)).any(axis=1)


def fit(df: pl.DataFrame, schema: TableSchema, params: AnomaliesParams, seed: int = 0) -> State:
    x, columns = _matrix(df, schema, params.method)
    state: State = {}
    if params.method == "isolation_forest":
        from sklearn.ensemble import IsolationForest  # here: prediction only replays bounds

        state["_detector"] = IsolationForest(
            n_estimators=params.n_estimators, contamination=params.contamination, random_state=seed
        ).fit(x)
    elif params.method == "lof":
        from sklearn.neighbors import LocalOutlierFactor

        state["_detector"] = LocalOutlierFactor(
            n_neighbors=params.n_neighbors, novelty=True, contamination=params.contamination
        ).fit(x)
    else:
        t = params.threshold or DEFAULT_THRESHOLD[params.method]
        if params.method == "zscore":
            centre, spread = np.nanmean(x, 0), np.nanstd(x, 0)
            bounds = np.stack([centre - t * spread, centre + t * spread], 1)
        else:
            q1, q3 = np.nanpercentile(x, [25, 75], axis=0)
            bounds = np.stack([q1 - t * (q3 - q1), q3 + t * (q3 - q1)], 1)
        state["bounds"] = dict(zip(columns, bounds.tolist()))
    flags = _flags(df, schema, params, state)
    shown = df.filter(pl.Series(flags)).head(SAMPLE_ROWS) if len(df) else df
    state["found"] = {
        "rows": int(len(df)),
        "anomalies": int(flags.sum()),
        "sample": [
            {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
            for row in shown.drop(
                [c for c in shown.columns if shown[c].dtype == pl.List(pl.Float32)]
            ).to_dicts()
        ],
    }
    return state


def apply(
    df: pl.DataFrame, schema: TableSchema, params: AnomaliesParams, state: State
) -> tuple[pl.DataFrame, TableSchema]:
    if params.action == "report":
        return df, schema
    flags = _flags(df, schema, params, state)
    if params.action == "drop":
        return df.filter(pl.Series(~flags)), schema
    features = schema.features if FLAG in schema.features else [*schema.features, FLAG]
    return (
        df.with_columns(pl.Series(FLAG, flags.astype(np.float32))),
        schema.model_copy(update={"features": features}),
    )


def apply_at_prediction(
    df: pl.DataFrame, schema: TableSchema, params: AnomaliesParams, state: State
) -> tuple[pl.DataFrame, TableSchema]:
    """`apply` for rows to score: `flag` adds the flag column as at training; `drop` and
    `report` keep every row as it is (each input row gets a prediction)."""
    return apply(df, schema, params, state) if params.action == "flag" else (df, schema)


def prediction_refusal(params: AnomaliesParams) -> str | None:
    """Why rows cannot pass this step at prediction (the spec's own answer), or None."""
    return params.prediction_refusal()
