"""Shipped sequence pipelines (GRU, truncated BPTT, multi-task) and robust accuracy in a run."""

import json
from pathlib import Path

import numpy as np
import pytest

from tests.flows.helpers import ROOT, run
from trainflow.cli import main
from trainflow.shards import read_split

pytestmark = pytest.mark.usefixtures("prefect_engine")


def test_sequence_pipeline_trains_a_gru_with_truncated_bptt(tmp_path):
    result, states = run("sequences_gru", tmp_path, "train.epochs=6")
    assert all(s == "Completed" for names in states.values() for s in names)
    assert result["test"]["accuracy"] >= 0.8  # 3 classes: chance is 1/3
    x, y = read_split(result["data"]["shards"].path, "train")
    assert x.shape[1:] == (64, 2)  # samples reach the model as (steps, channels)
    assert set(np.unique(y)) == {0, 1, 2}
    info = json.loads((Path(result["model"].path) / "model.json").read_text())
    assert info["model"]["type"] == "gru" and info["input_shape"] == [64, 2]


def test_tbptt_on_a_non_recurrent_model_fails_before_any_task(tmp_path, capsys):
    code = main(
        [
            "run",
            str(ROOT / "pipelines" / "sequences_gru.yaml"),
            "--set",
            "model={type: mlp}",
            "--set",
            f"outputs.store={tmp_path / 'store'}",
        ]
    )
    assert code == 2
    assert "train.tbptt" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()  # nothing ran, nothing written


def test_multitask_pipeline_trains_both_heads(tmp_path):
    result, states = run("sequences_multitask", tmp_path, "train.epochs=14")
    assert all(s == "Completed" for names in states.values() for s in names)
    rows = [
        json.loads(line)
        for line in (Path(result["model"].path) / "metrics.jsonl").read_text().splitlines()
    ]
    assert rows[-1]["val_accuracy"] >= 0.8 and rows[-1]["val_amplitude_accuracy"] >= 0.7
    info = json.loads((Path(result["model"].path) / "model.json").read_text())
    assert info["aux_targets"] == {"amplitude": ["high", "low"]}
    assert result["test"]["accuracy"] >= 0.8  # the test metrics are the main target's


def test_report_shows_robust_accuracy_beside_accuracy(tmp_path):
    result, _ = run(
        "breast_cancer_mlp",
        tmp_path,
        "train.epochs=5",
        "evaluate.cv=null",
        "ensemble=null",
        "compress={}",
        "train.adversarial={method: fgsm, epsilon: 0.3}",
    )
    report = (Path(result["run_dir"]) / "report.md").read_text()
    test_table = report.split("## Test metrics")[1].split("Confusion matrix")[0]
    assert "| accuracy |" in test_table and "| robust_accuracy |" in test_table
    assert result["test"]["robust_accuracy"] < result["test"]["accuracy"]
