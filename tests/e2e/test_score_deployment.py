"""The score deployments against a real `prefect server` on 127.0.0.1: a pipeline's champion
(made by a run of its retraining deployment) scores the rows that arrive in the scoring
folder, run from the REST API as the UI's Run button does; parameters are confined."""

from __future__ import annotations

import yaml

from tests.conftest import ROOT
from tests.flows.test_score import ROWS, SHIFTED, new_rows

PIPELINES = sorted(p.stem for p in (ROOT / "pipelines").glob("*.yaml"))
ENTRYPOINT = "trainflow.flows.score:score"


def test_every_shipped_pipeline_has_a_daily_score_deployment():
    config = yaml.safe_load((ROOT / "deploy" / "prefect.yaml").read_text())
    scoring = [d for d in config["deployments"] if d["entrypoint"] == ENTRYPOINT]
    assert sorted(d["name"] for d in scoring) == PIPELINES
    for deployment in scoring:
        name, parameters = deployment["name"], deployment["parameters"]
        assert deployment["work_pool"]["name"] == "trainflow-process"
        assert parameters["pipeline"] == name
        # the data and the predictions lie in the pipeline's folder of the scoring folder
        assert parameters["data"].startswith(f"{name}/incoming")
        assert parameters["output"] == f"{name}/predictions-{{date}}.csv"
        assert [s["cron"] for s in deployment["schedules"]] == ["0 6 * * *"]


def score_deployment(server, name: str) -> dict:
    return server.get(f"/deployments/name/score/{name}")


def test_the_score_deployment_run_from_the_api_writes_predictions_with_a_drift_table(
    served, prefect_server
):
    # a champion first: the retraining deployment's run (its first run promotes), as in
    # tests/e2e/test_deployments.py, whose cached steps it reuses when both run
    train = prefect_server.run(
        "breast_cancer_mlp",
        {
            "pipeline": "breast_cancer_mlp",
            "epochs": 4,
            "cv_folds": 2,
            "lr": 0.002,
            "overrides": ["compress.prune.finetune_epochs=1"],
        },
    )
    train = prefect_server.wait_final(train["id"])
    assert train["state"]["type"] == "COMPLETED", train["state"]["message"]

    deployment = score_deployment(prefect_server, "breast_cancer_mlp")
    assert deployment["parameters"]["data"] == "breast_cancer_mlp/incoming.csv"
    assert [(s["schedule"]["cron"], s["active"]) for s in deployment["schedules"]] == [
        ("0 6 * * *", False)
    ]  # shipped paused, switched on in the UI
    # the day's rows arrive where the deployment reads them (./scoring on the worker)
    folder = served / "scoring" / "breast_cancer_mlp"
    folder.mkdir(parents=True, exist_ok=True)
    new_rows(shift=True).write_csv(folder / "incoming.csv")

    # the UI's Run button with the deployment's own parameters
    run = prefect_server.post(
        f"/deployments/{deployment['id']}/create_flow_run", {"state": {"type": "SCHEDULED"}}
    )
    run = prefect_server.wait_final(run["id"])
    assert run["state"]["type"] == "COMPLETED", run["state"]["message"]
    written = sorted(folder.glob("predictions-*.csv"))
    assert len(written) == 1
    lines = written[0].read_text().splitlines()
    assert lines[0] == "prediction" and len(lines) == ROWS + 1
    assert set(lines[1:]) <= {"malignant", "benign"}
    assert {t["name"].rsplit("-", 1)[0] for t in prefect_server.task_runs([run["id"]])} == {
        "score",
        "report_scores",
    }

    by_key = {a["key"]: a for a in prefect_server.artifacts([run["id"]]) if a["key"]}
    report = by_key["breast-cancer-mlp-score-report"]["data"]
    assert f"**{ROWS}** row(s)" in report and f"drift: **{SHIFTED}** (PSI > 0.2)" in report
    assert by_key["score-progress"]["data"] == 100.0
    assert by_key["breast-cancer-mlp-score-predictions"]["type"] == "markdown"  # a link


def test_a_score_run_cannot_read_or_write_outside_the_scoring_folder(served, prefect_server):
    deployment = score_deployment(prefect_server, "breast_cancer_mlp")
    run = prefect_server.post(
        f"/deployments/{deployment['id']}/create_flow_run",
        {
            "parameters": {"data": "../../../../etc/passwd", "output": "/tmp/owned.csv"},
            "state": {"type": "SCHEDULED"},
        },
    )
    run = prefect_server.wait_final(run["id"])
    assert run["state"]["type"] == "FAILED"
    message = run["state"]["message"]
    assert "data: '../../../../etc/passwd' is not a path relative to the scoring folder" in message
    assert "output: '/tmp/owned.csv' is not a path relative" in message
    assert prefect_server.task_runs([run["id"]]) == []
