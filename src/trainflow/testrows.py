"""The raw rows of a run's test split: the ingested rows that the split put in `test`, as a
user would hand them to `trainflow predict` (before any data step).

The split numbers the rows of the table after the pre-split steps, which may drop rows
(missing labels, duplicates, anomalies), so those rows are traced back: the ingested rows get
a row number, pass the pre-split steps again with the states training used (a view's stored
state; a stored step fitted again on the same rows with the same seed, as training fitted
it), and the numbers that land in `test` pick the raw rows. Counts are checked against the
artifacts at each end, so a trace that went astray is an error, never a wrong comparison.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from trainflow import registry
from trainflow.artifacts import ArtifactRef
from trainflow.errors import ArtifactError
from trainflow.steps import PART_FILE, SPLITS, applied_state, scan_parts
from trainflow.tables import TableSchema

ROW = "__trainflow_raw_row"
TEST = SPLITS.index("test")


def raw_test_rows(
    ingested: ArtifactRef,
    steps: list[ArtifactRef],
    pre_split: list[Any],
    splits: ArtifactRef,
    seed: int,
) -> pl.DataFrame:
    """The ingested rows of the test part of `splits` (the split step's artifact), in their
    order. `steps`: the data flow's step artifacts (the first len(pre_split) are the
    pre-split steps'); `pre_split`: those steps' params; `seed`: the pipeline's."""
    ((frame, schema),) = scan_parts(ingested).values()
    traced: pl.LazyFrame = frame.with_row_index(ROW)
    for ref, params in zip(steps[: len(pre_split)], pre_split):
        traced, schema = _replayed(ref, params, traced, schema, seed)
        if ROW not in traced.collect_schema().names():
            raise ArtifactError(
                f"the {params.type} step does not carry extra columns, so "
                "the test rows cannot be traced back to the ingested rows"
            )
    numbers = traced.select(ROW).collect()[ROW].to_numpy()
    part = _part_numbers(splits)
    if len(part) != len(numbers):
        raise ArtifactError(
            f"{splits.path}: the split numbers {len(part)} rows, but the "
            f"pre-split steps traced again give {len(numbers)}"
        )
    rows = numbers[part == TEST]
    expected = splits.meta.get("parts", {}).get("test", {}).get("rows")
    if expected is not None and expected != len(rows):
        raise ArtifactError(
            f"{splits.path}: the test part holds {expected} rows, the trace found {len(rows)}"
        )
    return frame.collect()[np.sort(rows)]


def _replayed(
    ref: ArtifactRef, params: Any, frame: pl.LazyFrame, schema: TableSchema, seed: int
) -> tuple[pl.LazyFrame, TableSchema]:
    """`frame` through one pre-split step as training ran it."""
    entry = registry.STEPS[params.type]
    ref.verify()
    state = applied_state(ref)
    if state is not None:  # a view read by applying its state: exactly what training applied
        out, schema = entry.apply(frame, schema, params, state)
        return out.lazy(), schema
    # A stored step keeps only its JSON state (not, say, a fitted detector): fitting it again
    # on the same rows with the same seed, as training did on the whole table, gives it back.
    rows = frame.collect()
    state = entry.fit(rows.drop(ROW), schema, params, seed)
    out, schema = entry.apply(rows, schema, params, state)
    return out.lazy(), schema


def _part_numbers(splits: ArtifactRef) -> np.ndarray:
    """Each row's part (0 train, 1 val, 2 test) as the split view stored it."""
    file = splits.path / PART_FILE
    if splits.kind != "splits" or not file.is_file():
        raise ArtifactError(
            f"{splits.path} is not a split view (no {PART_FILE}): pass the "
            "split step's artifact (the data flow's raw_splits)"
        )
    splits.verify()
    return np.load(file, allow_pickle=False)
