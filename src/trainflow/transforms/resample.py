"""Resample: imbalanced-learn's over- and under-samplers, on the training part only."""

from __future__ import annotations

import inspect

import numpy as np
import polars as pl

from trainflow.errors import DataError
from trainflow.spec.steps import SAMPLERS as SAMPLER_METHODS
from trainflow.spec.steps import ResampleParams, sampler_class
from trainflow.steps import State
from trainflow.tables import SYNTHETIC_COLUMN, TableSchema

# The sampler class of each `resample.method` (the spec names them; imported here).
SAMPLERS = {method: sampler_class(method) for method in SAMPLER_METHODS}


def sampler(params: ResampleParams, classes: list[str], seed: int):
    """The configured imbalanced-learn sampler (class names map to their label strings)."""
    cls = SAMPLERS[params.method]
    kwargs = dict(params.options)
    kwargs["sampling_strategy"] = params.sampling_strategy
    if "random_state" in inspect.signature(cls).parameters:
        kwargs["random_state"] = seed
    return cls(**kwargs)


def fit(df: pl.DataFrame, schema: TableSchema, params: ResampleParams, seed: int = 0) -> State:
    return {"seed": seed}


def apply(
    df: pl.DataFrame, schema: TableSchema, params: ResampleParams, state: State
) -> tuple[pl.DataFrame, TableSchema]:
    if schema.image_shape:
        raise DataError("resample works on tabular features; for images use augmentation")
    text = [c for c in schema.features if not df[c].dtype.is_numeric()]
    if text and params.method != "smotenc":
        raise DataError(
            f"resample ({params.method}) needs numeric features, but {text} hold "
            "text: add an `encode` step before it"
        )
    x = df.select(schema.features).to_numpy()
    y = df[schema.target].to_numpy()
    neighbours = params.options.get(
        "k_neighbors", 5 if "smote" in params.method or params.method == "adasyn" else None
    )
    if isinstance(neighbours, int):
        counts = df[schema.target].value_counts()
        scarce = [
            (str(c), int(n))
            for c, n in zip(counts[schema.target], counts["count"])
            if n <= neighbours
        ]
        if scarce and params.sampling_strategy != "majority":
            label, count = min(scarce, key=lambda item: item[1])
            raise DataError(
                f"resample ({params.method}): k_neighbors={neighbours} must be below "
                f"the smallest class's row count, but class {label!r} has {count} "
                f"row(s) in the training part; lower options.k_neighbors"
            )
    # Integer codes in sorted label order: imbalanced-learn sees the same class order as with
    # the strings (so the same draws and output), without sorting strings again and again.
    names = np.array(sorted(set(y.tolist())), dtype=object)
    codes = np.searchsorted(names, y).astype(np.int64)
    strategy = params.sampling_strategy
    if isinstance(strategy, dict):
        strategy = {int(np.searchsorted(names, k)): v for k, v in strategy.items() if k in names}
    extras = [c for c in df.columns if c not in (*schema.features, schema.target)]
    if extras and params.method in ("smote_tomek", "smote_enn"):
        raise DataError(
            f"resample ({params.method}) cannot carry the columns {extras} along: "
            "its cleaning pass does not report which rows it kept; use smote (or "
            "another sampler) or leave those columns out"
        )
    try:
        chosen = sampler(
            params.model_copy(update={"sampling_strategy": strategy}), schema.classes, state["seed"]
        )
        x_res, codes_res = chosen.fit_resample(x, codes)
        y_res = names[codes_res]
    except ValueError as exc:
        raise DataError(f"resample ({params.method}) failed on the training part: {exc}") from None
    out = pl.from_numpy(x_res, schema=schema.features)
    out = out.with_columns(
        pl.col(c).cast(df[c].dtype, strict=False)
        for c in schema.features
        if out[c].dtype != df[c].dtype
    )
    out = out.with_columns(pl.Series(schema.target, y_res, dtype=pl.Utf8))
    if extras:
        out = out.with_columns(_carried(df.select(extras), chosen, len(out), schema))
    return out.select(df.columns), schema


def _carried(extras: pl.DataFrame, chosen, rows: int, schema: TableSchema) -> list[pl.Series]:
    """The non-feature columns of the resampled rows: a kept row keeps its values (samplers
    that choose rows report them in `sample_indices_`; SMOTE-style samplers keep every original
    row first); a new row gets weight 1, `synthetic` = 1 and nulls elsewhere."""
    index = getattr(chosen, "sample_indices_", None)
    kept = extras[np.asarray(index)] if index is not None else extras
    new = rows - len(kept)
    fill = {schema.weight: 1.0, SYNTHETIC_COLUMN: 1}
    return [
        pl.concat([kept[c], pl.Series(c, [fill.get(c)] * new).cast(kept[c].dtype)])
        for c in extras.columns
    ]
