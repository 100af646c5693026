"""Benchmark (a): trainflow's training task against a plain hand-written PyTorch loop.

Same model (the digits CNN of pipelines/digits_cnn.yaml), same seed, same data order and
batches, same per-epoch validation pass. trainflow's side is the whole `train` task body: it
reads and verifies the shards, trains with early-stopping bookkeeping, writes metrics.jsonl,
last.pt every epoch and best.pt, and commits the model artifact. Several runs each, alternating,
the first dropped; the result is the median (and best-of-runs) seconds per epoch and the final
training losses, which must be equal. Default knobs: last.pt every epoch but at most once per
`train.checkpoint_interval_s` (30 s), best.pt and last.pt at the end, metrics.jsonl every epoch.

    .venv/bin/python benchmarks/train_loop.py [--runs 5] [--epochs 10] [--instrumented]

--instrumented adds a third contender, interleaved with the other two: the train task with what
a user watching a run turns on: a metrics.jsonl row every 10 optimizer steps (loss, learning
rate, gradient norm), TensorBoard event files, and last.pt at every epoch end with no time
throttle (keep_last 3, each with its sha256). Besides wall time, each contender's CPU time
(process time, all threads: the background checkpoint writer and TensorBoard's flusher
included) is reported: on a shared machine it moves far less with the neighbours' load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from trainflow.engine.bundle import build_model
from trainflow.shards import read_split
from trainflow.spec.pipeline import load_spec
from trainflow.tasks.ingest import ingest
from trainflow.tasks.train import train_model

ROOT = Path(__file__).resolve().parents[1]


def prepare(spec, store: str):
    from trainflow import registry
    from trainflow.tasks.shard import shard

    ref = ingest.fn(spec.data.source, store)
    for step in spec.data.pre_split:
        ref = registry.STEPS[step.type].impl.fn(ref, step, spec.seed, store)
    ref = registry.STEPS["split"].impl.fn(ref, spec.data.split, spec.seed, store)
    for step in spec.data.post_split:
        ref = registry.STEPS[step.type].impl.fn(ref, step, spec.seed, store)
    return shard.fn(ref, spec.data.shard, store)


def hand_written(spec, shards, epochs: int) -> tuple[float, float]:
    """What a user would write: tensors in memory, shuffle, step, validate each epoch."""
    x, y = (torch.from_numpy(a) for a in read_split(shards.path, "train"))
    vx, vy = (torch.from_numpy(a) for a in read_split(shards.path, "val"))
    start, cpu = time.perf_counter(), time.process_time()
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, shards.data_schema["input_shape"],
                        len(shards.data_schema["classes"]))
    order = torch.Generator().manual_seed(spec.seed)
    torch.manual_seed(spec.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.train.lr,
                            weight_decay=spec.train.weight_decay)
    bs = spec.train.batch_size
    for _ in range(epochs):
        model.train()
        perm, total = torch.randperm(len(y), generator=order), torch.zeros(())
        for i in range(0, len(y), bs):
            idx = perm[i:i + bs]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
        model.eval()
        with torch.no_grad():
            for i in range(0, len(vy), bs):
                nn.functional.cross_entropy(model(vx[i:i + bs]), vy[i:i + bs])
    return ((time.perf_counter() - start) / epochs, (time.process_time() - cpu) / epochs,
            total.item() / len(y))


def trainflow_task(spec, shards, store: str) -> tuple[float, float, float]:
    start, cpu = time.perf_counter(), time.process_time()
    ref = train_model.fn(shards, spec.model, spec.train, spec.seed, store)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    rows = [json.loads(line) for line in (ref.path / "metrics.jsonl").read_text().splitlines()]
    epochs = [row for row in rows if "train_loss" in row]  # not the per-step rows
    return seconds / len(epochs), cpu_seconds / len(epochs), epochs[-1]["train_loss"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--instrumented", action="store_true")
    args = parser.parse_args()
    names = ["hand_written", "trainflow"] + (["instrumented"] if args.instrumented else [])
    results = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        base = [f"train.epochs={args.epochs}", "train.early_stopping=null",
                "train.augment=null"]  # the hand-written loop does not augment
        specs = {"trainflow": load_spec(ROOT / "pipelines" / "digits_cnn.yaml", base),
                 "instrumented": load_spec(ROOT / "pipelines" / "digits_cnn.yaml", [
                     *base, "train.log.every_steps=10", f"train.log.tensorboard={tmp}/tb",
                     "train.checkpoint_every=1", "train.checkpoint_interval_s=0",
                     "train.keep_last=3"])}
        spec = specs["trainflow"]
        shards = prepare(spec, tmp)
        for run in range(args.runs):
            # fresh store per run so that nothing is reused; rotate the order of contenders
            for name in names[run % len(names):] + names[:run % len(names)]:
                store = f"{tmp}/run{run}-{name}"
                results[name].append(hand_written(spec, shards, args.epochs)
                                     if name == "hand_written"
                                     else trainflow_task(specs[name], shards, store))
    kept = {k: v[1:] for k, v in results.items()}
    wall = {k: statistics.median(r[0] for r in v) for k, v in kept.items()}
    cpu = {k: statistics.median(r[1] for r in v) for k, v in kept.items()}
    best = {k: min(r[0] for r in v) for k, v in kept.items()}
    losses = {k: {r[2] for r in v} for k, v in results.items()}
    report = {"epochs": args.epochs, "runs_kept": args.runs - 1,
              "hand_written_s_per_epoch": round(wall["hand_written"], 4),
              "hand_written_cpu_s_per_epoch": round(cpu["hand_written"], 4)}
    for name in names[1:]:
        report[name] = {
            "s_per_epoch": round(wall[name], 4), "cpu_s_per_epoch": round(cpu[name], 4),
            "overhead_pct": round(100 * (wall[name] / wall["hand_written"] - 1), 2),
            "overhead_s_per_epoch": round(wall[name] - wall["hand_written"], 4),
            "cpu_overhead_pct": round(100 * (cpu[name] / cpu["hand_written"] - 1), 2),
            "best_of_runs_overhead_pct": round(100 * (best[name] / best["hand_written"] - 1), 2),
            "final_loss_equal": losses[name] == losses["hand_written"] and len(losses[name]) == 1,
        }
    report["final_loss"] = sorted(losses["trainflow"])[0]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
