"""Split: stratified train/validation/test parts by declared fractions and the pipeline seed."""

from __future__ import annotations

from math import ceil

import numpy as np
import polars as pl
from prefect import task
from sklearn.model_selection import (
    GroupShuffleSplit,
    StratifiedGroupKFold,
    StratifiedKFold,
    train_test_split,
)

from trainflow.artifacts import ArtifactRef, Store
from trainflow.caching import CACHED
from trainflow.errors import DataError
from trainflow.spec.steps import SplitParams
from trainflow.steps import PART, SPLITS, scan_parts, write_view
from trainflow.tables import SYNTHETIC_COLUMN, TableSchema, class_counts
from trainflow.target_bins import bin_count, quantile_codes


def check_stratifiable(df: pl.DataFrame, schema: TableSchema, need: int, purpose: str) -> None:
    """Raise a DataError naming the classes with too few rows for `purpose`."""
    counts = {c: n for c, n in class_counts(df, schema).items() if n}
    if len(counts) < 2:
        raise DataError(
            f"target {schema.target!r} has a single class {list(counts)}: "
            f"{purpose} needs at least two classes"
        )
    scarce = {c: n for c, n in counts.items() if n < need}
    if scarce:
        shown = dict(sorted(scarce.items(), key=lambda kv: kv[1])[:5])  # a message stays short
        more = f" and {len(scarce) - len(shown)} more" if len(scarce) > len(shown) else ""
        raise DataError(
            f"{purpose} needs at least {need} rows per class of {schema.target!r}; "
            f"too few in {shown}{more}: add rows of these classes or remove them"
        )


def _column(df: pl.DataFrame, name: str, field: str) -> pl.Series:
    if name not in df.columns:
        raise DataError(
            f"split.{field}: column {name!r} is not in the table; columns are "
            f"{df.columns} (keep it with data.source.keep_columns)"
        )
    return df[name]


def key_columns(schema: TableSchema, params: SplitParams) -> list[str]:
    """The columns a split decision reads (the rest of the row never matters)."""
    named = (schema.target, params.group_column, params.time_column, params.column)
    return list(dict.fromkeys(c for c in named if c))


def split_rows(
    df: pl.DataFrame, schema: TableSchema, params: SplitParams, seed: int
) -> dict[str, np.ndarray]:
    """Sorted row numbers of each part; `df` needs only the `key_columns`."""
    index = np.arange(len(df), dtype=np.int32 if len(df) < 2**31 else np.int64)
    if params.strategy == "column":
        return given_rows(df, schema, params, seed, index)
    assert isinstance(params.test, float) and isinstance(params.validation, float)
    val_share = params.validation / (1 - params.test)
    if params.strategy == "time":
        order = _column(df, params.time_column, "time_column").arg_sort(nulls_last=True)
        n_test, n_val = round(len(df) * params.test), round(len(df) * params.validation)
        cut = len(df) - n_test - n_val
        ordered = order.to_numpy()
        return {
            "train": np.sort(ordered[:cut]),
            "val": np.sort(ordered[cut : cut + n_val]),
            "test": np.sort(ordered[cut + n_val :]),
        }
    if params.strategy == "group":
        groups = _column(df, params.group_column, "group_column").to_numpy()
        _check_groups(groups, params)
        outer = GroupShuffleSplit(1, test_size=params.test, random_state=seed)
        rest, test = next(outer.split(index, groups=groups))
        if not val_share:
            return {"train": np.sort(rest), "val": rest[:0], "test": np.sort(test)}
        inner = GroupShuffleSplit(1, test_size=val_share, random_state=seed)
        train, val = next(inner.split(rest, groups=groups[rest]))
        return {"train": np.sort(rest[train]), "val": np.sort(rest[val]), "test": np.sort(test)}
    if params.strategy == "stratified":
        purpose = "a stratified train/validation/test split"
        smallest = min(ceil(len(df) * params.test), round(len(df) * params.validation) or len(df))
        codes = stratify_codes(df, schema, smallest, purpose)
        rest, test = stratified_shuffle_split(codes, params.test, seed)
        if not val_share:
            return {"train": np.sort(rest), "val": rest[:0], "test": np.sort(test)}
        train, val = stratified_shuffle_split(codes[rest], val_share, seed, in_order=True)
        return {"train": np.sort(rest[train]), "val": np.sort(rest[val]), "test": np.sort(test)}
    rest, test = train_test_split(index, test_size=params.test, random_state=seed)
    if not val_share:
        return {"train": np.sort(rest), "val": rest[:0], "test": np.sort(test)}
    train, val = train_test_split(rest, test_size=val_share, random_state=seed)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def stratify_codes(
    df: pl.DataFrame, schema: TableSchema, smallest: int, purpose: str, need: int = 3
) -> np.ndarray:
    """What a stratified draw keeps in proportion: the class of each row, or for a
    regression the quantile bin of its target (as many bins as the draw's `smallest` part
    can hold, target_bins.bin_count)."""
    if schema.task == "regression":
        values = df[schema.target].cast(pl.Float64).to_numpy()
        return quantile_codes(values, bin_count(smallest), purpose)
    check_stratifiable(df, schema, need, purpose)
    return label_codes(df, schema)


