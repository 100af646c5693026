"""The shipped regression pipeline (pipelines/diabetes_mlp.yaml) end to end through the real
Prefect engine, CI-sized: its metrics are a regression's, and its model package predicts the
numbers the evaluate task scored, in the target's units, from Python and from
`trainflow predict` (issue 19, part 7)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.flows.helpers import run
from trainflow import load_model
from trainflow.errors import TrainflowError
from trainflow.testrows import raw_test_rows

pytestmark = pytest.mark.usefixtures("prefect_engine")


def test_the_diabetes_pipeline_trains_a_regressor_whose_package_predicts_its_numbers(
    tmp_path, capsys
):
    from trainflow.cli import main
    from trainflow.spec.pipeline import load_spec

    result, states = run("diabetes_mlp", tmp_path, "train.epochs=40", "evaluate.cv.folds=2")
    assert all(s == "Completed" for names in states.values() for s in names)
    assert {"ingest", "split", "train", "evaluate", "train_fold", "ensemble"} <= set(states)
    assert {"package", "promote"} <= set(states)

    run_dir = Path(result["run_dir"])
    test = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert {"rmse", "mae", "r2", "mape"} <= set(test) and "accuracy" not in test
    assert test["r2"] > 0.3 and 40 < test["rmse"] < 70  # the target spans 25-346
    report = (run_dir / "report.md").read_text()
    assert report.index("| rmse |") < report.index("## Data")  # the result leads

    # the package predicts the evaluate task's test predictions, in the target's units
    evaluated = np.load(result["evaluation"].path / "test_pred.npy")
    data = result["data"]
    spec = load_spec(Path("pipelines/diabetes_mlp.yaml"))
    rows = raw_test_rows(
        data["ingested"], data["steps"], spec.data.pre_split, data["raw_splits"], spec.seed
    )
    model = load_model(result["package"])
    predicted = model.predict(rows.drop("target"))
    assert predicted.dtype == np.float64 and len(predicted) == len(evaluated) == rows.height
    np.testing.assert_allclose(predicted, evaluated, rtol=1e-5)
    assert 25 < predicted.mean() < 346
    with pytest.raises(TrainflowError, match="is a regression's: it predicts a number"):
        model.predict_proba(rows)

    # trainflow predict writes one float per row, no probabilities
    raw = tmp_path / "test_rows.csv"
    rows.drop("target").write_csv(raw)
    scored = tmp_path / "scored.csv"
    assert main(["predict", result["package"], str(raw), "--output", str(scored)]) == 0
    written = pl.read_csv(scored)
    assert written.columns == ["prediction"] and written["prediction"].dtype == pl.Float64
    np.testing.assert_allclose(written["prediction"].to_numpy(), evaluated, rtol=1e-5)
    capsys.readouterr()
    assert main(["predict", result["package"], str(raw), "--proba"]) != 0
    assert "is a regression's: it predicts a number per row" in capsys.readouterr().err
    assert "predicts a number" in repr(model)
    # its exports: tests/flows/test_export_regression.py
