"""The drift table: PSI per feature of scored rows against a training profile, numbers binned
by the training deciles, text by its categories, a missing value a bin of its own."""

import math

import numpy as np
import polars as pl

from trainflow import drift


def training(rows=5000) -> pl.DataFrame:
    rng = np.random.default_rng(0)
    return pl.DataFrame(
        {
            "income": rng.lognormal(3, 1, rows),
            "age": rng.integers(18, 90, rows),
            "home": rng.choice(["rent", "owner", "parents", None], rows, p=[0.4, 0.4, 0.15, 0.05]),
            "score": np.where(rng.random(rows) < 0.1, np.nan, rng.normal(size=rows)),
        }
    )


def table(train: pl.DataFrame, scored: pl.DataFrame, batch=700) -> dict:
    counts = drift.DriftCounts(drift.profile(train.lazy(), train.columns))
    for start in range(0, scored.height, batch):  # as scoring counts: batch by batch
        counts.add(scored.slice(start, batch))
    return {row["column"]: row for row in counts.table(0.2)}


def test_rows_like_training_drift_nowhere_and_each_kind_of_shift_is_flagged_alone():
    train = training()
    like = table(train, train.sample(2000, seed=1))
    assert all(row["status"] == "ok" and row["psi"] < 0.05 for row in like.values())

    shifted = train.sample(2000, seed=2).with_columns(
        pl.col("income") * 3,  # a number moved
        pl.when(pl.col("home") == "parents")
        .then(pl.lit("rent"))
        .otherwise(pl.col("home"))
        .alias("home"),  # a category gone
        pl.when(pl.int_range(pl.len()) % 2 == 0)
        .then(None)
        .otherwise(pl.col("score"))
        .alias("score"),
    )  # half the values missing
    got = table(train, shifted)
    assert {c for c, row in got.items() if row["status"] == "drift"} == {"income", "home", "score"}
    assert got["age"]["status"] == "ok"
    assert got["score"]["scored_missing"] > 0.5 > got["score"]["train_missing"]
    assert got["income"]["scored_mean"] > 2.5 * got["income"]["train_mean"]


def test_psi_is_the_textbook_sum_and_an_empty_bin_is_finite():
    expected, actual = [0.5, 0.5], [0.25, 0.75]
    assert math.isclose(
        drift.psi(expected, actual), 0.25 * math.log(0.75 / 0.5) - 0.25 * math.log(0.25 / 0.5)
    )
    assert math.isfinite(drift.psi([1.0, 0.0], [0.0, 1.0]))
    assert drift.psi([0.2] * 5, [0.2] * 5) == 0.0


def test_unseen_categories_and_constant_columns_have_their_bins():
    train = pl.DataFrame({"plan": ["a", "b"] * 50, "flat": [1.0] * 100})
    got = table(train, pl.DataFrame({"plan": ["c"] * 40, "flat": [1.0] * 40}))
    assert got["plan"]["status"] == "drift"  # all in `other`, which training never filled
    assert got["flat"]["psi"] == 0.0


def test_the_markdown_lists_drifted_columns_first_in_bold():
    train = training()
    rows = list(table(train, train.with_columns(pl.col("age") + 40)).values())
    text = drift.markdown(rows, 0.2, True)
    body = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert body[1].startswith("| age | numeric |") and "**drift**" in body[1]
    assert "No drift table" in drift.markdown([], 0.2, False)
