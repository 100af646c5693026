"""A regression run's report (issue 19, part 7): its test metrics in the target's units with
a predicted-vs-actual plot and a residual plot, no confusion matrix; the cross-validation
table of rmse, mae, r2 and mape (the UI's table rounded to 4 digits); the mean ensemble."""

from __future__ import annotations

import json
from pathlib import Path
from uuid import uuid4

import numpy as np
import pytest
from prefect import tags
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from tests.flows.helpers import task_states
from trainflow import load_model
from trainflow.flows.pipeline import pipeline
from trainflow.plots import PREDICTED_VS_ACTUAL, RESIDUALS
from trainflow.spec.pipeline import load_spec
from trainflow.testrows import raw_test_rows

pytestmark = pytest.mark.usefixtures("prefect_engine")

SPEC = """
name: diabetes_cv
task: regression
data:
  source: {type: sklearn, dataset: diabetes}
  steps:
    - {type: split, validation: 0.15, test: 0.2}
    - {type: normalize, method: standard}
model: {type: mlp, hidden_layers: 1, units: [16]}
train:
  lr: 0.01
  epochs: 6
  early_stopping: {monitor: val_rmse, patience: 3}
evaluate:
  cv: {folds: 2}
ensemble: {type: mean}
"""


def test_a_regression_report_shows_its_plots_cv_table_and_mean_ensemble(tmp_path):
    (tmp_path / "diabetes_cv.yaml").write_text(SPEC)
    outputs = [f"outputs.store={tmp_path / 'store'}", f"outputs.runs={tmp_path / 'runs'}"]
    tag = f"test-{uuid4().hex[:12]}"
    spec = load_spec(tmp_path / "diabetes_cv.yaml", outputs)
    with tags(tag):
        result = pipeline(spec)
    states = task_states(tag)
    assert all(s == "Completed" for names in states.values() for s in names)
    folder = Path(result["run_dir"])
    report = (folder / "report.md").read_text()
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["task"] == "regression"
    for image in (PREDICTED_VS_ACTUAL, RESIDUALS):
        assert f"]({image})" in report
        assert (folder / image).read_bytes().startswith(b"\x89PNG")
    assert "confusion" not in report.lower() and not (folder / "confusion.png").exists()
    test = metrics["test"]
    assert {"rmse", "mae", "r2", "mape"} <= set(test) and "accuracy" not in test
    assert report.index("| rmse |") < report.index("## Data")  # the result leads
    cv = metrics["cv"]
    assert cv["metrics"] == ["rmse", "mae", "r2", "mape"] and len(cv["folds"]) == 2
    assert "| fold | rmse | mae | r2 | mape |" in report
    assert cv["mean"]["rmse"] == pytest.approx(np.mean([f["rmse"] for f in cv["folds"]]))
    mean = " | ".join(f"{cv['mean'][m]:.4f}" for m in cv["metrics"])
    assert f"| mean | {mean} |" in report  # each figure under its own column
    ensemble = metrics["ensemble"]
    assert ensemble["type"] == "mean" and len(ensemble["members_rmse"]) == 2
    assert "## Ensemble (mean: the mean of 2 fold models' predictions" in report
    assert "validation rmse" in report  # the training line reads a regression's figures
    # the data section: the target's spread per part, alike (the quantile-bin split)
    assert "| split | rows | target mean | target std |" in report
    target = metrics["data"]["target"]
    assert set(target) == {"train", "val", "test"}
    for part in target.values():
        assert abs(part["median"] / target["train"]["median"] - 1) < 0.15
    with get_client(sync_client=True) as client:
        (table,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["diabetes-cv-cv-folds"]))
        )[:1]
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert [set(r) for r in rows] == [{"fold", "rmse", "mae", "r2", "mape"}] * 4
    assert all(
        round(v, 4) == v for r in rows for v in r.values() if isinstance(v, float)
    )  # 4 digits, as the report rounds them
    # the ensemble's package predicts, from raw test rows, the numbers the ensemble scored
    data = result["data"]
    raw = raw_test_rows(
        data["ingested"], data["steps"], spec.data.pre_split, data["raw_splits"], spec.seed
    )
    model = load_model(result["packages"]["ensemble"])
    assert model.info.combine == "mean" and len(model.info.members) == 2
    expected = np.load(result["ensemble"].path / "test_preds.npy")
    np.testing.assert_allclose(model.predict(raw), expected, rtol=1e-5)
