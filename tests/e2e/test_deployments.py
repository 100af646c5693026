"""Deployments against a real `prefect server` on 127.0.0.1: register, run from the API as the UI
does, read the artifacts, reject bad parameters, retrain on a "new data" event."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from tests.conftest import ROOT
from tests.e2e.conftest import BIN, child_env, wait_for

PIPELINES = sorted(p.stem for p in (ROOT / "pipelines").glob("*.yaml"))


def trainflow(server, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "trainflow"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(
            cwd / "home", server.api_url, TRAINFLOW_PIPELINES_DIR=str(ROOT / "pipelines")
        ),
    )


def test_every_shipped_pipeline_has_a_deployment():
    config = yaml.safe_load((ROOT / "deploy" / "prefect.yaml").read_text())
    # the training deployments (the score flow's: tests/e2e/test_score_deployment.py)
    training = [d for d in config["deployments"] if "flows.score:" not in d["entrypoint"]]
    names = [d["name"] for d in training]
    missing = set(PIPELINES) - set(names)
    assert not missing, f"add a deployment to deploy/prefect.yaml for: {sorted(missing)}"
    assert sorted(names) == PIPELINES
    for deployment in training:  # shared settings come from `definitions:`
        assert deployment["entrypoint"] == "trainflow.flows.deployments:train"
        assert deployment["work_pool"]["name"] == "trainflow-process"
        assert deployment["parameters"] == {"pipeline": deployment["name"]}


def test_deploy_registers_deployments_with_schedules_for_the_process_pool(prefect_server, tmp_path):
    # the shipped file under other deployment names, so that the served ones stay as they are
    config = yaml.safe_load((ROOT / "deploy" / "prefect.yaml").read_text())
    for deployment in config["deployments"]:
        deployment["name"] = "pool-" + deployment["name"]
    file = tmp_path / "prefect.yaml"
    file.write_text(yaml.safe_dump(config))
    done = trainflow(prefect_server, "deploy", "--file", str(file), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "registered trainflow/pool-digits_cnn" in done.stdout

    pool = prefect_server.get("/work_pools/trainflow-process")
    assert pool["type"] == "process"
    digits = prefect_server.deployment("pool-digits_cnn")
    assert digits["work_pool_name"] == "trainflow-process"
    assert digits["entrypoint"] in (
        "trainflow.flows.deployments:train",
        "trainflow.flows.deployments.train",
    )
    assert [s["schedule"] for s in digits["schedules"]] == [
        {"cron": "0 3 * * 1", "timezone": "Europe/Berlin", "day_or": True}
    ]
    # the zone said where the UI's schedule card does not say it (issue 19 part 14)
    assert [s["slug"] for s in digits["schedules"]] == ["0 3 * * 1 (Europe/Berlin)"]
    assert "schedule: 0 3 * * 1 in Europe/Berlin" in digits["description"]
    assert digits["parameters"] == {"pipeline": "digits_cnn"}
    assert set(digits["parameter_openapi_schema"]["properties"]) == {
        "pipeline",
        "epochs",
        "lr",
        "batch_size",
        "cv_folds",
        "overrides",
        "note",
    }
    # each deployment's "new data" trigger is an automation that runs it
    automations = {a["name"]: a for a in prefect_server.post("/automations/filter")}
    for name in PIPELINES:
        automation = automations[f"pool-{name}__automation_1"]
        assert automation["trigger"]["expect"] == ["trainflow.data.new"]
        assert automation["trigger"]["match"] == {
            "prefect.resource.id": f"trainflow.pipeline.{name}"
        }
        assert automation["actions"][0]["type"] == "run-deployment"


def test_runs_from_the_api_with_changed_parameters_complete_with_artifacts(served, prefect_server):
    parameters = {
        "pipeline": "breast_cancer_mlp",
        "epochs": 4,
        "cv_folds": 2,
        "lr": 0.002,
        "overrides": ["compress.prune.finetune_epochs=1"],
    }
    run = prefect_server.run("breast_cancer_mlp", parameters)
    other = prefect_server.run("breast_cancer_mlp", {**parameters, "lr": 0.003})  # at once
    run = prefect_server.wait_final(run["id"])
    assert run["state"]["type"] == "COMPLETED", run["state"]["message"]
    assert prefect_server.wait_final(other["id"])["state"]["type"] == "COMPLETED"
    tree = prefect_server.run_tree(run["id"])
    tasks = prefect_server.task_runs(tree)
    assert {t["name"].rsplit("-", 1)[0] for t in tasks} >= {
        "ingest",
        "shard",
        "train",
        "train_fold",
        "report",
        "publish_report",
    }
    assert all(t["state"]["type"] == "COMPLETED" for t in tasks)

    artifacts = prefect_server.artifacts(tree)
    by_key = {a["key"]: a for a in artifacts if a["key"]}
    report = by_key["breast-cancer-mlp-report"]
    assert report["type"] == "markdown" and "## Cross-validation (2 folds" in report["data"]
    assert "](data:image/png;base64," in report["data"]  # curves and confusion matrix inline
    table = by_key["breast-cancer-mlp-cv-folds"]
    assert table["type"] == "table"
    rows = json.loads(table["data"])
    assert [r["fold"] for r in rows] == ["0", "1", "mean", "std"]
    assert 0.5 < rows[2]["accuracy"] <= 1.0
    assert by_key["train-progress"]["type"] == "progress"
    assert by_key["train-progress"]["data"] == 100.0
    # The two runs share their data steps: whichever ran them (the other one reads them from
    # the cache) moved the shard progress to 100 %.
    shard_progress = [
        a
        for a in artifacts + prefect_server.artifacts(prefect_server.run_tree(other["id"]))
        if a["key"] == "shard-progress"
    ]
    assert shard_progress and all(a["data"] == 100.0 for a in shard_progress)
    # one table of what the run wrote and where (paths as text: no file:// link a browser
    # will not open), and the CV table rounded as the report rounds it (issue 19 part 11)
    assert all(round(v, 4) == v for r in rows for v in r.values() if isinstance(v, float))
    files = {
        r["written"]: r["where"] for r in json.loads(by_key["breast-cancer-mlp-files"]["data"])
    }
    for model in ("model", "quantize", "prune", "fold_0", "fold_1"):
        assert Path(files[f"{model} weights"]).is_file(), files
    assert Path(files["model package"]).is_dir()
    assert not any(k.endswith("-file") for k in by_key)  # the six link cards are gone
    link = re.fullmatch(r"\[.*\]\((file://[^)]+)\)", by_key["breast-cancer-mlp-run-folder"]["data"])
    assert link
    paths = {"breast-cancer-mlp-run-folder": Path(urlparse(link.group(1)).path)}
    run_dir = paths["breast-cancer-mlp-run-folder"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # the run used the form's values: 4 epochs at most, 2 folds, one fine-tuning epoch
    assert metrics["train"]["epochs_run"] <= 4 and len(metrics["cv"]["folds"]) == 2
    assert metrics["compress"]["prune"]["finetune_epochs"] == 1
    assert run_dir.is_relative_to(served)

    # `serve --max-trainings 1`: the two runs' training tasks took turns on the device
    limits = {c["name"]: c for c in prefect_server.post("/v2/concurrency_limits/filter")}
    assert limits["tag:trainflow-device"]["limit"] == 1
    training = [
        t
        for t in tasks + prefect_server.task_runs(prefect_server.run_tree(other["id"]))
        if t["name"].rsplit("-", 1)[0] in ("train", "train_fold", "prune")
    ]
    assert len(training) == 8 and all("trainflow-device" in t["tags"] for t in training)
    spans = sorted((t["start_time"], t["end_time"]) for t in training)
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))


def test_invalid_parameters_are_rejected_naming_the_field(served, prefect_server):
    # a value of the wrong type never becomes a run: the API refuses it (the UI form too)
    deployment = prefect_server.deployment("breast_cancer_mlp")
    response = prefect_server.request(
        "POST",
        f"/deployments/{deployment['id']}/create_flow_run",
        {"parameters": {"pipeline": "breast_cancer_mlp", "epochs": "many"}},
    )
    assert response.status_code in (409, 422) and "'epochs'" in response.text

    # a value outside the spec's limits, or another pipeline, never becomes a run either: the
    # deployment's form carries the limits and fixes its pipeline (trainflow.run_form)
    for parameters in (
        {"pipeline": "breast_cancer_mlp", "epochs": 0},
        {"pipeline": "../pipelines/digits_cnn"},
    ):
        response = prefect_server.request(
            "POST",
            f"/deployments/{deployment['id']}/create_flow_run",
            {"parameters": parameters},
        )
        assert response.status_code in (409, 422), response.text
        assert f"'{next(reversed(parameters))}'" in response.text

    # values the form lets through that the spec forbids fail the run before any task runs
    # (more cases, run in-process: tests/unit/test_deployment_parameters.py)
    cases = {
        "validation + test = 1.1": {
            "pipeline": "breast_cancer_mlp",
            "overrides": ["data.steps.1.test=0.95"],
        },
        "unknown key 'epochz'": {"pipeline": "breast_cancer_mlp", "overrides": ["train.epochz=3"]},
    }
    runs = {
        needle: prefect_server.run("breast_cancer_mlp", parameters)["id"]
        for needle, parameters in cases.items()
    }
    for needle, run_id in runs.items():
        run = prefect_server.wait_final(run_id)
        assert run["state"]["type"] == "FAILED"
        assert needle in run["state"]["message"], run["state"]["message"]
        assert prefect_server.task_runs(prefect_server.run_tree(run_id)) == []


def _state(task_run: dict, field: str) -> str | None:
    """A field of a task run's state; a run just created may have no state yet."""
    return (task_run.get("state") or {}).get(field)


