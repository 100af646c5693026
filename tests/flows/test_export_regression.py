"""`trainflow export` of a regression's package (pipelines/diabetes_mlp.yaml, CI-sized, through
the real Prefect engine): every format's graph ends in the inverse target scaling, gives one
float per row named `prediction`, and on the raw test rows scores the numbers the package's
predictor gives, in the target's units (issue 19, part 7)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

import trainflow
from tests.flows.helpers import run
from tests.flows.test_export import raw_rows
from tests.unit.test_export import runtime_input
from trainflow.cli import main
from trainflow.export import SUFFIX

pytestmark = pytest.mark.usefixtures("prefect_engine")


def exported_numbers(path: Path, fmt: str, x: np.ndarray) -> np.ndarray:
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [o.name for o in session.get_outputs()] == ["prediction"]
        return session.run(["prediction"], {"features": x})[0]
    # the test loads files it wrote itself; trainflow never calls torch.export.load
    program = (
        torch.jit.load(str(path)) if fmt == "torchscript" else torch.export.load(str(path)).module()
    )
    with torch.no_grad():
        return program(torch.from_numpy(x)).numpy()


def test_a_regressions_exports_predict_the_packages_numbers_on_the_raw_test_rows(tmp_path, capsys):
    result, _ = run("diabetes_mlp", tmp_path, "train.epochs=3", "evaluate.cv.folds=2")
    raw = raw_rows(result, "diabetes_mlp").drop("target")
    packages = {"package": result["package"], "ensemble": result["packages"]["ensemble"]}
    assert isinstance(packages["ensemble"], str)  # the folds' mean exports as one graph too
    for kind, package in packages.items():
        expected = trainflow.load_model(package).predict(raw)
        assert expected.ndim == 1 and 25 < expected.mean() < 346  # the target's units
        for fmt in ("onnx", "torchscript", "exported_program"):
            output = tmp_path / kind / f"model.{SUFFIX[fmt]}"
            assert main(["export", package, "--format", fmt, "--output", str(output)]) == 0
            printed = json.loads(capsys.readouterr().out)
            assert printed["classes"] == [] and printed["check"]["max_rel_difference"] <= 1e-5
            sidecar = json.loads(Path(printed["sidecar"]).read_text())
            assert sidecar["output"]["name"] == "prediction"
            assert sidecar["output"]["shape"] == ["batch"]
            got = exported_numbers(output, fmt, runtime_input(raw, sidecar))
            assert got.shape == expected.shape, (kind, fmt)
            np.testing.assert_allclose(got, expected, rtol=1e-4, err_msg=f"{kind} {fmt}")
