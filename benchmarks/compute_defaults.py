"""Threads and precision per shipped model: training samples/s at 1 thread, at all usable
threads, fp32 against bf16 autocast, and at what `train.threads: auto` / `train.precision:
auto` resolve to on this machine (engine.compute, probed afresh in a scratch cache).

Each contender trains the pipeline's model (built from its YAML, at its batch size) for a fixed
number of steps per round: forward, cross-entropy, backward and an AdamW step, on random inputs
of the model's input shape. Contenders are interleaved, in a seeded shuffled order each round, for a
fixed number of rounds; the figures are medians over rounds, with CPU time (process time, all
threads) beside wall time, and the median of the per-round ratio auto / (1 thread fp32) with a
95 % bootstrap interval. The load average and the CPU's model and flags are printed first.

    .venv/bin/python benchmarks/compute_defaults.py [--rounds 7] [--steps 30] [--only digits_cnn]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from trainflow import registry
from trainflow.engine import compute
from trainflow.spec.loading import load_raw

ROOT = Path(__file__).resolve().parents[1]
# The input shape each shipped pipeline's data step hands the model (credit: its encoded
# columns), so the benchmark does not run the data side; the model is the architecture's
# builder (multitask's auxiliary heads, two small Linear layers, left out).
SHAPES = {
    "breast_cancer_mlp": [30],
    "credit_smote_mlp": [20],
    "digits_cnn": [1, 8, 8],
    "sequences_gru": [64, 2],
    "sequences_multitask": [64, 2],
}
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8")


def machine() -> dict:
    cpu = compute.cpu_identity()
    return {
        "cpu": cpu["model"],
        "flags": [f for f in FLAGS if f in cpu["flags"]],
        "usable_cores": compute.usable_cores(),
        "torch": torch.__version__,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }


def train_steps(
    net, optimizer, x, y, threads: int, precision: str, steps: int
) -> tuple[float, float]:
    """(wall s, CPU s) of `steps` training steps at (threads, precision), after one untimed
    step (a change of thread count costs the first step after it)."""
    torch.set_num_threads(threads)
    dtype = torch.bfloat16 if precision == "bf16" else None
    steps += 1
    for step in range(steps):
        if step == 1:
            wall, cpu = time.perf_counter(), time.process_time()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(net(x).float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - wall, time.process_time() - cpu


def bootstrap(ratios: list[float], draws: int = 2000) -> tuple[float, float]:
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(draws))
    return medians[int(0.025 * draws)], medians[int(0.975 * draws)]


def contenders(net, batch) -> dict[str, tuple[int, str]]:
    cores = compute.usable_cores()
    pairs = {"1/fp32": (1, "fp32"), f"{cores}/fp32": (cores, "fp32")}
    if compute.bf16_units(torch.device("cpu")):
        pairs |= {"1/bf16": (1, "bf16"), f"{cores}/bf16": (cores, "bf16")}
    with tempfile.TemporaryDirectory() as scratch:  # a fresh probe, as a first run makes
        os.environ["TRAINFLOW_COMPUTE_CACHE"] = scratch
        choice = compute.resolve(net, batch, "auto", "auto", torch.device("cpu"))
    pairs["auto"] = (choice.threads, choice.precision)
    return pairs


def bench(
    name: str,
    shape: list[int],
    batch_size: int,
    rounds: int,
    steps: int,
    model: torch.nn.Module | None = None,
) -> dict:
    if model is None:
        spec = load_raw(ROOT / "pipelines" / f"{name}.yaml")
        torch.manual_seed(0)
        entry = registry.MODELS[spec["model"]["type"]]
        model = entry.impl(shape, 3, **entry.params(**spec["model"]).builder_kwargs())
    x, y = torch.randn(batch_size, *shape), torch.randint(0, 3, (batch_size,))
    pairs = contenders(model, (x, y))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for threads, precision in pairs.values():  # warm-up, untimed
        train_steps(model, optimizer, x, y, threads, precision, 2)
    wall: dict[str, list[float]] = {k: [] for k in pairs}
    cpu: dict[str, list[float]] = {k: [] for k in pairs}
    names = list(pairs)
    order = random.Random(0)
    for _ in range(rounds):  # a shuffled order per round: a run after a two-thread run is slow
        for key in order.sample(names, len(names)):
            seconds, cpu_s = train_steps(model, optimizer, x, y, *pairs[key], steps)
            wall[key].append(seconds)
            cpu[key].append(cpu_s)
    ratios = [base / auto for base, auto in zip(wall["1/fp32"], wall["auto"])]
    samples = batch_size * steps
    return {
        "model": name,
        "batch": batch_size,
        "auto": "{}/{}".format(*pairs["auto"]),
        "samples_per_s": {k: round(samples / statistics.median(v)) for k, v in wall.items()},
        "cpu_ms_per_step": {
            k: round(1e3 * statistics.median(v) / steps, 3) for k, v in cpu.items()
        },
        "auto_speedup_vs_1_thread_fp32": round(statistics.median(ratios), 3),
        "interval_95": [round(r, 3) for r in bootstrap(ratios)],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--only", nargs="*", default=list(SHAPES))
    args = parser.parse_args()
    print(json.dumps(machine()), flush=True)
    for name in args.only:
        spec = load_raw(ROOT / "pipelines" / f"{name}.yaml")
        row = bench(
            name, SHAPES[name], spec["train"].get("batch_size", 64), args.rounds, args.steps
        )
        print(json.dumps(row), flush=True)
    print(json.dumps({"loadavg_after": machine()["loadavg"]}), file=sys.stdout)


if __name__ == "__main__":
    main()
