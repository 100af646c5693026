"""Split: stratified train/validation/test parts by declared fractions and the pipeline seed."""

from __future__ import annotations

from typing import Literal

import numpy as np
import polars as pl
from prefect import task
from pydantic import Field, model_validator
from sklearn.model_selection import StratifiedKFold, train_test_split

from trainflow.artifacts import ArtifactRef, Store
from trainflow.caching import CACHED
from trainflow.errors import DataError
from trainflow.spec.base import Section
from trainflow.steps import read_parts, write_parts
from trainflow.tables import TableSchema, class_counts


class SplitParams(Section):
    """Steps before `split` run once on the whole table; steps after it are fitted on train."""

    type: Literal["split"]
    validation: float = Field(0.15, gt=0, lt=1)
    test: float = Field(0.2, gt=0, lt=1)
    stratify: bool = True

    @model_validator(mode="after")
    def _fractions_leave_training_data(self):
        if self.validation + self.test >= 0.9:
            raise ValueError(f"validation + test = {self.validation + self.test:g} leaves "
                             "less than 10% for training; lower them")
        return self


def check_stratifiable(df: pl.DataFrame, schema: TableSchema, need: int, purpose: str) -> None:
    """Raise a DataError naming the classes with too few rows for `purpose`."""
    counts = {c: n for c, n in class_counts(df, schema).items() if n}
    if len(counts) < 2:
        raise DataError(f"target {schema.target!r} has a single class {list(counts)}: "
                        f"{purpose} needs at least two classes")
    scarce = {c: n for c, n in counts.items() if n < need}
    if scarce:
        raise DataError(f"{purpose} needs at least {need} rows per class of {schema.target!r}; "
                        f"too few in {scarce}")


def split_frame(df: pl.DataFrame, schema: TableSchema, params: SplitParams,
                seed: int) -> dict[str, pl.DataFrame]:
    if params.stratify:
        check_stratifiable(df, schema, 3, "a stratified train/validation/test split")
    index = np.arange(len(df))
    labels = df[schema.target].to_numpy() if params.stratify else None
    rest, test = train_test_split(index, test_size=params.test, random_state=seed, stratify=labels)
    val_share = params.validation / (1 - params.test)
    rest_labels = labels[rest] if labels is not None else None
    train, val = train_test_split(rest, test_size=val_share, random_state=seed,
                                  stratify=rest_labels)
    return {"train": df[np.sort(train)], "val": df[np.sort(val)], "test": df[np.sort(test)]}


def fold_frames(pool: pl.DataFrame, schema: TableSchema, folds: int, fold: int,
                seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Training and held-out rows of one stratified k-fold split of `pool`."""
    check_stratifiable(pool, schema, folds, f"{folds}-fold stratified cross-validation")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    train, held = list(splitter.split(np.zeros(len(pool)), pool[schema.target].to_numpy()))[fold]
    return pool[train], pool[held]


@task(name="split", **CACHED)
def split(data: ArtifactRef, params: SplitParams, seed: int, store: str) -> ArtifactRef:
    """Split a table into stratified train/val/test parts."""
    (df, schema), = read_parts(data).values()
    parts = split_frame(df, schema, params, seed)
    return write_parts(Store(store), "splits", {k: (v, schema) for k, v in parts.items()})
