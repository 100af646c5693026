"""Training samples/s of 1 process vs 2 DDP ranks (gloo, CPU), one torch thread per process,
for an MLP large enough to be compute-bound (two hidden layers of 2048 on breast_cancer's 30
features, global batch 64), through the real train task.

Each setting trains twice, for `short` and `long` epochs; samples/s is the extra epochs' rows
over the extra seconds, so torchrun's start, the imports and the data reading cancel out.

    .venv/bin/python benchmarks/ddp_throughput.py [short long]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from trainflow.spec.model import MLPParams
from trainflow.spec.train import TrainSpec
from trainflow.tasks.ingest import SklearnSource, ingest
from trainflow.tasks.normalize import NormalizeParams, normalize
from trainflow.tasks.shard import ShardParams, shard
from trainflow.tasks.split import SplitParams, split
from trainflow.tasks.train import train_model

MODEL = MLPParams(type="mlp", hidden_layers=2, units=[2048, 2048])


def seconds(shards, store: str, ranks: int, epochs: int) -> float:
    spec = {"batch_size": 64, "epochs": epochs, "threads": 1, "precision": "fp32"}
    spec |= {"device": "cpu", "loader": {"mode": "memory"}, "checkpoint_every": 0}
    if ranks > 1:
        spec["distributed"] = {"nproc_per_node": ranks}
    began = time.perf_counter()
    train_model.fn(shards, MODEL, TrainSpec.model_validate(spec), 0, f"{store}/{ranks}-{epochs}")
    return time.perf_counter() - began


def main(short: int = 2, long: int = 8) -> None:
    store = tempfile.mkdtemp(prefix="ddp-bench-")
    table = ingest.fn(SklearnSource(type="sklearn", dataset="breast_cancer"), store)
    raw = split.fn(table, SplitParams(type="split"), 0, store)
    scaled = normalize.fn(raw, NormalizeParams(type="normalize"), 0, store)
    shards = shard.fn(scaled, ShardParams(max_samples=128), store)
    rows = json.loads((Path(shards.path) / "manifest.json").read_text())["splits"]["train"]
    result = {}
    for ranks in (1, 2):
        extra = seconds(shards, store, ranks, long) - seconds(shards, store, ranks, short)
        result[ranks] = rows["samples"] * (long - short) / extra
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(
        f"1 process: {result[1]:.0f} samples/s; 2 DDP ranks: {result[2]:.0f} samples/s; "
        f"ratio {result[2] / result[1]:.2f} (1 thread per process; load {' '.join(load)})"
    )


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
