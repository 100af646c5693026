"""Training samples/s of 1 process vs 2 DDP ranks vs a parameter server (sync: rank 0 the
server, 2 trainers), one torch thread per process, for the compute-bound MLP of
benchmarks/ddp_throughput.py (two hidden layers of 2048 on breast_cancer's 30 features,
global batch 64), through the real train task.

Each contender trains for `short` and `long` epochs; samples/s is the extra epochs' rows over
the extra seconds, so torchrun's start, the imports and the data reading cancel out. The
contenders run interleaved (1, ddp, ps, 1, ddp, ps, ...) `runs` times, so a change of the
machine's load falls on all of them; each ratio is given as its median with the range.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ps_throughput.py [runs short long]
"""

from __future__ import annotations

import json
import statistics
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
CONTENDERS = {
    "1 process": None,
    "2 DDP ranks": {"nproc_per_node": 2},
    "parameter server (1 + 2 trainers, sync)": {
        "strategy": "parameter_server",
        "nproc_per_node": 3,
    },
}


def seconds(shards, store: str, distributed: dict | None, epochs: int, tag: str) -> float:
    spec = {"batch_size": 64, "epochs": epochs, "threads": 1, "precision": "fp32"}
    spec |= {"device": "cpu", "loader": {"mode": "memory"}, "checkpoint_every": 0}
    if distributed:
        spec["distributed"] = distributed
    began = time.perf_counter()
    train_model.fn(shards, MODEL, TrainSpec.model_validate(spec), 0, f"{store}/{tag}")
    return time.perf_counter() - began


def cpu_flags() -> str:
    """The vector units torch's CPU kernels can use here."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")
            return " ".join(flag for flag in wanted if flag in have)
    return "?"


def main(runs: int = 3, short: int = 2, long: int = 6) -> None:
    store = tempfile.mkdtemp(prefix="ps-bench-")
    table = ingest.fn(SklearnSource(type="sklearn", dataset="breast_cancer"), store)
    raw = split.fn(table, SplitParams(type="split"), 0, store)
    scaled = normalize.fn(raw, NormalizeParams(type="normalize"), 0, store)
    shards = shard.fn(scaled, ShardParams(max_samples=128), store)
    rows = json.loads((Path(shards.path) / "manifest.json").read_text())["splits"]["train"]
    rates: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    loads = [Path("/proc/loadavg").read_text().split()[0]]
    for run in range(runs):
        for i, (name, distributed) in enumerate(CONTENDERS.items()):
            tag = f"{run}-{i}"
            extra = seconds(shards, store, distributed, long, f"{tag}-long") - seconds(
                shards, store, distributed, short, f"{tag}-short"
            )
            rates[name].append(rows["samples"] * (long - short) / extra)
        loads.append(Path("/proc/loadavg").read_text().split()[0])
    one = rates["1 process"]
    print(f"{runs} runs, {long - short} extra epochs each, 1 torch thread per process, "
          f"load average (1 min) {' -> '.join(loads)}, CPU flags: {cpu_flags()}")  # fmt: skip
    for name, got in rates.items():
        ratios = [r / o for r, o in zip(got, one)]
        print(
            f"{name}: {statistics.median(got):.0f} samples/s (runs: "
            f"{', '.join(f'{r:.0f}' for r in got)}); vs 1 process: median "
            f"{statistics.median(ratios):.2f}, range {min(ratios):.2f}-{max(ratios):.2f}"
        )


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:4]))
