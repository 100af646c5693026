"""MLflow, where a team already has it: a run with `outputs.mlflow` set, through the real
Prefect engine, logged to a real MLflow tracking store (a SQLite file): the spec as params,
the epochs as metric history, folds as nested runs, the report and plots, the package as a
registered pyfunc model that scores as trainflow does, and the `champion` alias following
the champion rule."""

import sys

import numpy as np
import pytest

from tests.flows.helpers import ROOT, run
from trainflow.errors import SpecError, TrainflowError
from trainflow.predictor import load_model
from trainflow.spec.pipeline import load_spec
from trainflow.testrows import raw_test_rows

mlflow = pytest.importorskip("mlflow")

NAME = "breast_cancer_mlp"
SMALL = (
    "train.epochs=2",
    "evaluate.cv.folds=2",
    "ensemble=null",
    "compress.quantize=null",
    "compress.prune=null",
)
BAD = ("train.epochs=1", "evaluate.cv=null", "train.lr=0.5")  # worse: the champion stays


@pytest.mark.usefixtures("prefect_engine")
def test_a_run_is_logged_to_mlflow_and_promotion_moves_the_alias(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow keeps a SQLite store's artifacts in ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    where = (f"outputs.mlflow.tracking_uri={uri}", "outputs.mlflow.experiment=churn-team")
    result, states = run(NAME, tmp_path, *SMALL, *where)
    assert states["mlflow_log"] == ["Completed"]
    logged = result["mlflow"]
    assert result["champion"]["decision"] == "promoted"  # the pipeline's first run
    assert logged["version"] == "1" and logged["champion_alias"]

    client = mlflow.MlflowClient(uri)
    assert client.get_experiment(logged["experiment_id"]).name == "churn-team"
    parent = client.get_run(logged["run_id"])
    params = parent.data.params
    assert params["train.epochs"] == "2" and params["evaluate.cv.folds"] == "2"
    assert params["name"] == NAME and params["outputs.mlflow.tracking_uri"] == uri
    assert params["ensemble"] == "null"
    loss = client.get_metric_history(logged["run_id"], "train_loss")
    assert [m.step for m in loss] == [1, 2]
    assert parent.data.metrics["test/f1_macro"] == result["test"]["f1_macro"]

    folds = client.search_runs(
        [logged["experiment_id"]], f"tags.mlflow.parentRunId = '{logged['run_id']}'"
    )
    assert sorted(r.info.run_name for r in folds) == ["fold-0", "fold-1"]
    by_fold = {r.data.tags["trainflow.fold"]: r for r in folds}
    for ref in result["folds"]:
        fold = by_fold[str(ref.meta["fold"])]
        assert fold.data.metrics["val/f1_macro"] == ref.meta["val"]["f1_macro"]
        assert len(client.get_metric_history(fold.info.run_id, "val_loss")) == 2

    files = {f.path for f in client.list_artifacts(logged["run_id"], "report")}
    assert {
        "report/report.md",
        "report/metrics.json",
        "report/confusion.png",
        "report/curves.png",
    } <= files

    # the registered champion scores new rows as trainflow's own package does
    data, spec = result["data"], load_spec(ROOT / "pipelines" / f"{NAME}.yaml")
    rows = (
        raw_test_rows(
            data["ingested"], data["steps"], spec.data.pre_split, data["raw_splits"], spec.seed
        )
        .drop("target")
        .to_pandas()
    )
    ours = load_model(result["package"])
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)  # models:/ URIs resolve against the global registry
    try:
        served = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
        proba = mlflow.pyfunc.load_model(f"models:/{NAME}/1", model_config={"proba": True})
    finally:
        mlflow.set_tracking_uri(previous)
    assert list(served.predict(rows)) == list(ours.predict(rows))
    np.testing.assert_array_equal(proba.predict(rows), ours.predict_proba(rows))

    worse, _ = run(NAME, tmp_path, *SMALL, *BAD, *where)
    assert worse["champion"]["decision"] == "kept", worse["champion"]["reason"]
    assert worse["mlflow"]["version"] == "2" and not worse["mlflow"]["champion_alias"]
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    assert client.get_model_version(NAME, "2").tags["trainflow.decision"] == "kept"


@pytest.mark.usefixtures("prefect_engine")
def test_without_the_extra_a_run_stops_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if mlflow were not installed
    with pytest.raises(TrainflowError, match=r"pip install 'trainflow\[mlflow\]'"):
        run(NAME, tmp_path, *SMALL, f"outputs.mlflow.tracking_uri=sqlite:///{tmp_path}/m.db")
    assert not (tmp_path / "store").exists()  # nothing trained, nothing written


def test_a_tracking_uri_is_required():
    with pytest.raises(SpecError, match=r"outputs\.mlflow\.tracking_uri"):
        load_spec(ROOT / "pipelines" / f"{NAME}.yaml", ["outputs.mlflow.experiment=churn"])
