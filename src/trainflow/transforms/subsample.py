"""Subsample: keep a (stratified) fraction of the rows, for faster experiments."""

from __future__ import annotations

import numpy as np
import polars as pl
from sklearn.model_selection import train_test_split

from trainflow.spec.steps import SubsampleParams
from trainflow.steps import State
from trainflow.tables import TableSchema
from trainflow.target_bins import bin_count, quantile_codes


def fit(df: pl.DataFrame, schema: TableSchema, params: SubsampleParams, seed: int = 0) -> State:
    return {"seed": seed}


def apply(
    df: pl.DataFrame, schema: TableSchema, params: SubsampleParams, state: State
) -> tuple[pl.DataFrame, TableSchema]:
    labels = df[schema.target].to_numpy() if params.stratify else None
    if labels is not None and schema.task == "regression":  # quantile bins of the target
        kept = round(len(df) * params.fraction)
        bins = bin_count(min(kept, len(df) - kept))
        labels = quantile_codes(labels, bins, "a stratified subsample")
    keep, _ = train_test_split(
        np.arange(len(df)), train_size=params.fraction, random_state=state["seed"], stratify=labels
    )
    return df[np.sort(keep)], schema
