"""The score flow through the real Prefect engine: a trained pipeline's champion scores new
rows into the declared file, with a report of the predicted classes and each feature's drift
from the training data; parameters that point outside the scoring folder are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from tests.conftest import ROOT

SHIFTED = "mean radius"
ROWS = 300


@pytest.fixture(scope="module")
def trained(prefect_engine, tmp_path_factory):
    """breast_cancer_mlp, shrunk, trained once in a folder of its own (its first run makes
    its champion), with a scoring folder beside it."""
    from trainflow.flows.pipeline import pipeline
    from trainflow.spec.pipeline import load_spec

    root = tmp_path_factory.mktemp("scoring")
    spec = yaml.safe_load((ROOT / "pipelines" / "breast_cancer_mlp.yaml").read_text())
    for section in ("ensemble", "compress"):
        spec.pop(section)
    spec["evaluate"] = {}
    spec["train"]["epochs"] = 8
    spec["outputs"] = {"store": str(root / "store"), "runs": str(root / "runs")}
    (root / "pipelines").mkdir()
    (root / "pipelines" / "breast_cancer_mlp.yaml").write_text(yaml.safe_dump(spec))
    (root / "pipelines" / "never_trained.yaml").write_text(
        yaml.safe_dump({**spec, "name": "never_trained"})
    )
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TRAINFLOW_PIPELINES_DIR", str(root / "pipelines"))
        env.setenv("TRAINFLOW_SCORING_DIR", str(root / "scoring"))
        result = pipeline(load_spec(root / "pipelines" / "breast_cancer_mlp.yaml"))
        yield root, Path(result["package"])


def new_rows(shift: bool) -> pl.DataFrame:
    """Rows like the training data (drawn from it with replacement), one feature moved by
    five standard deviations when `shift`."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    frame = pl.DataFrame(bunch.data, schema=[str(n) for n in bunch.feature_names])
    frame = frame.sample(ROWS, with_replacement=True, seed=1)
    if shift:
        frame = frame.with_columns(pl.col(SHIFTED) + 5 * pl.col(SHIFTED).std())
    return frame


def run_score(**parameters):
    from trainflow.flows.score import score

    state = score(**parameters, return_state=True)
    return state, state.state_details.flow_run_id


def artifacts(flow_run_id) -> dict:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a for a in found}


def test_a_score_run_writes_a_prediction_per_row_and_flags_the_shifted_feature(trained):
    from trainflow.predictor import load_model

    root, package = trained
    incoming = root / "scoring" / "breast_cancer_mlp" / "incoming.csv"
    incoming.parent.mkdir(parents=True)
    rows = new_rows(shift=True)
    rows.write_csv(incoming)

    state, run_id = run_score(
        pipeline="breast_cancer_mlp",
        data="breast_cancer_mlp/incoming.csv",
        output="breast_cancer_mlp/out/predictions-{date}.csv",
        proba=True,
    )
    assert state.is_completed(), state.message
    summary = state.result()
    written = list((root / "scoring" / "breast_cancer_mlp" / "out").iterdir())
    assert [p.name for p in written] == [Path(summary["output"]).name]  # no temporary left
    assert written[0].name.startswith("predictions-20") and written[0].suffix == ".csv"
    predictions = pl.read_csv(written[0])
    # one row per input row, in its order: what the champion (the run's package) predicts
    assert predictions.height == ROWS == summary["rows"]
    assert predictions["prediction"].to_list() == load_model(package).predict(rows).tolist()
    assert predictions.columns == ["prediction", "proba_malignant", "proba_benign"]
    assert summary["package"] == str(package)
    counts = predictions["prediction"].value_counts()
    assert summary["classes"] == {
        c: int(counts.filter(pl.col("prediction") == c)["count"].sum())
        for c in ("malignant", "benign")
    }

    drift = {row["column"]: row for row in summary["drift"]}
    assert len(drift) == 30  # every feature the model reads
    assert drift[SHIFTED]["status"] == "drift" and drift[SHIFTED]["psi"] > 1.0
    assert [c for c, row in drift.items() if row["status"] == "drift"] == [SHIFTED]
    assert max(row["psi"] for c, row in drift.items() if c != SHIFTED) < 0.2

    shown = artifacts(run_id)
    report = shown["breast-cancer-mlp-score-report"].data
    assert f"**{ROWS}** row(s)" in report and "| malignant |" in report
    assert f"| {SHIFTED} | numeric |" in report and "drift: **mean radius** (PSI > 0.2)" in report
    assert shown["score-progress"].type == "progress" and shown["score-progress"].data == 100.0
    assert shown["breast-cancer-mlp-score-drift"].type == "table"


