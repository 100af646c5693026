"""trainflow's on-the-fly augmentation against calling the same albumentations Compose directly.

Both sides augment the same 4,096 digits-sized images (1x8x8, float32), batch by batch, with the
same transforms: trainflow through `Augmenter.for_epoch(epoch)(batch)` (seeding per epoch and the
tensor <-> HWC conversion included), the direct side with a loop over `compose(image=...)`.

Method (benchmarks/harness.py): threads pinned (--threads, default 1); the two sides run once per
run, interleaved in alternating order, after one warm-up pair; a fixed --runs; wall and CPU
time; the median ratio trainflow / direct over the paired runs with a 95 % bootstrap interval.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/augment_overhead.py [--runs 11]
"""

from __future__ import annotations

import argparse
import itertools

import harness
import numpy as np
import torch

from trainflow.engine.augment import Augmenter
from trainflow.spec.augment import AugmentSpec, TransformSpec

SPEC = AugmentSpec(
    transforms=[
        TransformSpec(name="Erasing", params={"p": 0.5}),
        TransformSpec(name="HorizontalFlip", params={"p": 0.5}),
    ]
)


def contenders() -> dict:
    """Each side's one run: every batch of the 4,096 images once, seeded by the run's number."""
    images = torch.randn(4096, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    batches = images.split(64)
    hwc = [b.permute(0, 2, 3, 1).numpy() for b in batches]
    augmenter, direct = Augmenter(SPEC, 0, True), SPEC.build()
    seeds = {"direct": itertools.count(), "trainflow": itertools.count()}

    def run_direct():
        direct.set_random_seed(next(seeds["direct"]))
        for batch in hwc:
            [direct(image=np.ascontiguousarray(img))["image"] for img in batch]

    def run_trainflow():
        augment = augmenter.for_epoch(next(seeds["trainflow"]))
        for batch in batches:
            augment(batch)

    return {
        "direct Compose": lambda: harness.measure(run_direct)[0],
        "trainflow Augmenter": lambda: harness.measure(run_trainflow)[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    harness.pin_threads(args.threads)
    before = harness.header("augment_overhead")
    samples = harness.interleave(contenders(), args.runs)
    harness.conclude(
        "augment_overhead", before, samples, "direct Compose", images=4096, runs=args.runs
    )


if __name__ == "__main__":
    main()
