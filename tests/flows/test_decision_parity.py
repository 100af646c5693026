"""A run with evaluate.calibrate and evaluate.threshold: its model package (Python API and
`trainflow predict`) gives the evaluate task's calibrated probabilities and thresholded
classes on the raw test rows; the report shows the extra metrics, the calibration, the
threshold and the ROC and PR curves."""

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

import trainflow
from tests.flows.helpers import ALONE, ROOT, run
from trainflow.cli import main
from trainflow.spec.pipeline import load_spec
from trainflow.testrows import raw_test_rows

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_engine")]

DECIDED = (
    *ALONE,
    "train.epochs=4",
    "evaluate.metrics=[roc_auc, pr_auc, log_loss, brier, ece]",
    "evaluate.calibrate=temperature",
    "evaluate.threshold.min_recall=0.99",
)


def test_a_calibrated_thresholded_package_predicts_what_evaluate_reported(tmp_path):
    result, states = run("breast_cancer_mlp", tmp_path, *DECIDED)
    assert set(states["package"]) == {"Completed"}
    data, spec = result["data"], load_spec(ROOT / "pipelines" / "breast_cancer_mlp.yaml")
    raw = raw_test_rows(
        data["ingested"], data["steps"], spec.data.pre_split, data["raw_splits"], spec.seed
    )
    evaluation = result["evaluation"].path
    probs = np.load(evaluation / "test_probs.npy", allow_pickle=False)
    predicted = np.load(evaluation / "test_pred.npy", allow_pickle=False)
    test = result["test"]
    assert test["calibration"]["temperature"] != 1.0
    model = trainflow.load_model(result["package"])
    classes = np.asarray(model.classes)
    # the threshold decides some rows against their most probable class, so the package
    # must apply it (an argmax would not give evaluate's classes)
    assert (predicted != probs.argmax(1)).any()
    assert np.abs(model.predict_proba(raw) - probs).max() <= 1e-5
    assert model.predict(raw).tolist() == classes[predicted].tolist()
    accuracy = float(np.mean(model.predict(raw) == raw["target"].cast(pl.String).to_numpy()))
    assert accuracy == pytest.approx(test["accuracy"])
    # trainflow predict on a CSV of the raw rows gives the same classes and probabilities
    rows, output = tmp_path / "rows.csv", tmp_path / "scored.parquet"
    raw.drop("target").write_csv(rows)
    assert main(["predict", result["package"], str(rows), "--output", str(output), "--proba"]) == 0
    scored = pl.read_parquet(output)
    assert scored["prediction"].to_list() == classes[predicted].tolist()
    assert np.abs(scored.drop("prediction").to_numpy() - probs).max() <= 1e-5
    # a TorchScript export computes the calibrated probabilities; its sidecar says the rule
    exported = tmp_path / "model.pt"
    assert (
        main(["export", result["package"], "--format", "torchscript", "--output", str(exported)])
        == 0
    )
    sidecar = json.loads((tmp_path / "model.pt.json").read_text())
    features = raw.select(sidecar["input"]["columns"]).to_numpy().astype(np.float32)
    graph = torch.jit.load(str(exported))
    with torch.no_grad():
        exported_probs = graph(torch.from_numpy(features)).numpy()
    assert np.abs(exported_probs - probs).max() <= 1e-5
    assert "(evaluate.threshold)" in sidecar["output"]["prediction"]
    # the report: the added metrics, the calibration, the threshold and the curves
    run_dir = Path(result["run_dir"])
    report = (run_dir / "report.md").read_text()
    for name in ("roc_auc", "pr_auc", "log_loss", "brier", "ece"):
        assert f"| {name} | {test[name]:.4f} |" in report
    assert "### Calibration (temperature scaling" in report
    assert f"| validation | {test['calibration']['val_ece_before']:.4f} |" in report
    assert "### Decision threshold (tuned on validation: recall of" in report
    for image in ("roc.png", "pr.png"):
        assert f"]({image})" in report
        assert (run_dir / image).read_bytes().startswith(b"\x89PNG")
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["test"]["threshold"]["val_recall"] >= 0.99
