"""The shipped retraining deployment against a real `prefect server` follows the promotion
rule: a run that turns out worse than the champion leaves it alone."""

from __future__ import annotations

import json

from tests.e2e.test_deployments import trainflow

NAME = "breast_cancer_mlp"
# Shards of its own size: the other e2e tests' runs of this pipeline on the same worker must
# still find their shard step to run (they check its progress), not cached by these runs.
SMALL = [
    "evaluate.cv=null",
    "ensemble=null",
    "compress.quantize=null",
    "compress.prune=null",
    "data.shard.max_samples=4096",
]


def test_a_retraining_run_that_is_worse_leaves_the_champion_alone(served, prefect_server):
    pointer = served / ".trainflow" / "champions" / f"{NAME}.json"  # the worker's store
    good = prefect_server.run(NAME, {"pipeline": NAME, "epochs": 20, "overrides": SMALL})
    good = prefect_server.wait_final(good["id"])
    assert good["state"]["type"] == "COMPLETED", good["state"]["message"]
    before = json.loads(pointer.read_text())
    judged = before["history"][-1]
    assert good["id"] in judged["run"] and judged["decision"] in ("promoted", "kept")
    champion = before["lineage"][-1]  # this run's package, or a better one kept

    # as a scheduled retrain that went wrong: one epoch at an overshooting step size
    worse = prefect_server.run(NAME, {"pipeline": NAME, "epochs": 1, "lr": 0.5, "overrides": SMALL})
    worse = prefect_server.wait_final(worse["id"])
    assert worse["state"]["type"] == "COMPLETED", worse["state"]["message"]
    after = json.loads(pointer.read_text())
    assert after["lineage"] == before["lineage"]  # the champion stays
    last = after["history"][-1]
    assert worse["id"] in last["run"] and last["decision"] == "kept"
    assert last["package"] != champion and last["champion"] == champion
    assert last["metrics"]["f1_macro"] < last["champion_metrics"]["f1_macro"]
    assert "promote" in {
        t["name"].rsplit("-", 1)[0] for t in prefect_server.task_runs([worse["id"]])
    }

    # the run's report in the UI says so, with both models' metrics
    reports = [
        a for a in prefect_server.artifacts([worse["id"]]) if a["key"] == "breast-cancer-mlp-report"
    ]
    assert len(reports) == 1 and "decision: **kept**" in reports[0]["data"]
    assert f"champion now: `{(served / '.trainflow' / champion).resolve()}`" in reports[0]["data"]

    # and `trainflow models list` on the worker's folder shows the history
    listed = trainflow(prefect_server, "models", "list", NAME, cwd=served)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].endswith(champion)
    assert " kept " in listed.stdout.splitlines()[-1]
