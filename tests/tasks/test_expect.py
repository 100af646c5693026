"""Declared data expectations (all failures at once) and the data profile."""

import pytest

from trainflow.errors import DataError
from trainflow.tasks.expect import ExpectSpec, check_expectations
from trainflow.tasks.ingest import FileSource, ingest


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("age,city,label\n25,paris,yes\n-3,rome,no\n130,,maybe\n40,oslo,\n")
    store = str(tmp_path / "store")
    return store, ingest.fn(FileSource(type="csv", path=str(path), target="label"), store)


def test_every_failed_expectation_is_listed_at_once(table):
    store, ref = table
    expect = ExpectSpec(
        columns=["age", "income"],
        dtypes={"city": "numeric"},
        ranges={"age": (0, 120)},
        not_null=["city"],
        label_not_null=True,
        classes=["yes", "no"],
    )
    with pytest.raises(DataError) as caught:
        check_expectations.fn(ref, expect, store)
    message = str(caught.value)
    assert message.startswith("6 data expectation(s) failed")
    for part in (
        "column 'income' is missing",
        "column 'city' should be numeric, is String",
        "column 'age': 1 value(s) below 0, 1 above 120",
        "column 'city' has 1 missing",
        "label 'label' is missing in 1 row(s)",
        "values ['maybe'] outside ['yes', 'no']",
    ):
        assert part in message


def test_profile_of_a_table_that_meets_its_expectations(table):
    store, ref = table
    out = check_expectations.fn(ref, ExpectSpec(dtypes={"age": "integer", "city": "text"}), store)
    rows = {r["column"]: r for r in out.meta["profile"]}
    assert rows["age"]["min"] == -3 and rows["age"]["max"] == 130 and rows["age"]["missing"] == 0
    assert rows["city"]["missing"] == 1 and rows["city"]["distinct"] == 4
    assert rows["label"]["missing"] == 1
