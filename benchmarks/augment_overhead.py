"""trainflow's on-the-fly augmentation against calling the same albumentations Compose directly.

Both sides augment the same 4,096 digits-sized images (1x8x8, float32), batch by batch, with the
same transforms: trainflow through `Augmenter.for_epoch(epoch)(batch)` (seeding per epoch and the
tensor <-> HWC conversion included), the direct side with a loop over `compose(image=...)`.
Median of 7 runs, first dropped.

    .venv/bin/python benchmarks/augment_overhead.py
"""

from __future__ import annotations

import json
import statistics
import time

import numpy as np
import torch

from trainflow.engine.augment import Augmenter
from trainflow.spec.augment import AugmentSpec, TransformSpec

SPEC = AugmentSpec(transforms=[TransformSpec(name="Erasing", params={"p": 0.5}),
                               TransformSpec(name="HorizontalFlip", params={"p": 0.5})])


def main() -> None:
    images = torch.randn(4096, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    batches = images.split(64)
    augmenter = Augmenter(SPEC, 0, True)
    direct = SPEC.build()
    hwc = [b.permute(0, 2, 3, 1).numpy() for b in batches]
    times = {"direct_compose": [], "trainflow": []}
    for run in range(7):
        start = time.perf_counter()
        direct.set_random_seed(run)
        for batch in hwc:
            [direct(image=np.ascontiguousarray(img))["image"] for img in batch]
        times["direct_compose"].append(time.perf_counter() - start)
        start = time.perf_counter()
        augment = augmenter.for_epoch(run)
        for batch in batches:
            augment(batch)
        times["trainflow"].append(time.perf_counter() - start)
    base = statistics.median(times["direct_compose"][1:])
    ours = statistics.median(times["trainflow"][1:])
    print(json.dumps({"images": len(images), "direct_compose_s": round(base, 4),
                      "trainflow_s": round(ours, 4), "ratio": round(ours / base, 3)}, indent=1))


if __name__ == "__main__":
    main()
