"""Benchmark: the data steps of a pipeline in the flow's process vs on a local Dask cluster
(`runner: {type: dask, data: true}`), through the real Prefect engine.

Each setting prepares the data of the same spec into a fresh store (nothing cached), `repeats`
times, alternating; the figure is the median wall time of `prepare_data`, the Dask one
including its LocalCluster's start (one single-threaded worker process) and each task's
round trip to the worker. The artifacts' fingerprints must agree, or the script stops.

    .venv/bin/python benchmarks/data_on_dask.py [SPEC] [repeats]
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from isolated_prefect import isolate  # noqa: E402  (before Prefect is imported)

isolate()

from prefect import flow  # noqa: E402

from trainflow.flows.data import prepare_data  # noqa: E402
from trainflow.spec.pipeline import load_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DASK = ["runner.type=dask", "runner.data=true", "runner.workers=1"]


@flow(name="data-benchmark")
def prepare(spec, store: str) -> dict:
    return prepare_data(spec, store)


def once(path: Path, overrides: list[str], store: str) -> tuple[float, list[str]]:
    spec = load_spec(path, overrides)
    began = time.perf_counter()
    data = prepare(spec, store)
    took = time.perf_counter() - began
    refs = [data[k] for k in ("ingested", "raw_splits", "splits", "shards")] + data["steps"]
    return took, [ref.fingerprint for ref in refs]


def main(path: Path, repeats: int) -> None:
    times: dict[str, list[float]] = {"in process": [], "dask": []}
    with tempfile.TemporaryDirectory() as folder:
        for attempt in range(repeats):
            fingerprints = []
            for label, overrides in (("in process", []), ("dask", DASK)):
                store = f"{folder}/{label.replace(' ', '-')}-{attempt}"
                took, found = once(path, overrides, store)
                times[label].append(took)
                fingerprints.append(found)
            if fingerprints[0] != fingerprints[1]:
                raise SystemExit("the artifacts of the two settings differ")
    with open("/proc/loadavg") as handle:
        load = handle.read().split()[:3]
    medians = {label: round(statistics.median(t), 2) for label, t in times.items()}
    print(json.dumps({"spec": path.name, "repeats": repeats, "median_s": medians, "load": load}))


if __name__ == "__main__":
    spec = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "pipelines" / "breast_cancer_mlp.yaml"
    main(spec, int(sys.argv[2]) if len(sys.argv) > 2 else 3)
