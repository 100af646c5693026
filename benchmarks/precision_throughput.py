"""Mixed precision against fp32: training throughput of trainflow's loop on one device.

The same CNN (3x32x32 inputs, conv 64-128-256), data and batch order through
`engine.loop.train_epoch` with `train.precision` fp32, bf16 (autocast) and, on CUDA, fp16 with a
grad scaler; on CPU each at 1 thread and at all usable cores. Contenders are interleaved (one
epoch each per round, in a seeded shuffled order, after a warm-up round), for a fixed number of
rounds; it reports median samples/s, CPU time per epoch, and the median per-round ratio against
fp32 at the same threads with a 95 % bootstrap interval. The machine (CPU model and flags, load
average before and after) is printed first, so results from different machines are never mixed.

    .venv/bin/python benchmarks/precision_throughput.py [--device cpu|cuda] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

from trainflow.engine import compute
from trainflow.engine.data import Split, batches
from trainflow.engine.loop import EpochBatches, train_epoch
from trainflow.engine.setup import resolve_device
from trainflow.engine.state import TrainingState
from trainflow.engine.update import Update, grad_scaler
from trainflow.models.cnn import cnn
from trainflow.spec.train import TrainSpec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compute_defaults import bootstrap, machine  # noqa: E402  (the sibling benchmark)


def contender(precision: str, device: torch.device, data: Split, batch_size: int):
    """One epoch of training per call, at this precision; returns (wall s, CPU s)."""
    torch.manual_seed(0)
    model = cnn([3, 32, 32], 10, [64, 128, 256], hidden=256).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    spec = TrainSpec(precision=precision, device=device.type)
    update = Update.from_spec(spec, device)
    state = TrainingState(model, optimizer, scaler=grad_scaler(spec))
    generator = torch.Generator().manual_seed(0)

    def epoch() -> tuple[float, float]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        train_epoch(model, state, EpochBatches(batches(data, batch_size, generator)), update)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - wall, time.process_time() - cpu

    return epoch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(
        json.dumps(
            machine()
            | ({"gpu": torch.cuda.get_device_name(device)} if device.type == "cuda" else {})
        ),
        flush=True,
    )
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.samples, 3, 32, 32, generator=g)
    data = Split(x, torch.randint(0, 10, (args.samples,), generator=g))
    precisions = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    cores = compute.usable_cores()
    threads = sorted({1, cores}) if device.type == "cpu" else [cores]
    runs = {
        (t, p): contender(p, device, data, args.batch_size) for t in threads for p in precisions
    }
    wall: dict = {k: [] for k in runs}
    cpu: dict = {k: [] for k in runs}
    order = random.Random(0)
    for round_ in range(args.rounds + 1):  # round 0 warms up, untimed
        for key in order.sample(list(runs), len(runs)):
            torch.set_num_threads(key[0])
            seconds, cpu_s = runs[key]()
            if round_:
                wall[key].append(seconds)
                cpu[key].append(cpu_s)
    rows = {}
    for (t, p), times in wall.items():
        ratios = [base / mine for base, mine in zip(wall[(t, "fp32")], times)]
        rows[f"{t}/{p}"] = {
            "samples_per_s": round(args.samples / statistics.median(times), 1),
            "cpu_s_per_epoch": round(statistics.median(cpu[(t, p)]), 3),
            "speedup_vs_fp32_same_threads": round(statistics.median(ratios), 3),
            "interval_95": [round(r, 3) for r in bootstrap(ratios)],
        }
    print(
        json.dumps(
            {"torch": torch.__version__, "rounds": args.rounds, "contenders": rows}, indent=1
        )
    )
    print(json.dumps({"loadavg_after": machine()["loadavg"]}))


if __name__ == "__main__":
    main()
