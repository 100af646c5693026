"""A subflow's parameters tab shows which spec it runs and the section its steps read, not the
whole spec (issue 19 part 14): the prepare-data and cross-validate subflows of a run on Dask,
read back from the Prefect API as the UI reads them; a rerun is still served from the cache."""

import json
from uuid import uuid4

from prefect import tags
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

from tests.flows.helpers import ROOT, task_states
from trainflow.flows.pipeline import pipeline
from trainflow.spec.pipeline import load_spec

ON_DASK = ("runner.type=dask", "runner.data=true", "runner.workers=1")
SMALL = ("train.epochs=1", "evaluate.cv.folds=2", "ensemble=null", "compress={}")


def run_tagged(spec) -> str:
    tag = f"test-{uuid4().hex[:12]}"
    with tags(tag):  # the subflow runs carry it too: they are made inside the block
        pipeline(spec)
    return tag


def test_subflows_carry_the_specs_name_fingerprint_and_section_not_the_whole_spec(
    tmp_path, prefect_engine
):
    outputs = [f"outputs.store={tmp_path / 'store'}", f"outputs.runs={tmp_path / 'runs'}"]
    spec = load_spec(ROOT / "pipelines" / "breast_cancer_mlp.yaml", [*outputs, *SMALL, *ON_DASK])
    tag = run_tagged(spec)
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag]))
        )
    shown = {run.name: run.parameters for run in runs}
    data = shown["prepare-data: breast_cancer_mlp"]
    folds = shown["cross-validate: breast_cancer_mlp"]
    assert set(data) == {"pipeline", "fingerprint", "data", "store"}
    assert set(folds) == {"pipeline", "fingerprint", "cv", "splits", "store"}
    for parameters in (data, folds):
        assert parameters["pipeline"] == "breast_cancer_mlp"
        assert parameters["fingerprint"] == spec.fingerprint()
        text = json.dumps(parameters)
        assert "hidden_layers" not in text and "weight_decay" not in text  # model, train
    assert data["data"]["source"] == {**data["data"]["source"], "dataset": "breast_cancer"}
    assert [s["type"] for s in data["data"]["steps"]] == ["clean", "split", "normalize"]
    assert folds["cv"]["folds"] == 2

    # the same tasks with the same inputs: a rerun is served from the cache, on Dask too
    states = task_states(run_tagged(spec))
    for name in ("ingest", "clean", "split", "normalize", "shard", "train", "train_fold"):
        assert set(states[name]) == {"Cached"}, (name, states)
