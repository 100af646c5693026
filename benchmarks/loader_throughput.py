"""Samples per second through the streaming shard loader against two baselines, in one run.

tabular: 200k samples x 32 float32 features in shards (8192 samples per 1 MiB record, the
shard step's default), streamed with
a 10k-sample shuffle buffer, against iterating the same tensors in memory (the in-memory
loader: a seeded permutation, batches by index).
images: 20k 3x32x32 float32 images in shards, against reading the same samples as loose files
(one .npy per image, as a PyTorch Dataset over a file list with the same DataLoader workers).
Batches of 256; best of 3 epochs each, warm page cache.

    .venv/bin/python benchmarks/loader_throughput.py [--workers 0 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import harness
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from trainflow.engine.data import Split, batches
from trainflow.loader import StreamConfig, loader
from trainflow.shards import write_split
from trainflow.tasks.shard import record_samples

BATCH = 256


def shards(folder: Path, x: np.ndarray, y: np.ndarray) -> list[str]:
    """Written as the shard step writes them by default (records of about 1 MiB)."""
    entry = write_split(
        folder, "train", x, y, ["a", "b"], max_samples=20_000, per_record=record_samples(x)
    )
    return [str(folder / s["name"]) for s in entry["shards"]]


def rate(make_epoch, samples: int, epochs: int = 3) -> float:
    best = 0.0
    for epoch in range(1, epochs + 1):
        start, seen = time.perf_counter(), 0
        for xb, _ in make_epoch(epoch):
            seen += len(xb)
        assert seen == samples, (seen, samples)
        best = max(best, seen / (time.perf_counter() - start))
    return best


class LooseFiles(Dataset):
    def __init__(self, files: list[Path], labels: np.ndarray):
        self.files, self.labels = files, labels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return torch.from_numpy(np.load(self.files[i], allow_pickle=False)), int(self.labels[i])


def main(workers: list[int]) -> None:
    before = harness.header("loader_throughput")
    rng = np.random.default_rng(0)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        n = 200_000
        x = rng.normal(size=(n, 32)).astype(np.float32)
        y = rng.integers(0, 2, n)
        paths = shards(root / "tabular", x, y)
        data, generator = Split.from_arrays(x, y), torch.Generator().manual_seed(0)
        memory = rate(lambda e: batches(data, BATCH, generator), n)
        results["tabular"] = {"in_memory_samples_s": round(memory)}
        for w in workers:
            streamed = rate(
                lambda e, w=w: loader(paths, StreamConfig(BATCH, 10_000), e, n, workers=w), n
            )
            results["tabular"][f"shards_w{w}_samples_s"] = round(streamed)
            results["tabular"][f"ratio_w{w}"] = round(streamed / memory, 3)

        n = 20_000
        images = rng.normal(size=(n, 3, 32, 32)).astype(np.float32)
        labels = rng.integers(0, 2, n)
        paths = shards(root / "images", images, labels)
        (root / "loose").mkdir()
        files = []
        for i, image in enumerate(images):
            files.append(root / "loose" / f"{i:06d}.npy")
            np.save(files[-1], image, allow_pickle=False)
        results["images"] = {}
        for w in workers:

            def loose(epoch, w=w):
                order = torch.Generator().manual_seed(epoch)
                return DataLoader(
                    LooseFiles(files, labels),
                    batch_size=BATCH,
                    shuffle=True,
                    generator=order,
                    num_workers=w,
                )

            files_rate = rate(loose, n)
            streamed = rate(
                lambda e, w=w: loader(paths, StreamConfig(BATCH, 2_000), e, n, workers=w), n
            )
            results["images"][f"w{w}"] = {
                "loose_files_samples_s": round(files_rate),
                "shards_samples_s": round(streamed),
                "ratio": round(streamed / files_rate, 2),
            }
    print(json.dumps(results, indent=1))
    harness.finish("loader_throughput", before, {"workers": workers, "results": results})


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    main(parser.parse_args().workers)
