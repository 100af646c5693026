"""Mixed precision against fp32: training throughput of trainflow's loop on one device.

The same model, data and batch order through `engine.loop.train_epoch` with `train.precision`
fp32, bf16 (autocast) and, on CUDA, fp16 with a grad scaler. Reports samples per second per
precision (median of several epochs, the first dropped as warm-up) and the device's name, so
results from different machines are never mixed up.

    .venv/bin/python benchmarks/precision_throughput.py [--device cpu|cuda] [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from trainflow.engine.data import Split, batches

from trainflow.engine.loop import EpochBatches, train_epoch
from trainflow.engine.setup import resolve_device
from trainflow.engine.state import TrainingState
from trainflow.engine.update import Update, grad_scaler
from trainflow.models.cnn import cnn
from trainflow.spec.train import TrainSpec


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as info:
            model = next(line.split(":", 1)[1].strip() for line in info
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{model} ({torch.get_num_threads()} threads)"


def throughput(precision: str, device: torch.device, data: Split, epochs: int,
               batch_size: int) -> float:
    torch.manual_seed(0)
    model = cnn([3, 32, 32], 10, [64, 128, 256], hidden=256).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    spec = TrainSpec(precision=precision, device=device.type)
    update = Update.from_spec(spec, device)
    state = TrainingState(model, optimizer, scaler=grad_scaler(spec))
    generator = torch.Generator().manual_seed(0)
    rates = []
    for _ in range(epochs + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        train_epoch(model, state, EpochBatches(batches(data, batch_size, generator)), update)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(len(data) / (time.perf_counter() - start))
    return statistics.median(rates[1:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    device = resolve_device(args.device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.samples, 3, 32, 32, generator=g)
    data = Split(x, torch.randint(0, 10, (args.samples,), generator=g))
    precisions = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    rates = {p: throughput(p, device, data, args.epochs, args.batch_size) for p in precisions}
    print(json.dumps({
        "device": device_name(device), "torch": torch.__version__,
        "samples_per_s": {p: round(r, 1) for p, r in rates.items()},
        "speedup_vs_fp32": {p: round(r / rates["fp32"], 3) for p, r in rates.items()},
    }, indent=1))


if __name__ == "__main__":
    main()
