"""Train section: optimizer, learning rate, batch size, epochs, early stopping, device."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from trainflow.spec.augment import AugmentSpec
from trainflow.spec.base import Section


class SGDParams(Section):
    type: Literal["sgd"]
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = False


class AdamParams(Section):
    """Adam and AdamW (decoupled weight decay) share their parameters."""

    type: Literal["adam", "adamw"]
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)


class EarlyStopping(Section):
    monitor: Literal["val_loss", "val_accuracy"] = "val_loss"
    patience: PositiveInt = 5
    min_delta: float = Field(0.0, ge=0.0)

    @property
    def mode(self) -> Literal["min", "max"]:
        return "min" if self.monitor == "val_loss" else "max"


class LoaderSpec(Section):
    """How training samples reach the loop: all in memory (shuffled per epoch), or streamed
    from the shards through a webdataset pipeline with loader workers (validation stays in
    memory). Streamed order is reproducible for a given seed and worker count."""

    mode: Literal["auto", "memory", "stream"] = Field(
        "auto", description="auto: in memory when the training shards fit in memory_limit_mb")
    memory_limit_mb: PositiveInt = 2048
    workers: int = Field(0, ge=0, le=64, description="DataLoader worker processes, started "
                         "each epoch: worth it when per-sample work (image augmentation) "
                         "outweighs their start-up")
    prefetch: PositiveInt = Field(2, description="batches each worker prepares ahead")
    shuffle_buffer: int = Field(10_000, ge=0, description="samples pooled and permuted "
                                "(records are also drawn from a buffer of 8); 0: file order")
    pin_memory: Literal["auto"] | bool = Field("auto", description="auto: on when on CUDA")
    resampled: bool = Field(
        False, description="draw shards with replacement so every rank gets the same number "
        "of batches per epoch (distributed training)")
    cache_dir: str | None = Field(None, description="where shards from remote URLs are kept "
                                  "(default ~/.cache/trainflow/shards)")


class TrainSpec(Section):
    optimizer: SGDParams | AdamParams = Field(
        default_factory=lambda: AdamParams(type="adamw"), discriminator="type")
    lr: float = Field(1e-3, gt=0, le=10)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: PositiveInt = 64
    epochs: PositiveInt = 20
    class_weights: Literal["none", "balanced"] = Field(
        "none", description="balanced: weight each class's loss by n / (classes * count)")
    sampler: Literal["shuffle", "weighted"] = Field(
        "shuffle", description="weighted: draw rows with replacement, classes equally likely")
    augment: AugmentSpec | None = None
    early_stopping: EarlyStopping | None = None
    checkpoint_every: int = Field(1, ge=0, description="Write last.pt every N epochs (0: at end)")
    checkpoint_interval_s: float = Field(
        30.0, ge=0, description="...but at most once per this many seconds (0: no limit)")
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    loader: LoaderSpec = Field(default_factory=LoaderSpec)
    on_corrupt: Literal["error", "skip"] = Field(
        "error", description="a training shard that fails its sha256: stop, or skip it and "
        "report the samples lost")
