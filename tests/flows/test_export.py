"""`trainflow export`: the exported ONNX, TorchScript and ExportedProgram files, fed the raw
numeric columns of a run's test split as their sidecar says (text columns turned into codes
by the runtime, everything numeric done inside the graph), give the package predictor's
probabilities within 1e-5, for every shipped pipeline; a model an exporter cannot take is
refused by the CLI with one message naming what stops it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import polars as pl
import pytest
import torch

import trainflow
from tests.flows.helpers import ALONE, PACKAGE_RUNS, ROOT, run
from tests.unit.test_export import runtime_input
from trainflow.cli import main
from trainflow.spec.pipeline import load_spec
from trainflow.testrows import raw_test_rows

pytestmark = pytest.mark.usefixtures("prefect_engine")

# one CI-sized run per shipped pipeline, shared with the parity tests (fixture package_run):
# credit_smote_mlp has missing values (filled in the graph) and text categories;
# breast_cancer_mlp adds folds, the ensemble, int8 and pruned models; digits_cnn has images
# (normalized per channel in the graph); the sequence pipelines read from columns.
CASES = PACKAGE_RUNS


def raw_rows(result: dict, name: str) -> pl.DataFrame:
    """The ingested rows the split put in test, as a user would hand them over."""
    data, spec = result["data"], load_spec(ROOT / "pipelines" / f"{name}.yaml")
    return raw_test_rows(
        data["ingested"], data["steps"], spec.data.pre_split, data["raw_splits"], spec.seed
    )


def exported_probabilities(path: Path, fmt: str, x: np.ndarray) -> np.ndarray:
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(["probabilities"], {"features": x})[0]
    # the test loads files it wrote itself; trainflow never calls torch.export.load
    program = (
        torch.jit.load(str(path)) if fmt == "torchscript" else torch.export.load(str(path)).module()
    )
    with torch.no_grad():
        return program(torch.from_numpy(x)).numpy()


def export(package: str, fmt: str, output: Path, capsys) -> dict:
    assert main(["export", package, "--format", fmt, "--output", str(output)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["check"]["max_abs_difference"] <= 1e-5
    return json.loads(Path(printed["sidecar"]).read_text())


def assert_exports_score_like(
    package: str,
    raw: pl.DataFrame,
    folder: Path,
    capsys,
    formats=("onnx", "torchscript", "exported_program"),
) -> dict:
    model = trainflow.load_model(package)
    expected = model.predict_proba(raw)
    for fmt in formats:
        output = folder / f"model.{fmt}"
        sidecar = export(package, fmt, output, capsys)
        assert sidecar["output"]["classes"] == model.classes
        got = exported_probabilities(output, fmt, runtime_input(raw, sidecar))
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-5, fmt
        assert np.array_equal(got.argmax(axis=1), expected.argmax(axis=1))
    return sidecar


@pytest.mark.parametrize("name", sorted(CASES))
def test_exports_match_the_package_predictor_on_the_raw_test_rows(
    name, tmp_path, capsys, package_run
):
    result, _ = package_run(name)
    raw = raw_rows(result, name)
    sidecar = assert_exports_score_like(result["package"], raw, tmp_path, capsys)
    folded = [step["step"] for step in sidecar["folded"]]
    if name == "credit_smote_mlp":  # numeric fills and scaling inside; text to codes outside
        assert raw["Income"].null_count() > 0 and "Income" in sidecar["input"]["filled_in_graph"]
        assert folded == ["clean", "normalize"]
        outside = {(s["step"], s["column"]) for s in sidecar["outside"]}
        assert {("encode", c) for c in ("Home", "Marital", "Records", "Job")} <= outside
        assert "Home" not in sidecar["input"]["columns"]
        assert any(c.startswith("Home=") for c in sidecar["input"]["columns"])
    else:
        assert sidecar["outside"] == [] and "normalize" in folded
    if name == "breast_cancer_mlp":
        assert_compressed_and_ensemble_models_export(result["packages"], raw, tmp_path, capsys)


def assert_compressed_and_ensemble_models_export(
    packages: dict, raw: pl.DataFrame, tmp_path: Path, capsys
) -> None:
    """The ensemble exports as one module (its members' mean), the pruned model as any
    network; the int8 model as TorchScript, and the exporters that start from torch.export
    refuse it naming the quantization, leaving no file."""
    for kind in ("ensemble", "prune"):
        (tmp_path / kind).mkdir()
        sidecar = assert_exports_score_like(
            packages[kind], raw, tmp_path / kind, capsys, ("onnx", "torchscript")
        )
    assert sidecar["package"]["kind"] == "prune"
    (tmp_path / "quantize").mkdir()
    assert_exports_score_like(
        packages["quantize"], raw, tmp_path / "quantize", capsys, ("torchscript",)
    )
    output = tmp_path / "quantize" / "int8.onnx"
    assert (
        main(
            [
                "export",
                packages["quantize"],
                "--format",
                "exported_program",
                "--output",
                str(output),
            ]
        )
        == 2
    )
    message = capsys.readouterr().err
    assert "dynamic int8 Linear layers" in message and "--format torchscript" in message
    result = subprocess.run(  # the real command: one message, exit 2, no traceback
        [
            sys.executable,
            "-m",
            "trainflow.cli",
            "export",
            packages["quantize"],
            "--format",
            "onnx",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("error:") == 1
    assert "cannot be exported as onnx" in result.stderr and "torch.ao" in result.stderr
    assert not output.exists() and not output.with_name("int8.onnx.json").exists()
    assert [p.name for p in output.parent.iterdir() if p.name.startswith(".trainflow")] == []


def test_a_transformer_is_refused_as_torchscript_and_exports_otherwise(tmp_path, capsys):
    """Tracing fixes a transformer's batch size (its forward reads len() of a tensor): the
    TorchScript export is refused naming that; ONNX and ExportedProgram score like the
    package."""
    result, _ = run(
        "breast_cancer_mlp",
        tmp_path,
        *ALONE,
        "train.epochs=1",
        "model={type: transformer, d_model: 16, heads: 2, layers: 1, ff: 32}",
    )
    output = tmp_path / "model.pt"
    assert (
        main(["export", result["package"], "--format", "torchscript", "--output", str(output)]) == 2
    )
    message = capsys.readouterr().err
    assert "transformer" in message and "fixed the batch size" in message
    assert "--format onnx or exported_program" in message and not output.exists()
    raw = raw_rows(result, "breast_cancer_mlp")
    assert_exports_score_like(
        result["package"], raw, tmp_path, capsys, ("onnx", "exported_program")
    )


def test_an_unknown_format_is_refused_by_name(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["export", str(tmp_path), "--format", "coreml", "--output", str(tmp_path / "m")])
    assert stopped.value.code == 2
    assert "invalid choice: 'coreml'" in capsys.readouterr().err
