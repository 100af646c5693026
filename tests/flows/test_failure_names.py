"""A run that a user's mistake stops says which step stopped it, in one line (issue 19 part 10).

The runs list shows a failed run's state message, and its log ends with Prefect's "Finished in
state" line: both name the failing step and its message, "anomalies failed: ...", wherever the
step ran: a task of the pipeline's run, a task of the prepare-data subflow (`runner.data` on
Dask), a fold of the cross-validate subflow. Real Prefect engine, real Dask workers.
"""

import logging

import pytest
import yaml
from prefect.client.orchestration import get_client

from trainflow.errors import DataError
from trainflow.flows.pipeline import pipeline
from trainflow.spec.pipeline import load_spec

ON_DASK = ("runner.type=dask", "runner.data=true", "runner.workers=1")
ANOMALIES = "anomalies (isolation_forest) needs complete features: add a `clean` step first"
# 10 rows of class b: the split keeps 8 of them for train+validation, too few for 10 folds
SCARCE = "10-fold stratified cross-validation needs at least 10 rows per class of 'label'"


@pytest.fixture
def table(tmp_path):
    rows = []
    for i in range(80):
        x = "" if i % 7 == 3 else str(i % 11)  # missing values: anomalies wants a clean first
        rows.append(f"{x},{(i * 3) % 5},{'b' if i % 8 == 0 else 'a'}\n")
    (tmp_path / "table.csv").write_text("x,z,label\n" + "".join(rows))
    return tmp_path / "table.csv"


def spec_of(tmp_path, table, steps, *overrides):
    spec = {
        "name": "names_its_step",
        "data": {"source": {"type": "csv", "path": str(table), "target": "label"}, "steps": steps},
        "model": {"type": "mlp", "units": 8},
        "train": {"epochs": 1},
        "outputs": {"store": str(tmp_path / "store"), "runs": str(tmp_path / "runs")},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_spec(path, list(overrides))


def failed_run(spec, caplog, flow=None):
    """The run's state as the runs list shows it (read back from the API), and the lines its
    flow logged, in order. `flow`: a call that runs the spec (else the pipeline flow)."""
    # the flow's "Finished in state" line is INFO (the tests' Prefect logs WARNING and up)
    with caplog.at_level(logging.INFO), caplog.at_level(logging.INFO, "prefect.flow_runs"):
        state = flow() if flow else pipeline(spec, return_state=True)
    assert state.is_failed()
    with get_client(sync_client=True) as client:
        shown = client.read_flow_run(state.state_details.flow_run_id).state
    ours = [r for r in caplog.records if r.name.startswith("prefect")]
    return state, shown, ours


def assert_named(state, shown, records, step, message):
    assert shown.message.startswith(f"{step} failed: {message}"), shown.message
    assert "\n" not in shown.message and "Traceback" not in shown.message
    assert shown.message == state.message
    flow_lines = [r for r in records if r.name == "prefect.flow_runs"]
    last = flow_lines[-1].getMessage()
    assert last.startswith("Finished in state Failed(") and f"{step} failed: {message}" in last
    assert not any(r.exc_info or "Traceback" in r.getMessage() for r in records), [
        r.getMessage()[:300] for r in records if r.exc_info or "Traceback" in r.getMessage()
    ]
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        state.result()  # the caller (trainflow run) still gets the error itself


@pytest.mark.parametrize("where", ["tasks of the run", "prepare-data subflow", "a deployment"])
def test_a_data_step_failing_names_itself_on_the_pipelines_run(
    where, tmp_path, table, prefect_engine, caplog, monkeypatch
):
    steps = [{"type": "split"}, {"type": "anomalies", "method": "isolation_forest"}]
    overrides = ON_DASK if where == "prepare-data subflow" else ()
    spec = spec_of(tmp_path, table, steps, *overrides)
    flow = None
    if where == "a deployment":  # the flow the UI's runs are runs of, this spec its pipeline
        from trainflow.flows.deployments import train

        monkeypatch.setenv("TRAINFLOW_PIPELINES_DIR", str(tmp_path))

        def flow():
            return train(pipeline="spec", return_state=True)

    state, shown, records = failed_run(spec, caplog, flow)
    assert_named(state, shown, records, "anomalies", ANOMALIES)


@pytest.mark.parametrize("where", ["tasks of the run", "cross-validate subflow"])
def test_a_fold_failing_names_itself_on_the_pipelines_run(
    where, tmp_path, table, prefect_engine, caplog
):
    steps = [{"type": "clean", "missing": "median"}, {"type": "split"}]
    overrides = ("evaluate.cv.folds=10", *(("runner.type=dask",) if "subflow" in where else ()))
    spec = spec_of(tmp_path, table, steps, *overrides, "runner.workers=1")
    state, shown, records = failed_run(spec, caplog)
    assert_named(state, shown, records, "train_fold", SCARCE)


def test_a_misspelt_nested_key_from_the_ui_is_one_line_naming_the_closest_key(
    tmp_path, table, prefect_engine, monkeypatch
):
    """A deployment's run with a typo two levels down in its overrides: the runs list shows
    one line that names the parameter, the key and the closest allowed key alone."""
    from trainflow.flows.deployments import train

    spec_of(tmp_path, table, [{"type": "split"}])
    monkeypatch.setenv("TRAINFLOW_PIPELINES_DIR", str(tmp_path))
    state = train(pipeline="spec", overrides=["data.source.targte=label"], return_state=True)
    assert state.is_failed() and "\n" not in state.message, state.message
    assert "data.source.targte: unknown key 'targte'; did you mean `target`?" in state.message
    assert "allowed keys" not in state.message