def test_new_data_event_retrains_and_a_cancelled_run_retried_reuses_the_cache(
    served, prefect_server
):
    deployment = prefect_server.deployment("digits_cnn")
    before = {
        r["id"]
        for r in prefect_server.post(
            "/flow_runs/filter", {"deployments": {"id": {"any_": [deployment["id"]]}}}
        )
    }
    done = trainflow(prefect_server, "notify-data", "digits_cnn", "--note", "test", cwd=served)
    assert done.returncode == 0, done.stderr

    def triggered():
        runs = prefect_server.post(
            "/flow_runs/filter", {"deployments": {"id": {"any_": [deployment["id"]]}}}
        )
        return [
            r
            for r in runs
            if r["id"] not in before and (r["created_by"] or {}).get("type") == "AUTOMATION"
        ]

    first = wait_for(triggered, 90, "the new-data trigger to start a digits run")[0]
    assert first["parameters"] == {"pipeline": "digits_cnn", "note": "test"}  # the --note

    # cancel it during training (as the UI's Cancel button does)
    def training(run_id: str):
        tasks = prefect_server.task_runs(prefect_server.run_tree(run_id))
        return [
            t for t in tasks if t["name"].startswith("train-") and _state(t, "type") == "RUNNING"
        ]

    wait_for(lambda: training(first["id"]), 120, "the triggered run to start training")
    data_steps = {"ingest", "expect", "clean", "split", "normalize", "shard"}
    assert data_steps <= {
        t["name"].rsplit("-", 1)[0]
        for t in prefect_server.task_runs(prefect_server.run_tree(first["id"]))
        if _state(t, "type") == "COMPLETED"
    }
    prefect_server.post(
        f"/flow_runs/{first['id']}/set_state", {"state": {"type": "CANCELLING"}, "force": True}
    )
    assert prefect_server.wait_final(first["id"], 60)["state"]["type"] == "CANCELLED"

    # the UI's Retry button on the cancelled run: the served deployment runs it again, and
    # every step that had finished comes from the cache (a Cached task run beside the first)
    prefect_server.post(
        f"/flow_runs/{first['id']}/set_state",
        {
            "state": {"type": "SCHEDULED", "name": "AwaitingRetry", "message": "Retry from the UI"},
            "force": False,
        },
    )

    def cached_steps():
        tasks = prefect_server.task_runs(prefect_server.run_tree(first["id"]))
        return {t["name"].rsplit("-", 1)[0] for t in tasks if _state(t, "name") == "Cached"}

    wait_for(lambda: data_steps <= cached_steps(), 120, "the retried run's cached data steps")
    # training again, or (where the first run's training ended before the cancel reached it,
    # as on a loaded machine) its trained model served from the cache as well
    wait_for(
        lambda: training(first["id"]) or "train" in cached_steps(),
        120,
        "the retried run to reach training",
    )
    assert prefect_server.flow_run(first["id"])["run_count"] == 2
    prefect_server.post(
        f"/flow_runs/{first['id']}/set_state", {"state": {"type": "CANCELLING"}, "force": True}
    )
    assert prefect_server.wait_final(first["id"], 60)["state"]["type"] == "CANCELLED"


