"""A split given by the data (split strategy column), validation: 0, and the group split
of a train/test column that used to crash inside scikit-learn (issue 19, part 4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.datasets import load_breast_cancer

from trainflow import load_model
from trainflow.errors import DataError
from trainflow.spec.pipeline import load_spec
from trainflow.spec.steps import SplitParams
from trainflow.tables import TableSchema
from trainflow.tasks.split import split_rows

SCHEMA = TableSchema(target="y", classes=["a", "b"], features=[])


def given(parts: list[str], labels: list[str] | None = None) -> pl.DataFrame:
    labels = labels or ["a", "b"] * (len(parts) // 2) + ["a"] * (len(parts) % 2)
    return pl.DataFrame({"y": labels, "part": parts})


def column_split(**knobs) -> SplitParams:
    base = {"type": "split", "strategy": "column", "column": "part", "train": ["train"]}
    return SplitParams.model_validate({**base, "test": ["test"], **knobs})


def test_the_given_rows_stay_in_their_parts_and_validation_is_carved_from_train():
    parts = ["train"] * 80 + ["test"] * 20
    rng = np.random.default_rng(0)
    rng.shuffle(parts)
    df = given(parts)
    rows = split_rows(df, SCHEMA, column_split(validation=0.25), seed=0)
    test = np.flatnonzero(np.array(parts) == "test")
    assert rows["test"].tolist() == test.tolist()
    assert len(rows["val"]) == 20 and len(rows["train"]) == 60
    assert set(rows["val"]) | set(rows["train"]) == set(np.flatnonzero(np.array(parts) == "train"))
    labels = df["y"].to_numpy()
    train_a = (labels[np.array(parts) == "train"] == "a").sum()
    assert abs((labels[rows["val"]] == "a").sum() - train_a / 4) <= 1  # stratified
    assert split_rows(df, SCHEMA, column_split(validation=0.25), seed=0)["val"].tolist() == (
        rows["val"].tolist()
    )  # the seed decides the carve


def test_validation_given_by_value_and_validation_zero():
    parts = ["tr"] * 6 + ["dev"] * 2 + ["te"] * 2
    df = given(parts)
    params = column_split(train=["tr"], test=["te"], validation=["dev"])
    rows = split_rows(df, SCHEMA, params, seed=0)
    assert {k: v.tolist() for k, v in rows.items()} == {
        "train": [0, 1, 2, 3, 4, 5],
        "val": [6, 7],
        "test": [8, 9],
    }
    none = split_rows(df, SCHEMA, column_split(train=["tr", "dev"], test=["te"], validation=0), 0)
    assert len(none["val"]) == 0 and len(none["train"]) == 8
    shares = SplitParams(type="split", validation=0, test=0.2)
    drawn = split_rows(given(["x"] * 50), SCHEMA, shares, seed=0)
    assert len(drawn["val"]) == 0 and len(drawn["test"]) == 10 and len(drawn["train"]) == 40


def test_a_value_no_part_lists_and_an_empty_part_are_named():
    with pytest.raises(DataError, match=r"'holdout': 2.*split.train, split.test"):
        split_rows(given(["train"] * 4 + ["test"] * 2 + ["holdout"] * 2), SCHEMA, column_split(), 0)
    with pytest.raises(DataError, match=r"no row has a value in split.test \['test'\]"):
        split_rows(given(["train"] * 4), SCHEMA, column_split(), 0)


def test_a_group_split_of_a_train_test_column_says_to_split_by_column():
    params = SplitParams(type="split", strategy="group", group_column="part")
    with pytest.raises(DataError, match=r"2 distinct value.*strategy: column, column: part"):
        split_rows(given(["train"] * 8 + ["test"] * 2), SCHEMA, params, 0)


def spec_with(tmp_path: Path, split: str, extra: str = "", keep: str = "[part]") -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(
        f"""name: given
data:
  source: {{type: csv, path: data.csv, target: y, keep_columns: {keep}}}
  steps:
    - {split}
model: {{type: mlp}}
train: {{epochs: 1{extra}}}
"""
    )
    return path


@pytest.mark.parametrize(
    ("split", "extra", "keep", "words"),
    [
        (
            "{type: split, strategy: column, column: part, train: [train], test: [test]}",
            "",
            "[]",
            "add it to data.source.keep_columns",
        ),
        (
            "{type: split, strategy: column, column: part, train: [a], test: [a]}",
            "",
            "[part]",
            "listed for both train and test",
        ),
        (
            "{type: split, strategy: column, column: part, test: [test]}",
            "",
            "[part]",
            "give column (its name), train",
        ),
        ("{type: split, test: [test]}", "", "[part]", "are shares"),
        (
            "{type: split, validation: 0}",
            ", early_stopping: {patience: 2}",
            "[part]",
            "no validation part for train.early_stopping",
        ),
    ],
)
def test_validate_refuses_a_split_that_cannot_run(tmp_path, split, extra, keep, words):
    from trainflow.errors import SpecError

    with pytest.raises(SpecError) as caught:
        load_spec(spec_with(tmp_path, split, extra, keep))
    assert words in str(caught.value)


def test_a_benchmark_split_runs_end_to_end_with_its_own_test_rows(tmp_path, prefect_engine):
    """A table with its own train/test column, validation 0 and no early stopping: the test
    metrics are on exactly the given test rows, and the column is no model input."""
    from trainflow.flows.pipeline import pipeline

    data = load_breast_cancer(as_frame=True).frame.rename(columns={"target": "y"})
    data["part"] = np.where(np.arange(len(data)) % 5 == 0, "test", "train")
    data.to_csv(tmp_path / "data.csv", index=False)
    path = spec_with(
        tmp_path,
        "{type: split, strategy: column, column: part, train: [train], test: [test], "
        "validation: 0}\n    - {type: normalize}",
    )
    overrides = [f"outputs.store={tmp_path / 'store'}", f"outputs.runs={tmp_path / 'runs'}"]
    result = pipeline(load_spec(path, [*overrides, "train.epochs=3"]))
    scored = int(np.sum(result["test"]["confusion_matrix"]))
    assert scored == int((data["part"] == "test").sum()) == 114
    columns = load_model(result["package"]).input_schema["columns"]
    assert "part" not in columns and "mean radius" in columns
    assert result["test"]["accuracy"] > 0.9
