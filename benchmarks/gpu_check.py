"""The prepared check of trainflow's CUDA paths, for a machine with a GPU (run through the
`device` tool when a task is lent one; CI and the test suite never have one).

Through the real train task on breast_cancer (a 2x2048 MLP, so the device has work), it
trains and measures:

- fp32, AMP fp16 with its grad scaler, and bf16 autocast: samples/s, validation accuracy, and
  that an fp16 run's last.pt holds the grad scaler's state (exact resume of AMP);
- the loader with pinned memory against without (`train.loader.pin_memory`);
- DDP on NCCL with `nproc_per_node` = every visible GPU (one GPU: one NCCL rank, which still
  runs the NCCL collectives and the comm hook) against one process;
- FSDP2 (`strategy: fsdp`) on the same ranks, with a torch.distributed.checkpoint folder
  written each epoch and the whole best.pt gathered at the end.

Samples/s is the extra epochs' rows over the extra seconds (`short` and `long` epochs), so
start-up cancels out. One JSON object goes to stdout and to $OUT/gpu_check.json when OUT is
set. `--device cpu` runs the same plumbing on CPU (fp32 and bf16 only, gloo), which is how
the script itself is checked on a machine without a GPU.

    python benchmarks/gpu_check.py [--device cuda|cpu] [--short 2] [--long 6]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from trainflow.spec.model import MLPParams
from trainflow.spec.train import TrainSpec
from trainflow.tasks.ingest import SklearnSource, ingest
from trainflow.tasks.normalize import NormalizeParams, normalize
from trainflow.tasks.shard import ShardParams, shard
from trainflow.tasks.split import SplitParams, split
from trainflow.tasks.train import train_model

MODEL = MLPParams(type="mlp", hidden_layers=2, units=[2048, 2048])


def train(shards, store: str, name: str, epochs: int, device: str, **knobs) -> tuple[float, Path]:
    """Seconds to train `epochs` epochs with `knobs`, and the model artifact's folder."""
    spec = {"batch_size": 256, "epochs": epochs, "device": device, "checkpoint_every": 0}
    spec |= {"loader": {"mode": "memory"}, "early_stopping": None} | knobs
    began = time.perf_counter()
    ref = train_model.fn(shards, MODEL, TrainSpec.model_validate(spec), 0, f"{store}/{name}")
    return time.perf_counter() - began, Path(ref.path)


def measure(shards, store: str, rows: int, name: str, args, **knobs) -> dict:
    """samples/s (extra epochs over extra seconds) and the long run's last validation row;
    a discarded first run takes the setting's one-time costs (CUDA context, kernels, the
    ranks' first start) off the short run."""
    train(shards, store, f"{name}-warm", args.short, args.device, **knobs)
    short, _ = train(shards, store, f"{name}-short", args.short, args.device, **knobs)
    long, folder = train(shards, store, f"{name}-long", args.long, args.device, **knobs)
    history = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    last = [row for row in history if "val_accuracy" in row][-1]
    return {
        "samples_per_s": round(rows * (args.long - args.short) / max(long - short, 1e-9)),
        "val_accuracy": last["val_accuracy"],
        "folder": str(folder),
    }


def scaler_saved(folder: Path) -> bool:
    """Whether last.pt (loaded weights_only, as a resume loads it) holds a grad scaler."""
    for path in folder.rglob("last.pt"):
        state = torch.load(path, weights_only=True, map_location="cpu")
        return bool(state.get("scaler"))
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--short", type=int, default=2)
    parser.add_argument("--long", type=int, default=6)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: run this on a GPU machine, or --device cpu", file=sys.stderr)
        return 2
    store = tempfile.mkdtemp(prefix="gpu-check-")
    table = ingest.fn(SklearnSource(type="sklearn", dataset="breast_cancer"), store)
    raw = split.fn(table, SplitParams(type="split"), 0, store)
    scaled = normalize.fn(raw, NormalizeParams(type="normalize"), 0, store)
    shards = shard.fn(scaled, ShardParams(max_samples=128), store)
    rows = json.loads((Path(shards.path) / "manifest.json").read_text())["splits"]["train"]
    rows = rows["samples"]
    cuda = args.device == "cuda"
    found: dict = {"device": torch.cuda.get_device_name(0) if cuda else "cpu"}
    found["torch"] = torch.__version__
    for precision in ("fp32", "fp16", "bf16") if cuda else ("fp32", "bf16"):
        found[precision] = measure(shards, store, rows, precision, args, precision=precision)
    if cuda:
        found["fp16"]["grad_scaler_in_last_pt"] = scaler_saved(Path(found["fp16"]["folder"]))
    for pin in (True, False):
        found[f"pin_memory_{pin}"] = measure_pinned(shards, store, rows, pin, args)
    ranks = torch.cuda.device_count() if cuda else 2
    backend = "nccl" if cuda else "gloo"
    distributed = {"nproc_per_node": ranks, "backend": backend}
    found[f"ddp_{backend}_{ranks}"] = measure(
        shards, store, rows, "ddp", args, precision="fp32", threads=1, distributed=distributed
    )
    sharded = {**distributed, "strategy": "fsdp"}  # FSDP2 on NCCL, DCP checkpoints each epoch
    found[f"fsdp_{backend}_{ranks}"] = measure(
        shards,
        store,
        rows,
        "fsdp",
        args,
        precision="fp32",
        threads=1,
        distributed=sharded,
        checkpoint_every=1,
    )
    found["one_process_1_thread"] = measure(
        shards, store, rows, "one", args, precision="fp32", threads=1
    )
    found["load"] = Path("/proc/loadavg").read_text().split()[:3]
    text = json.dumps(found, indent=2)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_check.json").write_text(text)
    return 0


def measure_pinned(shards, store: str, rows: int, pin: bool, args) -> dict:
    loader = {"mode": "memory", "pin_memory": pin}
    return measure(shards, store, rows, f"pin-{pin}", args, precision="fp32", loader=loader)


if __name__ == "__main__":
    sys.exit(main())
