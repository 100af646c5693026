"""Clean: drop rows without a label, fill or drop missing values, drop duplicate rows."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl

from trainflow.errors import ArtifactError, DataError
from trainflow.spec.steps import CleanParams
from trainflow.steps import Frame, State, like
from trainflow.tables import TableSchema, first_rows, keep_rows, row_hashes, unique_rows


def _columns(frame: Frame, schema: TableSchema) -> tuple[list[str], list[str], list[str]]:
    """Numeric, text and float feature columns (images have none: their pixels are never null)."""
    dtypes = frame.lazy().collect_schema()
    present = [c for c in schema.features if c in dtypes and not schema.image_shape]
    numeric = [c for c in present if dtypes[c].is_numeric()]
    return (
        numeric,
        [c for c in present if c not in numeric],
        [c for c in numeric if dtypes[c].is_float()],
    )


def fit(frame: Frame, schema: TableSchema, params: CleanParams, seed: int = 0) -> State:
    return _fit(frame, schema, params)[0]


def _fit(frame: Frame, schema: TableSchema, params: CleanParams) -> tuple[State, np.ndarray | None]:
    """The fill values, and (when duplicates were searched for them) the hashes of the
    labelled rows before filling, from which the search after filling starts."""
    numeric, text, _ = _columns(frame, schema)
    if params.missing in ("drop", "keep", "forward_fill", "backward_fill"):
        return {"fill": {}}, None
    # Statistics describe the rows that stay: labelled (if so declared) and de-duplicated.
    kept = _filled(frame, schema, params.model_copy(update={"missing": "keep"}), {"fill": {}})
    hashes = None
    if params.drop_duplicates:  # the duplicate search holds the rows' keys anyway: run it once
        keys = _keys(kept, params)
        hashes = row_hashes(kept, keys)
        kept = (
            keep_rows(kept, first_rows(kept, keys, hashes))
            .select(numeric + text)
            .collect(engine="streaming")
            .lazy()
        )
    fill = {c: _mode(kept, c) for c in text}  # text columns: the most frequent value
    if params.missing == "constant":
        fill.update(dict.fromkeys(numeric, params.fill_value))
    elif numeric and params.missing == "median":
        fill.update(_medians(kept, numeric))
    elif numeric:
        stat = {
            "mean": lambda c: pl.col(c).mean(),
            "mode": lambda c: pl.col(c).drop_nulls().mode().sort().first(),
        }[params.missing]
        # one aggregation per query kind: a mean streams, a median or mode holds its column
        fill.update(
            kept.select(stat(c).alias(c) for c in numeric)
            .collect(engine="streaming")
            .row(0, named=True)
        )
    return {
        "fill": {
            c: v if isinstance(v, str) else (0.0 if v is None else float(v))
            for c, v in fill.items()
        }
    }, hashes


def _refilled_hashes(
    frame: pl.LazyFrame,
    schema: TableSchema,
    params: CleanParams,
    state: State,
    hashes: np.ndarray,
    keys: list[str] | None,
) -> np.ndarray:
    """The filled rows' hashes: a row without missing values is unchanged by filling, so
    only the rows with one are hashed again (all of them where filling changed a column's
    type: an integer column filled with a median holds floats, which hash differently)."""
    labelled = _filled(frame, schema, params.model_copy(update={"missing": "keep"}), {"fill": {}})
    filled = _filled(frame, schema, params, state)
    if labelled.collect_schema() != filled.collect_schema():
        return row_hashes(filled, keys)
    filled_columns = [c for c in state["fill"] if keys is None or c in keys]
    if not filled_columns:
        return hashes
    changed = (
        labelled.select(pl.any_horizontal(pl.col(c).is_null() for c in filled_columns))
        .collect(engine="streaming")
        .to_series()
        .to_numpy()
    )
    hashes = hashes.copy()
    hashes[changed] = row_hashes(keep_rows(filled, changed), keys)
    return hashes


def _medians(frame: pl.LazyFrame, columns: list[str]) -> dict[str, float | None]:
    """Each column's median (None for an all-missing one): NumPy selects the middle values
    (introselect) where a median query sorts the column; two columns at a time."""

    def median(column: str) -> float | None:
        values = frame.select(pl.col(column).cast(pl.Float64)).collect()[column]
        present = len(values) - values.null_count()
        if not present:
            return None
        values = values.to_numpy()  # a copy, missing values as NaN (which sort last)
        if not values.flags.writeable:
            values = values.copy()
        middle = [(present - 1) // 2, present // 2]
        values.partition(middle)
        return float((values[middle[0]] + values[middle[1]]) / 2)

    with ThreadPoolExecutor(2) as pool:  # NumPy's selection runs without the GIL
        return dict(zip(columns, pool.map(median, columns)))


def _mode(frame: pl.LazyFrame, column: str):
    """The most frequent non-null value (the smallest of tied ones, so the result is stable),
    counted by a streaming group-by rather than by holding the column."""
    counts = (
        frame.select(column)
        .drop_nulls()
        .group_by(column)
        .len()
        .sort(["len", column], descending=[True, False])
        .head(1)
        .collect(engine="streaming")
    )
    return counts[column][0] if len(counts) else None


def _filled(frame: Frame, schema: TableSchema, params: CleanParams, state: State) -> pl.LazyFrame:
    """The rows before the duplicate search: labelled, missing values dropped or filled."""
    numeric, text, floats = _columns(frame, schema)
    lf = frame.lazy().with_columns(pl.col(c).fill_nan(None) for c in floats)
    if params.drop_missing_label:
        lf = lf.filter(pl.col(schema.target).is_not_null())
    if params.missing == "drop" and numeric + text:
        lf = lf.drop_nulls(subset=numeric + text)
    elif params.missing in ("forward_fill", "backward_fill"):  # along the row order
        strategy = params.missing.removesuffix("_fill")
        lf = lf.with_columns(pl.col(c).fill_null(strategy=strategy) for c in numeric + text)
    elif state["fill"]:
        lf = lf.with_columns(
            pl.col(c).fill_null(v) for c, v in state["fill"].items() if v is not None
        )
    return lf


def _keys(frame: pl.LazyFrame, params: CleanParams) -> list[str] | None:
    keys = params.drop_duplicates if isinstance(params.drop_duplicates, list) else None
    columns = frame.collect_schema().names()
    missing_keys = [k for k in keys or [] if k not in columns]
    if missing_keys:
        raise DataError(
            f"clean.drop_duplicates: key columns {missing_keys} are not in the "
            f"table; columns are {columns}"
        )
    return keys


def apply(
    frame: Frame, schema: TableSchema, params: CleanParams, state: State
) -> tuple[Frame, TableSchema]:
    """Fill, then drop duplicates: by the stored `_keep` array when the state has one (a
    clean view: one entry per row of `_filled`), else by searching for them."""
    lf = _filled(frame, schema, params, state)
    if params.drop_duplicates:
        keep = state.get("_keep")
        if keep is not None and (keep.dtype != np.bool_ or keep.ndim != 1):
            raise ArtifactError(
                f"a clean view's keep.npy holds {keep.dtype} {keep.shape}, "
                "not one true/false a row: rerun the pipeline to rebuild it"
            )
        lf = keep_rows(lf, keep) if keep is not None else unique_rows(lf, _keys(lf, params))
    return like(frame, lf), schema


def apply_at_prediction(
    frame: Frame, schema: TableSchema, params: CleanParams, state: State
) -> tuple[Frame, TableSchema]:
    """`apply` for rows to score: every row stays (no label filter, no duplicate search, no
    row dropped for a missing value); missing values are filled as at training."""
    keep_rows_too = params.model_copy(
        update={
            "drop_missing_label": False,
            "drop_duplicates": False,
            "missing": "keep" if params.missing == "drop" else params.missing,
        }
    )
    return apply(frame, schema, keep_rows_too, state)


def fit_rows(frame: Frame, schema: TableSchema, params: CleanParams, seed: int = 0) -> State:
    """`fit` for the very rows the step cleans (a table, before split): with
    `drop_duplicates`, also which of them stay (`_keep`, one true/false a row), so that
    readers apply the step as a query instead of searching for duplicates again."""
    if not params.drop_duplicates:
        return fit(frame, schema, params)
    # the duplicate searches and statistics read the table four times: it is held for them
    frame = frame.lazy().collect(engine="streaming").lazy()
    state, hashes = _fit(frame, schema, params)
    filled = _filled(frame, schema, params, state)
    keys = _keys(filled, params)
    if hashes is not None:
        hashes = _refilled_hashes(frame, schema, params, state, hashes, keys)
    state["_keep"] = first_rows(filled, keys, hashes)
    return state
