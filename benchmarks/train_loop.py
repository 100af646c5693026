"""Loop overhead: trainflow's training task against a plain hand-written PyTorch loop.

Same model (the digits CNN of pipelines/digits_cnn.yaml), same seed, same data order and
batches, same per-epoch validation pass, fp32. Contenders:

- hand-written: tensors in memory (read before the clock starts), shuffle, step, validate.
- train task, defaults: the whole `train` task body: it reads and verifies the shards, trains
  with early-stopping bookkeeping, writes metrics.jsonl, last.pt (every epoch but at most once
  per `train.checkpoint_interval_s`, 30 s) and best.pt, and commits the model artifact.
- train task, with logging and checkpointing (--instrumented): what a user watching a run turns
  on: a metrics.jsonl row every 10 optimizer steps (loss, learning rate, gradient norm),
  TensorBoard event files, and last.pt at every epoch end with no time throttle (keep_last 3,
  each with its sha256).

Method (benchmarks/harness.py): every contender runs on one pinned thread (torch and the spec's
`train.threads`), so the baseline is the one-thread epoch of the hand-written loop; each run
trains every contender once, interleaved in an order rotated each run, after one warm-up round;
a fixed --runs; a fresh store each time. The figure is CPU time (process time over all threads,
the background checkpoint writer and TensorBoard's flusher included), which moves far less with
the neighbours' load than wall time; wall time is printed beside it. Overhead = the median of
the per-run ratios task / hand-written minus 1, with a 95 % bootstrap interval. Targets: defaults
<= 2 %, with logging and checkpointing <= 10 %. The final training losses must be equal.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_loop.py [--runs 11] [--epochs 10] \
        [--instrumented]
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

import harness
import torch
from torch import nn

from trainflow.engine.model_folder import build_model
from trainflow.shards import read_split
from trainflow.spec.pipeline import load_spec
from trainflow.spec.train import TrainSpec
from trainflow.tasks.ingest import ingest
from trainflow.tasks.train import train_model

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"train task, defaults": 2.0, "train task, logging + checkpoints": 10.0}


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


def hand_written(spec, data, epochs: int) -> float:
    """What a user would write; returns the last epoch's mean training loss."""
    (x, y), (vx, vy), schema = data
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, schema["input_shape"], len(schema["classes"]))
    order = torch.Generator().manual_seed(spec.seed)
    torch.manual_seed(spec.seed)
    opt = torch.optim.AdamW(
        model.parameters(), lr=spec.train.lr, weight_decay=spec.train.weight_decay
    )
    bs = spec.train.batch_size
    for _ in range(epochs):
        model.train()
        perm, total = torch.randperm(len(y), generator=order), torch.zeros(())
        for i in range(0, len(y), bs):
            idx = perm[i : i + bs]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
        model.eval()
        with torch.no_grad():
            for i in range(0, len(vy), bs):
                nn.functional.cross_entropy(model(vx[i : i + bs]), vy[i : i + bs])
    return total.item() / len(y)


def specs(epochs: int, tmp: str) -> dict:
    base = [
        f"train.epochs={epochs}",
        "train.early_stopping=null",
        "train.augment=null",  # the hand-written loop does not augment
        "train.precision=fp32",
    ]
    if "threads" in TrainSpec.model_fields:  # the spec's own thread choice, pinned to one
        base.append("train.threads=1")
    path = ROOT / "pipelines" / "digits_cnn.yaml"
    return {
        "train task, defaults": load_spec(path, base),
        "train task, logging + checkpoints": load_spec(
            path,
            [
                *base,
                "train.log.every_steps=10",
                f"train.log.tensorboard={tmp}/tb",
                "train.checkpoint_every=1",
                "train.checkpoint_interval_s=0",
                "train.keep_last=3",
            ],
        ),
    }


def contenders(names: list[str], specs: dict, shards, tmp: str, epochs: int, losses: dict):
    """One measured training per call; each call's final training loss lands in `losses`."""
    spec = specs["train task, defaults"]
    data = [
        *(
            tuple(torch.from_numpy(a) for a in read_split(shards.path, part))
            for part in ("train", "val")
        ),
        shards.data_schema,
    ]
    stores = itertools.count()

    def hand():
        sample, loss = harness.measure(lambda: hand_written(spec, data, epochs))
        losses["hand-written"].add(loss)
        return sample

    def task(name):
        def run():
            store, chosen = f"{tmp}/store{next(stores)}", specs[name]
            sample, ref = harness.measure(
                lambda: train_model.fn(shards, chosen.model, chosen.train, chosen.seed, store)
            )
            rows = [
                json.loads(line) for line in (ref.path / "metrics.jsonl").read_text().splitlines()
            ]
            losses[name].add([r for r in rows if "train_loss" in r][-1]["train_loss"])
            return sample

        return run

    return {name: hand if name == "hand-written" else task(name) for name in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--instrumented", action="store_true")
    args = parser.parse_args()
    harness.pin_threads(1)
    before = harness.header("train_loop")
    names = ["hand-written", "train task, defaults"]
    names += ["train task, logging + checkpoints"] if args.instrumented else []
    losses = {name: set() for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        chosen = specs(args.epochs, tmp)
        shards = prepare(chosen["train task, defaults"], tmp)
        samples = harness.interleave(
            contenders(names, chosen, shards, tmp, args.epochs, losses), args.runs
        )
    summary = harness.summarize(samples, "hand-written")
    print(f"\n{args.epochs} epochs a training; seconds per epoch:")
    print(harness.table(summary, unit=args.epochs, unit_name="s/epoch"))
    overhead = {}
    for name in names[1:]:
        cpu = summary[name]["cpu_ratio"]
        overhead[name] = {
            "cpu_overhead_pct": round(100 * (cpu["median"] - 1), 2),
            "cpu_overhead_pct_95": [
                round(100 * (cpu["low"] - 1), 2),
                round(100 * (cpu["high"] - 1), 2),
            ],
            "wall_overhead_pct": round(100 * (summary[name]["wall_ratio"]["median"] - 1), 2),
            "target_pct": TARGETS[name],
            "met": 100 * (cpu["median"] - 1) <= TARGETS[name],
            "final_loss_equal": losses[name] == losses["hand-written"] and len(losses[name]) == 1,
        }
        print(
            f"{name}: CPU-time overhead {overhead[name]['cpu_overhead_pct']:+.2f} % "
            f"(95 % {overhead[name]['cpu_overhead_pct_95'][0]:+.2f} to "
            f"{overhead[name]['cpu_overhead_pct_95'][1]:+.2f}), target <= {TARGETS[name]} %: "
            f"{'met' if overhead[name]['met'] else 'NOT met'}; final loss equal: "
            f"{overhead[name]['final_loss_equal']}"
        )
    harness.finish(
        "train_loop",
        before,
        {
            "runs": args.runs,
            "epochs": args.epochs,
            "threads": 1,
            "baseline": "hand-written",
            "overhead": overhead,
            "final_losses": {k: sorted(v) for k, v in losses.items()},
            "summary": summary,
        },
    )


if __name__ == "__main__":
    main()
