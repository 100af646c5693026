"""Benchmark (a): trainflow's training task against a plain hand-written PyTorch loop.

Same model (the digits CNN of pipelines/digits_cnn.yaml), same seed, same data order and
batches, same per-epoch validation pass. trainflow's side is the whole `train` task body: it
reads and verifies the shards, trains with early-stopping bookkeeping, writes metrics.jsonl,
last.pt every epoch and best.pt, and commits the model artifact. Several runs each, alternating,
the first dropped; the result is the median (and best-of-runs) seconds per epoch and the final
training losses, which must be equal. Default knobs: last.pt every epoch but at most once per
`train.checkpoint_interval_s` (30 s), best.pt and last.pt at the end, metrics.jsonl every epoch.

    .venv/bin/python benchmarks/train_loop.py [--runs 5] [--epochs 10] [--instrumented]

--instrumented turns on what a user watching a run turns on: a metrics.jsonl row every 10
optimizer steps (loss, learning rate, gradient norm), TensorBoard event files, and last.pt at
every epoch end with no time throttle (keep_last 3, each with its sha256).
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
    start = time.perf_counter()
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
    return (time.perf_counter() - start) / epochs, total.item() / len(y)


def trainflow_task(spec, shards, store: str) -> tuple[float, float]:
    start = time.perf_counter()
    ref = train_model.fn(shards, spec.model, spec.train, spec.seed, store)
    seconds = time.perf_counter() - start
    rows = [json.loads(line) for line in (ref.path / "metrics.jsonl").read_text().splitlines()]
    epochs = [row for row in rows if "train_loss" in row]  # not the per-step rows
    return seconds / len(epochs), epochs[-1]["train_loss"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--instrumented", action="store_true")
    args = parser.parse_args()
    results = {"hand_written": [], "trainflow": []}
    with tempfile.TemporaryDirectory() as tmp:
        extra = (["train.log.every_steps=10", f"train.log.tensorboard={tmp}/tb",
                  "train.checkpoint_every=1", "train.checkpoint_interval_s=0",
                  "train.keep_last=3"] if args.instrumented else [])
        spec = load_spec(ROOT / "pipelines" / "digits_cnn.yaml",
                         [f"train.epochs={args.epochs}", "train.early_stopping=null",
                          "train.augment=null", *extra])  # the hand-written loop does not augment
        shards = prepare(spec, tmp)
        for run in range(args.runs):
            # fresh store per run so that nothing is reused; alternate the order of the two
            for name in (("hand_written", "trainflow") if run % 2 else ("trainflow", "hand_written")):
                store = f"{tmp}/run{run}"
                results[name].append(hand_written(spec, shards, args.epochs) if name == "hand_written"
                                     else trainflow_task(spec, shards, store))
    kept = {k: v[1:] for k, v in results.items()}
    base = statistics.median(s for s, _ in kept["hand_written"])
    ours = statistics.median(s for s, _ in kept["trainflow"])
    best_base = min(s for s, _ in kept["hand_written"])
    best_ours = min(s for s, _ in kept["trainflow"])
    losses = {k: {loss for _, loss in v} for k, v in results.items()}
    print(json.dumps({
        "instrumented": args.instrumented, "epochs": args.epochs, "runs_kept": args.runs - 1,
        "hand_written_s_per_epoch": round(base, 4), "trainflow_s_per_epoch": round(ours, 4),
        "overhead_pct": round(100 * (ours / base - 1), 2),
        "overhead_s_per_epoch": round(ours - base, 4),
        "best_of_runs_overhead_pct": round(100 * (best_ours / best_base - 1), 2),
        "final_losses_equal": losses["hand_written"] == losses["trainflow"]
        and len(losses["trainflow"]) == 1,
        "final_loss": sorted(losses["trainflow"])[0],
    }, indent=1))


if __name__ == "__main__":
    main()
