"""Heterogeneous computing: data steps on a Dask cluster's CPUs, training in the flow's
process on train.device, augmentation in CPU loader workers; the report says where each
step ran. A real Prefect engine and a real local Dask cluster."""

import json
import os
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT
from tests.flows.helpers import run
from trainflow.engine.augment import Augmenter
from trainflow.errors import SpecError
from trainflow.spec.pipeline import load_spec
from trainflow.task_options import reports_to_a_server
from trainflow.tasks.train import training_stream

pytestmark = pytest.mark.usefixtures("prefect_engine")

SPEC = ROOT / "pipelines" / "breast_cancer_mlp.yaml"
# Streamed through two loader workers that add noise: augmentation in CPU worker processes.
SMALL = (
    "train.epochs=2",
    "evaluate.cv=null",
    "ensemble=null",
    "compress={}",
    "train.augment={gaussian_noise: 0.01}",
    "train.loader.mode=stream",
    "train.loader.workers=2",
)
ON_DASK = ("runner.type=dask", "runner.data=true", "runner.workers=1")
DATA_STEPS = ("ingest", "expect", "clean", "split", "normalize", "shard")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same small pipeline in process, then with its data steps on a local Dask cluster
    twice: on the first run's store (its cache), and on a store of its own (computed afresh)."""
    base = tmp_path_factory.mktemp("heterogeneous")
    local, _ = run("breast_cancer_mlp", base / "local", *SMALL)
    shared = run("breast_cancer_mlp", base / "local", *SMALL, *ON_DASK)
    dask, states = run("breast_cancer_mlp", base / "dask", *SMALL, *ON_DASK)
    return {"local": local, "shared": shared, "dask": dask, "states": states}


def placement(result: dict) -> dict[str, dict]:
    summary = json.loads((Path(result["run_dir"]) / "metrics.json").read_text())
    return {record["task"]: record for record in summary["placement"]}


def test_data_steps_on_dask_give_the_in_process_artifacts_and_metrics(runs):
    local, dask = runs["local"]["data"], runs["dask"]["data"]
    for name in ("ingested", "table", "profile", "raw_splits", "splits", "shards"):
        assert dask[name].fingerprint == local[name].fingerprint, name  # byte for byte
    assert [s.fingerprint for s in dask["steps"]] == [s.fingerprint for s in local["steps"]]
    assert runs["dask"]["model"].meta == runs["local"]["model"].meta
    assert runs["dask"]["test"] == runs["local"]["test"]
    assert all(runs["states"][name] == ["Completed"] for name in DATA_STEPS)


def test_the_records_name_a_dask_worker_for_data_steps_and_this_process_for_training(runs):
    where = placement(runs["dask"])
    for name in DATA_STEPS:
        assert where[name]["runner"] == "dask", name
        assert where[name]["worker"].startswith("tcp://127.0.0.1:"), name
        assert where[name]["pid"] != os.getpid(), name
        assert where[name]["device"] == "cpu", name
    train = where["train"]
    assert (train["runner"], train["pid"]) == ("flow process", os.getpid())
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert (train["requested"], train["device"]) == ("auto", expected)
    assert train["threads"] == torch.get_num_threads()
    if reports_to_a_server():  # the tag a `--max-trainings` concurrency limit counts
        assert train["tags"] == ["trainflow-device"]
    assert where["normalize"]["tags"] == []
    # in process, every step ran here
    assert {r["pid"] for r in placement(runs["local"]).values()} == {os.getpid()}


def test_the_report_says_which_step_ran_where(runs):
    report = (Path(runs["dask"]["run_dir"]) / "report.md").read_text()
    section = report.split("## Where each step ran", 1)[1]
    rows = {line.split(" | ")[0].strip("| "): line for line in section.splitlines() if "|" in line}
    assert "| dask | tcp://127.0.0.1:" in rows["normalize"]
    assert f"| flow process | pid {os.getpid()} |" in rows["train"]
    assert f"| auto -> {'cuda' if torch.cuda.is_available() else 'cpu'} |" in rows["train"]
    assert "augmentation: in 2 CPU loader worker processes feeding the device" in section
    # the store's report is content-addressed: no run's placement in it
    assert "Where each step ran" not in (runs["dask"]["report"].path / "report.md").read_text()


def test_a_run_on_dask_is_served_the_in_process_runs_cache(runs):
    again, states = runs["shared"]
    assert all(states[name] == ["Cached"] for name in (*DATA_STEPS, "train")), states
    assert again["data"]["shards"].fingerprint == runs["local"]["data"]["shards"].fingerprint
    where = placement(again)
    assert (where["normalize"]["state"], where["normalize"]["runner"]) == ("Cached", "dask")


def test_augmentation_runs_in_cpu_loader_worker_processes(runs, tmp_path):
    """A streamed epoch of the run's shards through two loader workers: the augmentation of
    every batch runs in a worker process, not in the training process."""
    spec = load_spec(SPEC, list(SMALL))
    stream, _ = training_stream(
        runs["dask"]["data"]["shards"].path, spec.train.loader, "fail", tmp_path
    )
    augmenter = Augmenter(spec.train.augment, spec.seed, image_input=False)
    pids = tmp_path / "pids"
    pids.mkdir()

    def augment(epoch: int, worker: int):  # called where the batches are made
        (pids / str(os.getpid())).touch()
        return augmenter.for_epoch(epoch, worker)

    batches = list(stream.epoch(0, 32, spec.seed, augment=augment))
    assert sum(len(b[1]) for b in batches) == stream.samples
    seen = {int(p.name) for p in pids.iterdir()}
    assert len(seen) == 2 and os.getpid() not in seen


def test_data_steps_on_a_runner_other_than_dask_are_refused():
    with pytest.raises(SpecError, match=r"runner.*data: true.*type is 'thread'.*type: dask"):
        load_spec(SPEC, ["runner.data=true"])
