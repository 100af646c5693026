"""The data side: ingest -> pre-split steps -> split -> post-split steps -> shard.

Tasks of the flow that calls it (the pipeline, a study), not a subflow of their own: a subflow
costs a flow run's round trips to the server, and the UI shows each task either way. With
`runner.data` they are submitted to the spec's Dask cluster, where the CPUs are: a subflow
then, the one way to give them another task runner than the pipeline's.
"""

from __future__ import annotations

from typing import Any

from prefect import Task, flow
from prefect.context import FlowRunContext
from prefect.task_runners import ThreadPoolTaskRunner

from trainflow import registry
from trainflow.spec.pipeline import PipelineSpec
from trainflow.task_options import cv_task_runner, step
from trainflow.tasks.expect import check_expectations
from trainflow.tasks.ingest import ingest
from trainflow.tasks.pool import pool_validation
from trainflow.tasks.shard import shard


def prepare_data(spec: PipelineSpec, store: str) -> dict:
    """The data steps' artifacts, in this flow or on the spec's Dask cluster (runner.data).
    The same tasks with the same inputs either way: the same cache keys and artifacts."""
    if not spec.runner.data or not on_threads():  # a study's flow on Dask submits there
        return data_steps(spec, store)
    subflow = flow(name="prepare-data", task_runner=cv_task_runner(spec))(data_steps)
    return subflow(spec, store)


def on_threads() -> bool:
    """True when the calling flow's task runner is a thread pool (the pipeline's)."""
    context = FlowRunContext.get()
    return context is None or isinstance(context.task_runner, ThreadPoolTaskRunner)


def data_steps(spec: PipelineSpec, store: str) -> dict:
    def run(task: Task, *args: Any) -> Any:  # on the flow's task runner, one after another
        bound = step(task, spec)
        return bound.submit(*args).result() if spec.runner.data else bound(*args)

    table = ingested = run(ingest, spec.data.source, store)
    profile = run(check_expectations, table, spec.data.expect, store)
    steps = []
    for params in spec.data.pre_split:
        table = run(registry.STEPS[params.type].impl, table, params, spec.seed, store)
        steps.append(table)
    raw_splits = run(registry.STEPS["split"].impl, table, spec.data.split, spec.seed, store)
    splits = raw_splits  # the folds re-split raw_splits' train + validation themselves
    if spec.train.fit_on == "train+validation":  # the steps below fit on the rows it trains on
        splits = run(pool_validation, raw_splits, store)
    for params in spec.data.post_split:
        splits = run(registry.STEPS[params.type].impl, splits, params, spec.seed, store)
        steps.append(splits)
    return {
        "ingested": ingested,
        "table": table,
        "profile": profile,
        "raw_splits": raw_splits,
        "splits": splits,
        "steps": steps,
        "shards": run(shard, splits, spec.data.shard, store, spec.seed),
    }
