"""On-the-fly augmentation of training batches, seeded per (seed, epoch, worker)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from trainflow.errors import TrainflowError
from trainflow.spec.augment import AugmentSpec


def augmentation_seed(seed: int, epoch: int, worker: int = 0) -> int:
    """A seed that differs for every (seed, epoch, worker) and never collides in practice."""
    return int(np.random.SeedSequence([seed, epoch, worker]).generate_state(1)[0])


class Augmenter:
    """Albumentations for images (albumentations ignores global seeds: its Compose is seeded
    here per epoch and worker) and Gaussian noise for tabular features."""

    def __init__(self, spec: AugmentSpec, seed: int, image_input: bool):
        if spec.transforms and not image_input:
            raise TrainflowError(
                "train.augment.transforms apply to image inputs; for tabular "
                "features use train.augment.gaussian_noise"
            )
        self.spec, self.seed = spec, seed
        self.compose = spec.build()

    def mixer(self, epoch: int, worker: int = 0) -> Callable | None:
        """mixup for this epoch: (x, y) -> (mixed x, y, partner y, lambda), or None when off."""
        if not self.spec.mixup:
            return None
        rng = np.random.default_rng([self.seed, epoch, worker, 1])

        def mix(x: torch.Tensor, y: torch.Tensor):
            lam = float(rng.beta(self.spec.mixup, self.spec.mixup))
            partner = torch.from_numpy(rng.permutation(len(y)))
            return lam * x + (1 - lam) * x[partner], y, y[partner], lam

        return mix

    def for_epoch(self, epoch: int, worker: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
        seed = augmentation_seed(self.seed, epoch, worker)
        if self.compose is not None:
            self.compose.set_random_seed(seed)
        noise = torch.Generator().manual_seed(seed)

        def augment(x: torch.Tensor) -> torch.Tensor:
            if self.compose is not None:  # (N, C, H, W) -> HWC numpy per image and back
                images = x.permute(0, 2, 3, 1).numpy()
                x = (
                    torch.from_numpy(
                        np.stack(
                            [
                                self.compose(image=np.ascontiguousarray(image))["image"]
                                for image in images
                            ]
                        ).astype(np.float32)
                    )
                    .permute(0, 3, 1, 2)
                    .contiguous()
                )
            if self.spec.gaussian_noise:
                x = x + self.spec.gaussian_noise * torch.randn(x.shape, generator=noise)
            return x

        return augment


def preview_png(
    augmenter: Augmenter, images: torch.Tensor, columns: int = 8, scale: int = 4
) -> bytes:
    """A grid PNG: the first row the originals, the second the same images augmented."""
    import cv2

    augmented = augmenter.for_epoch(0)(images)
    rows = []
    for batch in (images, augmented):
        tiles = [img.mean(0).numpy() for img in batch[:columns]]  # channels averaged
        rows.append(np.concatenate(tiles, axis=1))
    grid = np.concatenate(rows, axis=0)
    low, high = grid.min(), grid.max()
    grid = ((grid - low) / (high - low + 1e-9) * 255).astype(np.uint8)
    grid = cv2.resize(grid, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    ok, encoded = cv2.imencode(".png", grid)
    return encoded.tobytes()
