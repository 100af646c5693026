"""A shipped pipeline with `outputs.store: s3://...` against a local S3 (moto's server), through
the real Prefect engine: published, rerun Cached, a lost copy refetched, a lost object
recomputed, and training streamed from the bucket's shards through the shard cache."""

from __future__ import annotations

import shutil
from pathlib import Path
from uuid import uuid4

import pytest
from prefect import tags

from tests.flows.helpers import ALONE, ROOT, task_states
from tests.moto_s3 import CREDENTIALS, moto_server, s3
from trainflow.artifacts import ArtifactRef
from trainflow.flows.pipeline import pipeline
from trainflow.remote import PUBLISHED
from trainflow.spec.pipeline import load_spec

pytestmark = pytest.mark.usefixtures("prefect_engine")
pytest.importorskip("s3fs")

BUCKET, PREFIX = "team-artifacts", "trainflow/store"
COMPUTING = (
    "ingest",
    "expect",
    "clean",
    "split",
    "normalize",
    "shard",
    "train",
    "evaluate",
    "report",
)


def run_s3(endpoint: str, tmp_path: Path, *overrides: str) -> tuple[dict, dict[str, list[str]]]:
    spec = load_spec(
        ROOT / "pipelines" / "breast_cancer_mlp.yaml",
        [
            f"outputs.store=s3://{BUCKET}/{PREFIX}",
            f'outputs.store_options={{endpoint_url: "{endpoint}"}}',
            f"outputs.mirror={tmp_path / 'mirror'}",
            f"outputs.runs={tmp_path / 'runs'}",
            *ALONE,
            *overrides,
        ],
    )
    tag = f"test-{uuid4().hex[:12]}"
    with tags(tag):
        result = pipeline(spec)
    return result, task_states(tag)


def refs(value) -> list[ArtifactRef]:
    if isinstance(value, ArtifactRef):
        return [value]
    if isinstance(value, dict):
        return [r for v in value.values() for r in refs(v)]
    if isinstance(value, (list, tuple)):
        return [r for v in value for r in refs(v)]
    return []


def objects(endpoint: str, ref: ArtifactRef) -> dict:
    return s3(endpoint).find(f"{BUCKET}/{PREFIX}/{ref.kind}/{ref.fingerprint}", detail=True)


def test_a_pipeline_on_s3_publishes_reruns_cached_and_recomputes_a_lost_object(
    tmp_path, monkeypatch
):
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    with moto_server() as endpoint:
        s3(endpoint).mkdir(BUCKET)
        first, states = run_s3(endpoint, tmp_path)
        assert "Cached" not in {s for names in states.values() for s in names}
        published = refs(first)
        assert {r.kind for r in published} >= {"table", "splits", "shards", "model", "report"}
        for ref in published:  # every artifact is in the bucket, its manifest written last
            listing = objects(endpoint, ref)
            manifest = f"{BUCKET}/{PREFIX}/{ref.kind}/{ref.fingerprint}/{PUBLISHED}"
            assert manifest in listing, ref
            written = [v["LastModified"] for v in listing.values()]
            assert listing[manifest]["LastModified"] == max(written)

        package = Path(first["package"])  # a model package is an artifact of the store too
        assert s3(endpoint).exists(f"{BUCKET}/{PREFIX}/package/{package.name}/{PUBLISHED}")

        # 1. unchanged: every computing task is served from the cache
        _, states = run_s3(endpoint, tmp_path)
        for task in COMPUTING:
            assert set(states[task]) == {"Cached"}, task

        # 2. the mirror lost the shards (a fresh cache): fetched back from the bucket, Cached
        shards = first["data"]["shards"]
        shutil.rmtree(shards.path)
        _, states = run_s3(endpoint, tmp_path)
        assert set(states["shard"]) == {"Cached"} and shards.is_valid()

        # 3. the bucket and the mirror lost normalize's artifact: that task alone recomputes
        normalized = first["data"]["splits"]
        s3(endpoint).rm(f"{BUCKET}/{PREFIX}/splits/{normalized.fingerprint}", recursive=True)
        shutil.rmtree(normalized.path)
        again, states = run_s3(endpoint, tmp_path)
        assert states["normalize"] == ["Completed"]
        for task in set(COMPUTING) - {"normalize"}:
            assert set(states[task]) == {"Cached"}, task
        assert again["data"]["splits"] == normalized and objects(endpoint, normalized)

        # 4. streamed training reads the bucket's shards through the shard cache
        cache = tmp_path / "shard-cache"
        streamed, states = run_s3(
            endpoint, tmp_path, "train.loader.mode=stream", f"train.loader.cache_dir={cache}"
        )
        assert states["train"] == ["Completed"]
        cached = sorted(p.name for p in cache.rglob("*.tar"))
        assert cached and all(name.startswith("train-") or "val" in name for name in cached)
        assert streamed["test"]["accuracy"] > 0.8
