"""Group-aware, time-ordered and random splits; stratified = scikit-learn's rows; subsampling;
group-aware CV folds."""

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from trainflow.errors import DataError, SpecError
from trainflow.spec.pipeline import validate_spec
from trainflow.steps import read_parts
from trainflow.tasks.fold import fold_data
from trainflow.tasks.ingest import FileSource, SklearnSource, ingest
from trainflow.tasks.split import SplitParams, split, stratified_shuffle_split
from trainflow.tasks.subsample import SubsampleParams, subsample


@pytest.fixture
def grouped(tmp_path):
    rng = np.random.default_rng(0)
    lines = ["patient,day,x,label"]
    for i in range(300):
        lines.append(f"p{i % 40},{(i * 37) % 300},{rng.normal():.4f},{'ab'[i % 3 == 0]}")
    path = tmp_path / "g.csv"
    path.write_text("\n".join(lines) + "\n")
    store = str(tmp_path / "store")
    source = FileSource(
        type="csv", path=str(path), target="label", keep_columns=["patient", "day"], features=["x"]
    )
    return store, ingest.fn(source, store)


def test_group_split_keeps_each_group_in_one_part(grouped):
    store, table = grouped
    params = SplitParams(type="split", strategy="group", group_column="patient")
    parts = read_parts(split.fn(table, params, 0, store))
    groups = {name: set(df["patient"]) for name, (df, _) in parts.items()}
    assert not (groups["train"] & groups["val"]) and not (groups["train"] & groups["test"])
    assert not (groups["val"] & groups["test"])
    assert sum(len(df) for df, _ in parts.values()) == 300
    assert parts["train"][1].features == ["x"]  # the group column is carried, not a feature


def test_time_split_puts_the_latest_rows_in_test(grouped):
    store, table = grouped
    params = SplitParams(type="split", strategy="time", time_column="day", validation=0.2, test=0.2)
    parts = read_parts(split.fn(table, params, 0, store))
    assert parts["train"][0]["day"].max() < parts["val"][0]["day"].min()
    assert parts["val"][0]["day"].max() < parts["test"][0]["day"].min()
    assert [len(parts[k][0]) for k in ("train", "val", "test")] == [180, 60, 60]


def test_random_split_is_seeded(grouped):
    store, table = grouped
    params = SplitParams(type="split", strategy="random")
    one = read_parts(split.fn(table, params, 1, store))["test"][0]
    two = read_parts(split.fn(table, params, 1, store + "2"))["test"][0]
    other = read_parts(split.fn(table, params, 2, store))["test"][0]
    assert one.equals(two) and not one.equals(other)


def test_group_aware_cv_folds(grouped):
    store, table = grouped
    params = SplitParams(type="split", strategy="group", group_column="patient")
    splits = split.fn(table, params, 0, store)
    pool = read_parts(splits)
    for fold in range(3):
        data = fold_data(splits, fold, 3, [], 0, "patient").data
        assert len(data["train"]) + len(data["val"]) == len(pool["train"][0]) + len(pool["val"][0])
    import polars as pl

    from trainflow.tasks.split import fold_frames

    frame = pl.concat([pool["train"][0], pool["val"][0]])
    train, held = fold_frames(frame, pool["train"][1], 3, 0, 0, "patient")
    assert not set(train["patient"]) & set(held["patient"])


def test_missing_group_column_is_a_clear_error(tmp_path):
    store = str(tmp_path)
    table = ingest.fn(SklearnSource(type="sklearn", dataset="iris"), store)
    params = SplitParams(type="split", strategy="group", group_column="patient")
    with pytest.raises(DataError, match="split.group_column: column 'patient' is not in the table"):
        split.fn(table, params, 0, store)
    with pytest.raises(SpecError, match="group_column is required by strategy: group"):
        validate_spec(
            {
                "name": "t",
                "model": {"type": "mlp"},
                "data": {
                    "source": {"type": "sklearn", "dataset": "iris"},
                    "steps": [{"type": "split", "strategy": "group"}],
                },
            }
        )


def test_subsample_keeps_class_balance_and_is_seeded(tmp_path):
    store = str(tmp_path)
    table = ingest.fn(SklearnSource(type="sklearn", dataset="breast_cancer"), store)
    small = read_parts(
        subsample.fn(table, SubsampleParams(type="subsample", fraction=0.25), 0, store)
    )["all"][0]
    full = read_parts(table)["all"][0]
    assert len(small) == round(569 * 0.25)
    share = lambda df: (df["target"] == "benign").mean()  # noqa: E731
    assert abs(share(small) - share(full)) < 0.01
    again = read_parts(
        subsample.fn(table, SubsampleParams(type="subsample", fraction=0.25), 0, store + "2")
    )["all"][0]
    assert again.equals(small)
    splits = split.fn(table, SplitParams(type="split"), 0, store)
    after = read_parts(
        subsample.fn(splits, SubsampleParams(type="subsample", fraction=0.5), 0, store)
    )
    before = read_parts(splits)
    assert len(after["train"][0]) == round(len(before["train"][0]) * 0.5)
    assert after["test"][0].equals(before["test"][0])  # training part only after split


@pytest.mark.parametrize("seed", [0, 1, 7, 123])
def test_stratified_split_draws_exactly_the_rows_scikit_learn_draws(seed):
    """split's NumPy form of train_test_split(stratify=...) gives the very same rows, for
    class counts with ties, scarce classes and unused class codes."""
    rng = np.random.default_rng(seed)
    for n, k in [(12, 2), (97, 3), (1000, 5), (5003, 4), (20000, 7)]:
        codes = rng.choice(k, n, p=rng.dirichlet(np.ones(k)))
        codes[: 2 * k] = np.repeat(np.arange(k), 2)  # every class at least twice
        codes = np.array([0, 2, 3, 5, 6, 8, 9])[codes].astype(np.uint32)  # gaps in the codes
        for test_size in (0.2, 0.15 / 0.8, 0.5):
            expected = train_test_split(
                np.arange(n), test_size=test_size, random_state=seed, stratify=codes
            )
            got = stratified_shuffle_split(codes, test_size, seed)
            assert all(np.array_equal(a, b) for a, b in zip(got, expected)), (n, k, test_size)
            in_order = stratified_shuffle_split(codes, test_size, seed, in_order=True)
            assert all(np.array_equal(a, np.sort(b)) for a, b in zip(in_order, expected))
    tied = np.repeat(np.arange(3, dtype=np.uint32), 5)  # equal counts: ties broken by the draws
    assert all(
        np.array_equal(a, b)
        for a, b in zip(
            stratified_shuffle_split(tied, 0.4, seed),
            train_test_split(np.arange(15), test_size=0.4, random_state=seed, stratify=tied),
        )
    )