def test_the_run_form_is_typed_with_the_pipelines_values_and_refuses_what_validation_would(
    served, prefect_server
):
    """Each training deployment's form (its parameter schema): typed fields, the pipeline's
    own values as defaults, the spec's limits; the server refuses a run outside them, or of
    another pipeline, before the run exists (issue 19 part 9)."""
    import httpx

    from trainflow.spec.pipeline import load_spec

    spec = load_spec(ROOT / "pipelines" / "digits_cnn.yaml")
    form = prefect_server.deployment("digits_cnn")["parameter_openapi_schema"]["properties"]
    assert form["epochs"]["type"] == "integer" and "anyOf" not in form["epochs"]
    assert form["epochs"]["default"] == spec.train.epochs
    assert form["lr"]["default"] == spec.train.lr and form["lr"]["exclusiveMinimum"] == 0
    assert form["cv_folds"]["minimum"] == 2
    assert "this pipeline: " in form["epochs"]["description"]
    assert form["pipeline"]["enum"] == ["digits_cnn"] and form["pipeline"]["readOnly"]
    for bad in (
        {"pipeline": "digits_cnn", "epochs": 0},
        {"pipeline": "digits_cnn", "lr": -1},
        {"pipeline": "breast_cancer_mlp"},
    ):
        with pytest.raises(httpx.HTTPStatusError) as refused:
            prefect_server.run("digits_cnn", bad)
        assert refused.value.response.status_code in (409, 422), refused.value.response.text
