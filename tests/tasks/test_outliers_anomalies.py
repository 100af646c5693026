"""Outlier bounds and anomaly detection, fitted where the step stands."""

import json

import numpy as np
import polars as pl
import pytest
from sklearn.ensemble import IsolationForest

from trainflow.steps import read_parts
from trainflow.tasks.anomalies import AnomaliesParams, anomalies
from trainflow.tasks.ingest import FileSource, ingest
from trainflow.tasks.outliers import OutliersParams, outliers
from trainflow.tasks.split import SplitParams, split


@pytest.fixture
def spiky(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.normal(0, 1, 200)
    values[[5, 50, 150]] = [40.0, -35.0, 60.0]
    path = tmp_path / "spiky.csv"
    path.write_text(
        "v,w,label\n"
        + "".join(f"{v:.5f},{rng.normal():.5f},{'ab'[i % 2]}\n" for i, v in enumerate(values))
    )
    store = str(tmp_path / "store")
    table = ingest.fn(FileSource(type="csv", path=str(path), target="label"), store)
    return store, table, split.fn(table, SplitParams(type="split"), 0, store)


def test_outlier_clip_uses_training_bounds_in_every_part(spiky):
    store, _, splits = spiky
    out = outliers.fn(splits, OutliersParams(type="outliers", method="zscore"), 0, store)
    bounds = json.loads((out.path / "state.json").read_text())["bounds"]["v"]
    train = read_parts(splits)["train"][0]["v"]
    kept = train.filter(train.is_between(-1e9, 1e9))
    assert bounds[1] == pytest.approx(kept.mean() + 3 * kept.std(ddof=0))
    for part, (df, _) in read_parts(out).items():
        assert df["v"].max() <= bounds[1] + 1e-9 and df["v"].min() >= bounds[0] - 1e-9, part


def test_outlier_drop_after_split_spares_validation_and_test(spiky):
    store, _, splits = spiky
    before = read_parts(splits)
    after = read_parts(
        outliers.fn(splits, OutliersParams(type="outliers", action="drop"), 0, store)
    )
    assert len(after["train"][0]) < len(before["train"][0])
    assert after["val"][0].equals(before["val"][0]) and after["test"][0].equals(before["test"][0])


def test_outlier_drop_before_split_cleans_the_whole_table(spiky):
    store, table, _ = spiky
    out = read_parts(outliers.fn(table, OutliersParams(type="outliers", action="drop"), 0, store))[
        "all"
    ][0]
    assert out["v"].abs().max() < 10 and len(out) < 200


@pytest.mark.slow
def test_isolation_forest_flags_like_scikit_learn(spiky):
    store, _, splits = spiky
    params = AnomaliesParams(type="anomalies", action="flag", contamination=0.02)
    out = anomalies.fn(splits, params, 3, store)
    train = read_parts(splits)["train"][0]
    expected = (
        IsolationForest(contamination=0.02, random_state=3)
        .fit(train.select("v", "w").to_numpy())
        .predict(train.select("v", "w").to_numpy())
        == -1
    )
    parts = read_parts(out)
    assert parts["train"][1].features == ["v", "w", "anomaly"]
    assert np.array_equal(parts["train"][0]["anomaly"].to_numpy() == 1, expected)
    assert "anomaly" in parts["test"][0].columns  # flagged in every part, by the train model
    found = json.loads((out.path / "state.json").read_text())["found"]
    assert found["anomalies"] == int(expected.sum()) and found["sample"]


@pytest.mark.parametrize("method", ["lof", "zscore", "iqr"])
def test_report_only_changes_nothing_and_counts(spiky, method):
    store, table, _ = spiky
    out = anomalies.fn(table, AnomaliesParams(type="anomalies", method=method), 0, store)
    assert read_parts(out)["all"][0].equals(read_parts(table)["all"][0])
    found = json.loads((out.path / "state.json").read_text())["found"]
    assert found["anomalies"] >= 3 if method != "lof" else found["anomalies"] >= 1
    assert any(abs(row["v"]) > 30 for row in found["sample"]) or method == "lof"


def test_anomalies_need_complete_numeric_features(tmp_path):
    from trainflow.errors import DataError
    from trainflow.tables import TableSchema
    from trainflow.transforms.anomalies import fit

    df = pl.DataFrame({"v": [1.0, None, 2.0], "label": ["a", "b", "a"]})
    schema = TableSchema(target="label", features=["v"], classes=["a", "b"])
    with pytest.raises(DataError, match="complete features: add a `clean` step"):
        fit(df, schema, AnomaliesParams(type="anomalies"), 0)
