"""Retries, timeouts and the Dask runner, through the real Prefect engine."""

from uuid import uuid4

import pytest
from prefect import flow, tags, task

from tests.conftest import ROOT
from tests.flows.helpers import run, task_states
from trainflow.errors import DataError
from trainflow.flows.pipeline import pipeline
from trainflow.spec.pipeline import load_spec
from trainflow.task_options import step

pytestmark = pytest.mark.usefixtures("prefect_engine")

SPEC = ROOT / "pipelines" / "breast_cancer_mlp.yaml"
SMALL = ("train.epochs=4", "evaluate.cv.folds=2", "compress.prune.finetune_epochs=1")


def attempts_until_done(name: str, error: Exception, spec_overrides=()) -> tuple[list, str]:
    """Run a task called `name` (so it gets that step's options) that fails once with
    `error`; return its attempts and the flow's final state."""
    spec = load_spec(
        SPEC, [f"orchestration.steps={{{name}: {{retry_delay_s: [0]}}}}", *spec_overrides]
    )
    attempts = []

    @task(name=name)
    def flaky() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise error
        return "done"

    @flow
    def one_step() -> str:
        return step(flaky, spec)()

    return attempts, one_step(return_state=True).type.value


def test_io_steps_retry_transient_errors_but_never_deterministic_ones():
    attempts, state = attempts_until_done("ingest", OSError("connection reset by peer"))
    assert (len(attempts), state) == (2, "COMPLETED")  # a network blip: tried again
    attempts, state = attempts_until_done("shard", TimeoutError("slow store"))
    assert (len(attempts), state) == (2, "COMPLETED")
    attempts, state = attempts_until_done("ingest", DataError("data.source.path: not found"))
    assert (len(attempts), state) == (1, "FAILED")  # the same input fails the same way
    attempts, state = attempts_until_done("train", OSError("disk full"))
    assert (len(attempts), state) == (1, "FAILED")  # training is not retried by default
    attempts, state = attempts_until_done(
        "train", OSError("disk full"), ["orchestration.steps.train.retries=1"]
    )
    assert (len(attempts), state) == (2, "COMPLETED")  # unless the spec asks for it


def test_a_step_timeout_fails_the_run_at_that_step(tmp_path):
    outputs = [f"outputs.store={tmp_path / 'store'}", f"outputs.runs={tmp_path / 'runs'}"]
    slow = load_spec(
        SPEC,
        [
            *outputs,
            "train.epochs=2000",
            "train.early_stopping=null",
            "orchestration.steps={train: {timeout_s: 1.5}}",
        ],
    )
    tag = f"timeout-{uuid4().hex[:8]}"
    with tags(tag):
        state = pipeline(slow, return_state=True)
    assert state.is_failed()
    states = task_states(tag)
    assert states["train"] == ["TimedOut"]
    assert all(states[name] == ["Completed"] for name in ("ingest", "clean", "split", "shard"))
    assert "evaluate" not in states  # nothing after the timed-out step ran
    # (a run started again takes the finished steps from the cache: tests/e2e, cancel test)


def test_dask_runner_gives_the_thread_pool_cv_metrics(tmp_path):
    threads, states = run("breast_cancer_mlp", tmp_path / "threads", *SMALL)
    dask, dask_states = run(
        "breast_cancer_mlp", tmp_path / "dask", *SMALL, "runner.type=dask", "runner.workers=1"
    )
    assert len(dask_states["train_fold"]) == 2
    assert all(s == "Completed" for s in dask_states["train_fold"])
    assert [f.meta for f in dask["folds"]] == [f.meta for f in threads["folds"]]
    assert dask["ensemble"].meta == threads["ensemble"].meta
