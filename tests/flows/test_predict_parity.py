"""The test that matters: a run's model package, scoring the raw rows of its test split (as
ingest read them, before any data step), gives exactly the evaluate task's predictions, for
every shipped pipeline; and every other model of a run (each fold, the ensemble, the
quantized and pruned models) has a package that scores like it."""

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import trainflow
from tests.flows.helpers import PACKAGE_RUNS, ROOT
from trainflow.cli import main
from trainflow.spec.pipeline import load_spec
from trainflow.testrows import raw_test_rows

pytestmark = pytest.mark.usefixtures("prefect_engine")

# 2 epochs each, one run per pipeline shared with the export tests (fixture package_run):
# credit_smote_mlp has missing values, text categories and SMOTE on train only;
# breast_cancer_mlp has folds, an ensemble and compressed models; digits_cnn images;
# sequences_gru sequences; sequences_multitask two heads (the package predicts the main one).
CASES = PACKAGE_RUNS


def assert_scores_like(model_path: str, raw: pl.DataFrame, expected: np.ndarray) -> None:
    model = trainflow.load_model(model_path)
    probs = model.predict_proba(raw)
    assert probs.shape == expected.shape
    assert np.array_equal(probs.argmax(axis=1), expected.argmax(axis=1))
    assert np.abs(probs - expected).max() <= 1e-5
    assert model.predict(raw).tolist() == [model.classes[i] for i in expected.argmax(axis=1)]


@pytest.mark.parametrize("name", sorted(CASES))
def test_package_scores_the_raw_test_rows_as_evaluate_did(name, tmp_path, package_run):
    result, states = package_run(name)
    assert set(states["package"]) == {"Completed"}
    package = json.loads((Path(result["package"]) / "package.json").read_text())
    # the ingested rows the split put in test, as ingest stored them (before any step)
    data, spec = result["data"], load_spec(ROOT / "pipelines" / f"{name}.yaml")
    raw = raw_test_rows(
        data["ingested"], data["steps"], spec.data.pre_split, data["raw_splits"], spec.seed
    )
    assert len(raw) == data["splits"].meta["parts"]["test"]["rows"]
    expected = np.load(result["evaluation"].path / "test_probs.npy", allow_pickle=False)
    assert_scores_like(result["package"], raw, expected)
    if name == "credit_smote_mlp":  # raw rows indeed: missing values, text categories
        assert raw["Income"].null_count() > 0 and raw["Home"].dtype == pl.String
        assert package["training_only"] == ["split", "resample"]
        assert_cli_scores_a_csv_of_the_raw_rows(result["package"], raw, expected, tmp_path)
    if name == "breast_cancer_mlp":
        assert_every_model_of_the_run_has_a_package(result, raw)


def assert_cli_scores_a_csv_of_the_raw_rows(
    package: str, raw: pl.DataFrame, expected: np.ndarray, tmp_path: Path
) -> None:
    """`trainflow predict` on a CSV file of the rows: text converted to the training types,
    one output row per input row, in order."""
    data, output = tmp_path / "rows.csv", tmp_path / "predictions.parquet"
    raw.drop("Status").write_csv(data)
    assert main(["predict", package, str(data), "--output", str(output), "--proba"]) == 0
    scored = pl.read_parquet(output)
    classes = trainflow.load_model(package).classes
    assert scored.columns == ["prediction", *(f"proba_{c}" for c in classes)]
    assert scored["prediction"].to_list() == [classes[i] for i in expected.argmax(axis=1)]
    assert np.abs(scored.drop("prediction").to_numpy() - expected).max() <= 1e-5


def assert_every_model_of_the_run_has_a_package(result: dict, raw: pl.DataFrame) -> None:
    """Each fold's package applies the steps as fitted in its fold; the ensemble's combines
    its members as the ensemble task did; the compressed models score their test accuracy."""
    packages = result["packages"]
    assert len(packages["folds"]) == len(result["folds"]) == 2
    for fold, package in zip(result["folds"], packages["folds"]):
        assert_scores_like(package, raw, np.load(fold.path / "test_probs.npy", allow_pickle=False))
    assert_scores_like(
        packages["ensemble"],
        raw,
        np.load(result["ensemble"].path / "test_probs.npy", allow_pickle=False),
    )
    labels = raw["target"].to_numpy()
    for kind in ("quantize", "prune"):
        predicted = trainflow.load_model(packages[kind]).predict(raw)
        accuracy = float(np.mean(predicted == labels))
        assert accuracy == pytest.approx(result["compressed"][kind].meta["after"]["accuracy"])
