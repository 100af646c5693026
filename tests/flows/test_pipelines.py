"""Every shipped pipeline runs end to end, CI-sized, through the real Prefect engine."""

import base64
import json
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from tests.flows.helpers import run
from trainflow.tasks.report import IMAGES

pytestmark = pytest.mark.usefixtures("prefect_engine")

CASES = {
    "digits_cnn": (
        ["train.epochs=8", "evaluate.cv.folds=2", "compress.prune.finetune_epochs=2"],
        0.95,
    ),
    "breast_cancer_mlp": (["train.epochs=30", "evaluate.cv.folds=2"], 0.93),
    "credit_smote_mlp": (["train.epochs=15", "evaluate.cv.folds=2"], 0.70),
}
STEPS = {
    "digits_cnn": {"clean", "split", "normalize"},
    "breast_cancer_mlp": {"clean", "split", "normalize"},
    "credit_smote_mlp": {"clean", "split", "normalize", "encode", "anomalies", "resample"},
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_shipped_pipeline_end_to_end(name, tmp_path):
    overrides, floor = CASES[name]
    result, states = run(name, tmp_path, *overrides)
    assert set(states) == STEPS[name] | {
        "ingest",
        "expect",
        "shard",
        "train",
        "evaluate",
        "train_fold",
        "ensemble",
        "quantize",
        "prune",
        "measure_latency",
        "package",
        "promote",
        "report",
        "publish_report",
    }
    assert all(s == "Completed" for names in states.values() for s in names)
    assert len(states["train_fold"]) == 2
    assert result["test"]["accuracy"] >= floor

    run_dir = Path(result["run_dir"])
    assert run_dir.parent == tmp_path / "runs" / name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    report = (run_dir / "report.md").read_text()
    for section in (
        "## Data",
        "## Data profile",
        "## Test metrics",
        "Confusion matrix",
        "## Cross-validation",
        "## Ensemble",
        "## Compression: quantize",
        "## Compression: prune",
        "## Models written",
    ):
        assert section in report
    assert report.index("## Test metrics") < report.index("## Data")  # the result leads
    assert metrics["test"]["accuracy"] == result["test"]["accuracy"]
    assert len(metrics["cv"]["folds"]) == 2 and set(metrics["cv"]["std"]) == set(
        metrics["cv"]["mean"]
    )
    if "resample" not in STEPS[name]:
        assert sum(metrics["data"]["rows"].values()) == metrics["data"]["ingested_rows"]
    else:  # SMOTE balanced the training part, and only it; anomalies were reported
        assert "## Anomalies" in report and metrics["anomalies"][0]["anomalies"] > 0
        assert "## Training rows as prepared" in report
        sample = metrics["training_sample"][0]
        assert isinstance(sample["Home"], str) and not any(k.startswith("Home=") for k in sample)
        assert len(set(metrics["data"]["classes"]["train"].values())) == 1
        assert (
            metrics["data"]["train_before_post_split_steps"]["rows"]
            < metrics["data"]["rows"]["train"]
        )
    assert all(Path(path).exists() for path in metrics["models"].values())

    quantized, pruned = metrics["compress"]["quantize"], metrics["compress"]["prune"]
    assert quantized["linear_weights_smaller_x"] >= 3.5
    assert abs(quantized["after"]["accuracy"] - quantized["before"]["accuracy"]) <= 0.01
    assert pruned["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert pruned["after"]["accuracy"] >= pruned["before"]["accuracy"] - 0.01
    assert metrics["ensemble"]["members"] == 2
    assert (run_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"  # loss and lr per epoch
    assert "![training curves](curves.png)" in report
    assert (run_dir / "confusion.png").read_bytes()[:4] == b"\x89PNG"  # test confusion matrix
    assert "![confusion matrix](confusion.png)" in report
    binary = len(metrics["test"]["confusion_matrix"]) == 2
    for curve in ("roc.png", "pr.png"):  # a binary target's ROC and PR curves, beside the report
        assert (run_dir / curve).is_file() == binary, (name, curve)
    if name == "digits_cnn":  # random erasing: a preview of augmented samples beside the model
        preview = Path(metrics["models"]["model"]) / "augment_preview.png"
        assert preview.read_bytes()[:4] == b"\x89PNG"
        assert (run_dir / "augment_preview.png").read_bytes() == preview.read_bytes()
        assert "![augmentation preview](augment_preview.png)" in report

    # the same report is a markdown artifact of the flow run in the Prefect UI
    key = name.replace("_", "-") + "-report"
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    expected = report
    for image in IMAGES:  # inline in the UI
        if (run_dir / image).exists():
            inline = base64.b64encode((run_dir / image).read_bytes()).decode()
            expected = expected.replace(f"]({image})", f"](data:image/png;base64,{inline})")
    assert any(a.type == "markdown" and a.data == expected for a in artifacts)
    # training moved a progress artifact of its task run to 100 %
    with get_client(sync_client=True) as client:
        progress = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["train-progress"]))
        )
    assert progress and all(a.type == "progress" for a in progress)
    assert any(a.data == 100.0 for a in progress)


def test_trainflow_run_command_prints_metrics_and_run_folder(tmp_path, capsys):
    from trainflow.cli import main

    spec = Path(__file__).resolve().parents[2] / "pipelines" / "breast_cancer_mlp.yaml"
    code = main(
        [
            "run",
            str(spec),
            "--set",
            "train.epochs=5",
            "--set",
            "evaluate.cv.folds=2",
            "--set",
            f"outputs.store={tmp_path / 'store'}",
            "--set",
            f"outputs.runs={tmp_path / 'runs'}",
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert (Path(printed["run_dir"]) / "report.md").is_file()
    assert (Path(printed["package"]) / "manifest.json").is_file()  # the model's package
    assert 0.5 < printed["test"]["accuracy"] <= 1.0


def test_minimal_spec_without_optional_sections(tmp_path):
    from prefect import tags

    from tests.flows.helpers import task_states
    from trainflow.flows.pipeline import pipeline
    from trainflow.spec.pipeline import validate_spec

    spec = validate_spec(
        {
            "name": "iris_minimal",
            "data": {
                "source": {"type": "sklearn", "dataset": "iris"},
                "steps": [{"type": "split"}],
            },
            "model": {"type": "mlp"},
            "train": {"epochs": 3},
            "outputs": {"store": str(tmp_path / "store"), "runs": str(tmp_path / "runs")},
        }
    )
    with tags("iris-minimal-" + tmp_path.name):
        result = pipeline(spec)
    states = task_states("iris-minimal-" + tmp_path.name)
    assert set(states) == {
        "ingest",
        "expect",
        "split",
        "shard",
        "train",
        "evaluate",
        "package",
        "promote",
        "report",
        "publish_report",
    }
    report = (Path(result["run_dir"]) / "report.md").read_text()
    assert "## Test metrics" in report and "Cross-validation" not in report
    assert result["folds"] == [] and result["ensemble"] is None and result["compressed"] == {}