def label_codes(df: pl.DataFrame, schema: TableSchema) -> np.ndarray:
    """Integer class codes in the classes' order (scikit-learn sorts strings slowly)."""
    labels = df[schema.target]
    if labels.dtype != pl.Enum(schema.classes):  # the split task hands in Enum labels
        labels = labels.cast(pl.Utf8).cast(pl.Enum(schema.classes))
    if labels.null_count():
        raise DataError(
            f"target {schema.target!r} has {labels.null_count()} missing "
            "value(s): add a `clean` step (drop_missing_label) before `split`"
        )
    return labels.to_physical().to_numpy()


def given_rows(
    df: pl.DataFrame, schema: TableSchema, params: SplitParams, seed: int, index: np.ndarray
) -> dict[str, np.ndarray]:
    """strategy: column: each row's part as the data's `column` names it; validation rows
    given by value too, or a stratified share carved from the training rows."""
    values = _column(df, params.column or "", "column").cast(pl.Utf8)
    parts = {"train": params.train or [], "test": params.test}
    if isinstance(params.validation, list):
        parts["val"] = params.validation
    listed = {v for vs in parts.values() for v in vs}
    unlisted = values.filter(~values.is_in(list(listed)) | values.is_null()).value_counts()
    if len(unlisted):
        found = dict(zip(unlisted[:, 0].to_list(), unlisted["count"].to_list(), strict=True))
        raise DataError(
            f"split.column {params.column!r} has values that no part lists: "
            f"{dict(list(found.items())[:5])} (value: rows). List each value under "
            "split.train, split.test or split.validation, or drop those rows before split"
        )
    rows = {name: index[values.is_in(list(vs)).to_numpy()] for name, vs in parts.items()}
    for name in ("train", "test"):
        if not len(rows[name]):
            raise DataError(
                f"split.column {params.column!r}: no row has a value in split.{name} "
                f"{parts[name]}; the column's values are {sorted(set(values.to_list()))[:10]}"
            )
    if "val" not in rows:
        rows["val"] = rows["train"][:0]
        if params.validation:
            given = df[rows["train"]]
            if schema.task == "regression":  # as many bins as the carved share can hold
                smallest = round(len(given) * params.validation)
                codes = stratify_codes(given, schema, smallest, "split.validation's share")
            else:
                codes = label_codes(given, schema)
            train, val = stratified_shuffle_split(codes, params.validation, seed, in_order=True)
            rows["train"], rows["val"] = rows["train"][train], rows["train"][val]
    return {name: np.sort(found) for name, found in rows.items()}


def _check_groups(groups: np.ndarray, params: SplitParams) -> None:
    """A group split needs a group for each part: two groups (a train/test column) would
    leave one part empty, which scikit-learn reports as a train set that would be empty."""
    count = len(np.unique(groups))
    need = 3 if params.validation else 2
    if count < need:
        raise DataError(
            f"split.group_column {params.group_column!r} has {count} distinct value(s): a "
            f"group split needs at least {need}, each part getting whole groups. If the column "
            "says which rows are train and test, split with {strategy: column, column: "
            f"{params.group_column}, train: [...], test: [...]}}"
        )


