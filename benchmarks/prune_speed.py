"""Does pruning make a forward pass faster? fp32 vs 50 % L1 unstructured vs 50 % structured.

Unstructured pruning zeroes weights inside dense matrices of the same shape, so dense kernels do
the same work; structured pruning (trainflow.channel_prune) rebuilds narrower layers, so they
do less. Models: the shipped breast-cancer MLP (30-64-32-2), the shipped digits CNN
(channels 32, 64, hidden 128 on 8x8 images) and a wide MLP (784-1024-1024-1024-10); random
weights (the speed depends on the shapes, not the values), batches of 256.

Method (benchmarks/harness.py): threads pinned (--threads, default 1); per model, every
contender runs once per run (CALLS forward passes), interleaved in an order rotated each run,
after one warm-up round; a fixed --runs; wall and CPU time per batch; each contender's median
ratio to fp32 over the paired runs with a 95 % bootstrap interval; parameters and FLOPs (torch's
flop counter, one sample) beside them; load average and CPU flags in the header.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/prune_speed.py [--runs 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy

import harness
import torch

from trainflow import channel_prune, compress
from trainflow.models.cnn import cnn
from trainflow.models.mlp import mlp
from trainflow.spec.after_training import L1UnstructuredParams
from trainflow.spec.structured_prune import StructuredPruneParams

CALLS = {"breast_cancer_mlp": 400, "digits_cnn": 4, "wide_mlp_1024": 8}  # tens of ms a run
SPARSITY = 0.5


def networks() -> dict:
    """name -> (network, model.json's model entry, input shape)."""
    torch.manual_seed(0)
    mlp_small = {"type": "mlp", "hidden_layers": 2, "units": [64, 32]}
    wide = {"type": "mlp", "hidden_layers": 3, "units": [1024, 1024, 1024]}
    digits = {"type": "cnn", "channels": [32, 64], "hidden": 128}
    return {
        "breast_cancer_mlp": (mlp([30], 2, [64, 32]), mlp_small, [30]),
        "digits_cnn": (cnn([1, 8, 8], 10, [32, 64], hidden=128), digits, [1, 8, 8]),
        "wide_mlp_1024": (mlp([784], 10, [1024] * 3), wide, [784]),
    }


def contenders(net: torch.nn.Module, model: dict, shape: list[int]) -> dict:
    unstructured = copy.deepcopy(net)
    targets = compress.prune_l1_unstructured(
        unstructured, L1UnstructuredParams(type="l1_unstructured", sparsity=SPARSITY)
    )
    compress.make_permanent(targets)
    params = StructuredPruneParams(type="l1_structured", sparsity=SPARSITY)
    structured, _ = channel_prune.prune_in_steps(copy.deepcopy(net), model, shape, params)
    return {
        "fp32": net.eval(),
        "l1_unstructured_50": unstructured.eval(),
        "l1_structured_50": structured.eval(),
    }


def timed(model: torch.nn.Module, batch: torch.Tensor, calls: int):
    """One run of one contender: `calls` forward passes, timed together."""

    @torch.inference_mode()
    def run():
        for _ in range(calls):
            model(batch)

    return lambda: harness.measure(run)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="*", default=list(CALLS), choices=list(CALLS))
    args = parser.parse_args()
    harness.pin_threads(args.threads)
    before = harness.header("prune_speed")
    results = {}
    for name, (net, model, shape) in networks().items():
        if name not in args.models:
            continue
        built = contenders(net, model, shape)
        batch = torch.randn(256, *shape)
        samples = harness.interleave(
            {k: timed(m, batch, CALLS[name]) for k, m in built.items()}, args.runs
        )
        sizes = {k: channel_prune.sizes(m, shape) for k, m in built.items()}
        sizes["l1_unstructured_50"]["zero_weight_share"] = compress.sparsity(
            built["l1_unstructured_50"]
        )
        print(f"\n## {name}: ms per batch of 256 ({CALLS[name]} batches a run)")
        summary = harness.summarize(samples, "fp32")
        print(harness.table(summary, unit=CALLS[name] / 1000, unit_name="ms/batch"))
        print(f"sizes (parameters, FLOPs of one sample): {sizes}")
        results[name] = {"calls_per_run": CALLS[name], "sizes": sizes, "summary": summary}
    harness.finish(
        "prune_speed",
        before,
        {"runs": args.runs, "threads": args.threads, "sparsity": SPARSITY, "models": results},
    )


if __name__ == "__main__":
    main()