def test_a_named_package_scores_to_parquet_and_unshifted_rows_drift_nowhere(trained):
    root, package = trained
    incoming = root / "scoring" / "unshifted.parquet"
    incoming.parent.mkdir(parents=True, exist_ok=True)
    rows = new_rows(shift=False)
    rows.write_parquet(incoming)

    state, _ = run_score(
        pipeline="breast_cancer_mlp",
        data="unshifted.parquet",
        output="scored.parquet",
        package=package.name,
    )
    assert state.is_completed(), state.message
    summary = state.result()
    predictions = pl.read_parquet(root / "scoring" / "scored.parquet")
    assert predictions.columns == ["prediction"] and predictions.height == ROWS
    assert not [row["column"] for row in summary["drift"] if row["status"] == "drift"]
    assert np.isclose(sum(summary["classes"].values()), ROWS)


def test_parameters_that_point_outside_the_scoring_folder_fail_before_any_file_is_read(
    trained, tmp_path
):
    root, _ = trained
    outside = tmp_path / "secret.csv"
    new_rows(shift=False).write_csv(outside)
    (root / "scoring").mkdir(exist_ok=True)
    (root / "scoring" / "escape").symlink_to(tmp_path)
    before = sorted(p for p in root.rglob("*"))

    state, run_id = run_score(
        pipeline="breast_cancer_mlp",
        data=str(outside),
        output="../predictions.csv",
        package="../../store/package/x",
        drift_threshold=0.0,
    )
    assert state.is_failed()
    message = state.message
    assert "- data: " in message and "is not a path relative to the scoring folder" in message
    assert "- output: '../predictions.csv' is not a path relative" in message
    assert "- package: '../../store/package/x' is not a model package" in message
    assert "- drift_threshold: 0.0 is not a PSI threshold" in message
    state, _ = run_score(
        pipeline="breast_cancer_mlp", data="escape/secret.csv", output="/tmp/predictions.csv"
    )
    assert "leads outside the scoring folder" in state.message
    assert "- output: '/tmp/predictions.csv' is not a path" in state.message
    assert sorted(p for p in root.rglob("*")) == before  # nothing written
    assert [key for key in artifacts(run_id) if key] == []  # no report, no progress


def test_a_pipeline_without_a_champion_is_named_with_the_way_to_make_one(trained):
    root, _ = trained
    (root / "scoring" / "never_trained.csv").parent.mkdir(exist_ok=True)
    new_rows(shift=False).write_csv(root / "scoring" / "never_trained.csv")
    state, _ = run_score(pipeline="never_trained", data="never_trained.csv", output="never.csv")
    assert state.is_failed()
    assert "pipeline 'never_trained' has no champion yet" in state.message
    assert not (root / "scoring" / "never.csv").exists()


def test_predict_to_a_file_reads_numbers_once_and_still_names_a_bad_value(trained, capsys):
    """`--output` parses a CSV's number columns as numbers in the scoring pass itself; a
    value that does not parse starts it again as text, so the message and the output are
    those of the text path: the bad value named and nothing written, and a blank padded
    with spaces is a missing value (filled) as on stdout."""
    from trainflow.cli import main

    root, package = trained
    rows = new_rows(shift=False).head(20).with_columns(pl.col(SHIFTED).cast(pl.String))
    padded = root / "padded.csv"
    rows.with_columns(
        pl.when(pl.int_range(pl.len()) == 3)
        .then(pl.lit("   "))
        .otherwise(pl.col(SHIFTED))
        .alias(SHIFTED)
    ).write_csv(padded)
    assert main(["predict", str(package), str(padded), "--output", str(root / "p.csv")]) == 0
    capsys.readouterr()
    assert main(["predict", str(package), str(padded)]) == 0
    assert capsys.readouterr().out == (root / "p.csv").read_text()
    assert len((root / "p.csv").read_text().splitlines()) == 21

    bad = root / "bad.csv"
    rows.with_columns(
        pl.when(pl.int_range(pl.len()) == 7)
        .then(pl.lit("12,5"))
        .otherwise(pl.col(SHIFTED))
        .alias(SHIFTED)
    ).write_csv(bad)
    assert main(["predict", str(package), str(bad), "--output", str(root / "b.csv")]) == 2
    error = capsys.readouterr().err
    assert f"column '{SHIFTED}': 1 value(s) do not convert to Float64" in error
    assert "['12,5'] (the first at row 8)" in error
    assert not (root / "b.csv").exists() and not list(root.glob("*tmp*"))
