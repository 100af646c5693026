"""The data side: ingest -> pre-split steps -> split -> post-split steps -> shard.

Tasks of the flow that calls it (the pipeline, a study), not a subflow of their own: a subflow
costs a flow run's round trips to the server, and the UI shows each task either way.
"""

from __future__ import annotations

from trainflow import registry
from trainflow.spec.pipeline import PipelineSpec
from trainflow.task_options import step
from trainflow.tasks.expect import check_expectations
from trainflow.tasks.ingest import ingest
from trainflow.tasks.pool import pool_validation
from trainflow.tasks.shard import shard


def prepare_data(spec: PipelineSpec, store: str) -> dict:
    table = ingested = step(ingest, spec)(spec.data.source, store)
    profile = step(check_expectations, spec)(table, spec.data.expect, store)
    steps = []
    for params in spec.data.pre_split:
        table = step(registry.STEPS[params.type].impl, spec)(table, params, spec.seed, store)
        steps.append(table)
    raw_splits = step(registry.STEPS["split"].impl, spec)(table, spec.data.split, spec.seed, store)
    splits = raw_splits  # the folds re-split raw_splits' train + validation themselves
    if spec.train.fit_on == "train+validation":  # the steps below fit on the rows it trains on
        splits = step(pool_validation, spec)(raw_splits, store)
    for params in spec.data.post_split:
        splits = step(registry.STEPS[params.type].impl, spec)(splits, params, spec.seed, store)
        steps.append(splits)
    return {
        "ingested": ingested,
        "table": table,
        "profile": profile,
        "raw_splits": raw_splits,
        "splits": splits,
        "steps": steps,
        "shards": step(shard, spec)(splits, spec.data.shard, store, spec.seed),
    }
