"""A regression's split and CV folds stratify on quantile bins of the target (issue 19,
part 7): each part gets its share of every decile, where a random split of a skewed target
does not; classification's draws are scikit-learn's, as before."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from sklearn.model_selection import StratifiedKFold, train_test_split

from trainflow.errors import DataError
from trainflow.spec.steps import SplitParams
from trainflow.tables import TableSchema
from trainflow.target_bins import bin_count, quantile_codes
from trainflow.tasks.split import fold_indices, split_rows

REGRESSION = TableSchema(target="y", features=[], classes=[], task="regression")


def skewed(n: int = 500, seed: int = 0) -> pl.DataFrame:
    """A long-tailed target (lognormal), as prices, counts and durations are."""
    rng = np.random.default_rng(seed)
    return pl.DataFrame({"y": rng.lognormal(0.0, 1.0, n), "g": rng.integers(0, 60, n)})


def decile_counts(y: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """How many of `rows` fall in each decile of the whole target."""
    edges = np.quantile(y, np.linspace(0, 1, 11)[1:-1])
    return np.bincount(np.searchsorted(edges, y[rows], side="right"), minlength=10)


def worst_gap(y: np.ndarray, rows: dict[str, np.ndarray]) -> float:
    """The largest gap, over parts and deciles, between a part's rows in a decile and its
    proportional share (a tenth of the part)."""
    return max(np.abs(decile_counts(y, r) - len(r) / 10).max() for r in rows.values())


def test_each_part_gets_its_share_of_every_decile_where_a_random_split_does_not():
    df = skewed()
    y = df["y"].to_numpy()
    stratified = SplitParams(type="split")
    random = SplitParams(type="split", strategy="random")
    for seed in range(4):
        rows = split_rows(df, REGRESSION, stratified, seed)
        assert sorted(np.concatenate(list(rows.values()))) == list(range(len(df)))
        assert [len(rows[k]) for k in ("train", "val", "test")] == [325, 75, 100]
        assert worst_gap(y, rows) <= 1.0, seed  # rounding only
        # the tail: each part's 90th percentile within 15% of the whole target's
        for part in rows.values():
            assert abs(np.quantile(y[part], 0.9) / np.quantile(y, 0.9) - 1) < 0.15
    # a random split on the same target misses deciles by several rows
    assert min(worst_gap(y, split_rows(df, REGRESSION, random, s)) for s in range(4)) >= 4
    again = split_rows(df, REGRESSION, stratified, 1)
    assert all(
        np.array_equal(again[k], split_rows(df, REGRESSION, stratified, 1)[k]) for k in again
    )


def test_cv_folds_hold_out_every_decile_evenly_and_group_folds_keep_groups_apart():
    df = skewed()
    y = df["y"].to_numpy()
    held_out = [fold_indices(df, REGRESSION, 5, f, 0)[1] for f in range(5)]
    assert sorted(np.concatenate(held_out)) == list(range(len(df)))
    for held in held_out:
        assert np.abs(decile_counts(y, held) - 10).max() <= 1
    for fold in range(3):  # StratifiedGroupKFold on the bins: no group on both sides
        train, held = fold_indices(df, REGRESSION, 3, fold, 0, group_column="g")
        assert not set(df["g"].to_numpy()[train]) & set(df["g"].to_numpy()[held])


def test_group_and_column_strategies_split_a_regression_target():
    df = skewed().with_columns(part=pl.Series(["train"] * 400 + ["test"] * 100).shuffle(seed=3))
    rows = split_rows(
        df, REGRESSION, SplitParams(type="split", strategy="group", group_column="g"), 0
    )
    groups = {k: set(df["g"].to_numpy()[r]) for k, r in rows.items()}
    assert not groups["train"] & groups["test"] and not groups["val"] & groups["test"]
    given = SplitParams.model_validate(
        {
            "type": "split",
            "strategy": "column",
            "column": "part",
            "train": ["train"],
            "test": ["test"],
            "validation": 0.2,
        }
    )
    rows = split_rows(df, REGRESSION, given, 0)
    assert rows["test"].tolist() == np.flatnonzero(df["part"].to_numpy() == "test").tolist()
    assert len(rows["val"]) == 80 and len(rows["train"]) == 320
    y = df["y"].to_numpy()  # the carved validation share is stratified on the bins too
    train_rows = np.flatnonzero(df["part"].to_numpy() == "train")
    edges = np.quantile(y[train_rows], np.linspace(0, 1, 11)[1:-1])
    counts = np.bincount(np.searchsorted(edges, y[rows["val"]], side="right"), minlength=10)
    assert np.abs(counts - 8).max() <= 1


def test_classification_draws_are_scikit_learns_as_before():
    rng = np.random.default_rng(1)
    labels = rng.choice(["a", "b", "c"], 300, p=[0.6, 0.3, 0.1])
    df = pl.DataFrame({"y": labels})
    schema = TableSchema(target="y", features=[], classes=["a", "b", "c"])
    codes = df["y"].cast(pl.Enum(["a", "b", "c"])).to_physical().to_numpy()
    rows = split_rows(df, schema, SplitParams(type="split"), 5)
    rest, test = train_test_split(np.arange(300), test_size=0.2, random_state=5, stratify=codes)
    train, val = train_test_split(rest, test_size=0.15 / 0.8, random_state=5, stratify=codes[rest])
    assert rows["test"].tolist() == sorted(test) and rows["val"].tolist() == sorted(val)
    assert rows["train"].tolist() == sorted(train)
    splitter = StratifiedKFold(n_splits=4, shuffle=True, random_state=5)
    for fold, (want_train, want_held) in enumerate(splitter.split(np.zeros(300), labels)):
        got_train, got_held = fold_indices(df, schema, 4, fold, 5)
        assert got_train.tolist() == want_train.tolist()
        assert got_held.tolist() == want_held.tolist()


def test_bins_follow_the_smallest_part_and_bad_targets_are_named():
    assert [bin_count(n) for n in (1, 3, 9, 20, 400)] == [1, 1, 4, 10, 10]
    codes = quantile_codes(np.array([5.0, 1.0, 1.0, 1.0, 9.0, 2.0]), 3, "here")
    assert codes.tolist() == [2, 0, 0, 1, 2, 1]  # equal counts: ties split in row order
    with pytest.raises(DataError, match=r"1 missing value\(s\).*drop_missing_label"):
        split_rows(
            pl.DataFrame({"y": [1.0, None, *range(40)]}), REGRESSION, SplitParams(type="split"), 0
        )
    with pytest.raises(DataError, match="5-fold stratified cross-validation needs at least 10"):
        fold_indices(pl.DataFrame({"y": [1.0, 2.0, 3.0]}), REGRESSION, 5, 0, 0)


def test_a_stratified_subsample_of_a_regression_keeps_every_decile():
    from trainflow.spec.steps import SubsampleParams
    from trainflow.transforms.subsample import apply

    df = skewed()
    params = SubsampleParams(type="subsample", fraction=0.3)
    kept, _ = apply(df.with_row_index("row"), REGRESSION, params, {"seed": 0})
    rows = kept["row"].to_numpy()
    assert len(rows) == 150
    assert np.abs(decile_counts(df["y"].to_numpy(), rows) - 15).max() <= 1
