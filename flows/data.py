"""The data side: ingest -> pre-split steps -> split -> post-split steps -> shard.

Tasks of the flow that calls it (the pipeline, a study), not a subflow of their own: a subflow
costs a flow run's round trips to the server, and the UI shows each task either way. With
`runner.data` they are submitted to the spec's Dask cluster, where the CPUs are: a subflow
then, the one way to give them another task runner than the pipeline's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import Task, flow
from prefect.context import FlowRunContext
from prefect.task_runners import ThreadPoolTaskRunner

from trainflow import registry
from trainflow.logs import Progress, calling_run
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

    def prepare(pipeline: str, fingerprint: str, data: dict, store: str) -> dict:
        # Its parameters are what the UI's parameters tab shows: which spec (its name and
        # fingerprint) and the section its steps read, not the whole spec. The body reads
        # the spec itself: a subflow runs in this process (only its tasks go to Dask).
        return data_steps(spec, store)

    subflow = flow(  # named for its pipeline, not a random pair of words
        name="prepare-data",
        flow_run_name=f"prepare-data: {spec.name}",
        task_runner=cv_task_runner(spec),
    )(prepare)
    return subflow(spec.name, spec.fingerprint(), spec.data.model_dump(mode="json"), store)


def watched_progress(spec: PipelineSpec) -> Callable[[], None]:
    """In the prepare-data subflow, a progress artifact of the data steps on the run that
    called it (the one a user watches; the tasks' own ingest and shard progress are on the
    subflow's): moved by each call of what this returns, a no-op in the calling flow (whose
    tasks these are, their progress already on its run)."""
    parent = calling_run("prepare-data")
    if parent is None:
        return lambda: None
    total = 4 + len(spec.data.pre_split) + len(spec.data.post_split)  # ingest, expect, split, shard
    total += spec.train.fit_on == "train+validation"  # pool_validation
    shown, done = Progress("data-progress", f"data steps done, of {total}", flow_run=parent), [0]

    def moved() -> None:
        done[0] += 1
        shown.update(done[0] / total)

    return moved


def on_threads() -> bool:
    """True when the calling flow's task runner is a thread pool (the pipeline's)."""
    context = FlowRunContext.get()
    return context is None or isinstance(context.task_runner, ThreadPoolTaskRunner)


def data_steps(spec: PipelineSpec, store: str) -> dict:
    moved = watched_progress(spec)

    def run(task: Task, *args: Any) -> Any:  # on the flow's task runner, one after another
        bound = step(task, spec)
        found = bound.submit(*args).result() if spec.runner.data else bound(*args)
        moved()
        return found

    table = ingested = run(ingest, spec.data.source, store, spec.task)
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
