"""The data subflow: ingest -> pre-split steps -> split -> post-split steps -> shard."""

from __future__ import annotations

from prefect import flow

from trainflow import registry
from trainflow.spec.pipeline import PipelineSpec
from trainflow.tasks.expect import check_expectations
from trainflow.tasks.ingest import ingest
from trainflow.tasks.shard import shard


@flow(name="prepare-data")
def prepare_data(spec: PipelineSpec, store: str) -> dict:
    table = ingest(spec.data.source, store)
    profile = check_expectations(table, spec.data.expect, store)
    steps = []
    for step in spec.data.pre_split:
        table = registry.STEPS[step.type].impl(table, step, spec.seed, store)
        steps.append(table)
    raw_splits = registry.STEPS["split"].impl(table, spec.data.split, spec.seed, store)
    splits = raw_splits
    for step in spec.data.post_split:
        splits = registry.STEPS[step.type].impl(splits, step, spec.seed, store)
        steps.append(splits)
    return {"table": table, "profile": profile, "raw_splits": raw_splits, "splits": splits,
            "steps": steps,
            "shards": shard(splits, spec.data.shard, store, spec.seed)}