def stratified_shuffle_split(
    codes: np.ndarray, test_size: float, seed: int, in_order: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The rows (0..n-1) of `train_test_split(rows, test_size=test_size, random_state=seed,
    stratify=codes)`: scikit-learn's `StratifiedShuffleSplit` draws, the same random numbers
    in the same order, so the same rows. Written with NumPy's public API because
    scikit-learn (1.9) gathers the row numbers in Python lists, about 40 bytes and 1 us a
    row (at 5M rows its two calls take 5 s where these take 1.5 s, and 0.8 GB at 20M rows);
    tests/tasks/test_split_strategies.py checks the rows equal train_test_split's on many
    shapes and seeds, so a change in scikit-learn's draws fails there, never silently.
    Shapes that scikit-learn refuses are handed to it, for its own error. `in_order`
    returns each part's rows sorted, skipping the last two draws (which only order them)."""
    n_test = ceil(test_size * len(codes))  # scikit-learn's sizes for a float test_size
    n_train = len(codes) - n_test
    present = np.flatnonzero(np.bincount(codes))
    counts = np.bincount(codes)[present]
    if counts.min() < 2 or min(n_train, n_test) < len(present) or not 0 < test_size < 1:
        return train_test_split(
            np.arange(len(codes)), test_size=test_size, random_state=seed, stratify=codes
        )
    rank = np.zeros(int(codes.max()) + 1, np.uint8 if len(present) < 256 else np.int64)
    rank[present] = np.arange(len(present))
    by_class = np.split(np.argsort(rank[codes], kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(seed)
    n_i = _allocation(counts, n_train, rng)
    t_i = _allocation(counts - n_i, n_test, rng)
    train, test = [], []
    for rows, count, n, t in zip(by_class, counts, n_i, t_i):
        shuffled = rows.take(rng.permutation(count), mode="clip")
        train.append(shuffled[:n])
        test.append(shuffled[n : n + t])
    if in_order:
        return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def _allocation(counts: np.ndarray, draws: int, rng: np.random.RandomState) -> np.ndarray:
    """How many of `draws` rows each class gets, as StratifiedShuffleSplit sizes them (the
    approximate mode of the multivariate hypergeometric): each class its floored share, the
    rows left over to the largest remainders, ties broken by `rng`."""
    continuous = counts / counts.sum() * draws
    floored = np.floor(continuous)
    missing = int(draws - floored.sum())
    remainder = continuous - floored
    for value in np.sort(np.unique(remainder))[::-1]:
        if missing <= 0:
            break
        (tied,) = np.where(remainder == value)
        chosen = rng.choice(tied, size=min(len(tied), missing), replace=False)
        floored[chosen] += 1
        missing -= len(chosen)
    return floored.astype(int)


def fold_frames(
    pool: pl.DataFrame,
    schema: TableSchema,
    folds: int,
    fold: int,
    seed: int,
    group_column: str | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Training and held-out rows of one stratified k-fold split of `pool`; with a group
    column, no group is on both sides (StratifiedGroupKFold)."""
    train, held = fold_indices(pool, schema, folds, fold, seed, group_column)
    return pool[train], pool[held]


def fold_indices(
    pool: pl.DataFrame,
    schema: TableSchema,
    folds: int,
    fold: int,
    seed: int,
    group_column: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`fold_frames`'s rows as positions in `pool` (the held-out ones place a fold's
    out-of-fold predictions, which weighted and stacking ensembles fit on)."""
    purpose = f"{folds}-fold stratified cross-validation"
    if schema.task == "regression":  # quantile bins of the target, each held-out share kept
        if len(pool) < 2 * folds:
            raise DataError(f"{purpose} needs at least {2 * folds} rows; the pool has {len(pool)}")
        labels = stratify_codes(pool, schema, len(pool) // folds, purpose)
    else:
        check_stratifiable(pool, schema, folds, purpose)
        labels = pool[schema.target].to_numpy()
    if group_column:
        groups = _column(pool, group_column, "group_column").to_numpy()
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        chosen = list(splitter.split(np.zeros(len(pool)), labels, groups))[fold]
    else:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        chosen = list(splitter.split(np.zeros(len(pool)), labels))[fold]
    return chosen[0], chosen[1]


@task(name="split", **CACHED)
def split(data: ArtifactRef, params: SplitParams, seed: int, store: str) -> ArtifactRef:
    """Split a table into stratified train/val/test parts, stored as a view: the part number
    of each row of the table (readers filter the table's rows by it). Only the columns the
    split decision reads (`key_columns`) are read."""
    ((lf, schema),) = scan_parts(data).values()
    names = lf.collect_schema().names()
    for field in ("group_column", "time_column", "column"):
        if getattr(params, field) and getattr(params, field) not in names:
            _column(pl.DataFrame(schema=names), getattr(params, field), field)
    # The labels as an Enum (4-byte codes, not strings): millions of rows stay small in memory.
    target = (
        pl.col(schema.target).cast(pl.Float64)
        if schema.task == "regression"
        else pl.col(schema.target).cast(pl.Utf8).cast(pl.Enum(schema.classes))
    )
    keys = lf.select(key_columns(schema, params)).with_columns(target).collect(engine="streaming")
    rows = split_rows(keys, schema, params, seed)
    part = np.zeros(len(keys), np.uint8)
    for number, name in enumerate(SPLITS):
        part[rows[name]] = number
    return write_view(
        Store(store),
        data,
        params,
        {PART: part},
        __name__,
        summary=_summary(keys[schema.target], part, schema, names),
    )


def _summary(
    labels: pl.Series, part: np.ndarray, schema: TableSchema, columns: list[str]
) -> dict[str, dict] | None:
    """Rows and classes of each part, counted from the labels already in memory (None where
    the table has synthetic rows or missing labels: then the parts' rows are counted)."""
    if SYNTHETIC_COLUMN in columns or labels.null_count():
        return None
    if schema.task == "regression":  # no classes to count: the rows of each part
        rows = np.bincount(part, minlength=len(SPLITS))
        return {
            name: {"rows": int(rows[i]), "synthetic": 0, "classes": {}}
            for i, name in enumerate(SPLITS)
        }
    k = len(schema.classes)
    counts = np.bincount(
        part.astype(np.int64) * k + labels.to_physical().to_numpy(), minlength=len(SPLITS) * k
    ).reshape(len(SPLITS), k)
    return {
        name: {
            "rows": int(counts[i].sum()),
            "synthetic": 0,
            "classes": dict(zip(schema.classes, counts[i].tolist())),
        }
        for i, name in enumerate(SPLITS)
    }
