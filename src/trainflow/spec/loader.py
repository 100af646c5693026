"""train.loader: how training samples reach the loop (trainflow.loader, engine.data)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from trainflow.spec.base import Section


class LoaderSpec(Section):
    """How training samples reach the loop: all in memory (shuffled per epoch), or streamed
    from the shards through a webdataset pipeline with loader workers (validation stays in
    memory). Streamed order is reproducible for a given seed and worker count."""

    mode: Literal["auto", "memory", "stream"] = Field(
        "auto", description="auto: in memory when the training shards fit in memory_limit_mb"
    )
    memory_limit_mb: PositiveInt = 2048
    workers: int = Field(
        0,
        ge=0,
        le=64,
        description="DataLoader worker processes, started "
        "each epoch: worth it when per-sample work (image augmentation) "
        "outweighs their start-up",
    )
    prefetch: int = Field(2, gt=0, le=64, description="batches each worker prepares ahead")
    shuffle_buffer: int = Field(
        10_000,
        ge=0,
        le=10_000_000,
        description="samples pooled and "
        "permuted (records are also drawn from a buffer of 8); 0: file "
        "order",
    )
    pin_memory: Literal["auto"] | bool = Field("auto", description="auto: on when on CUDA")
    resampled: bool = Field(
        False,
        description="draw shards with replacement so every rank gets the same number "
        "of batches per epoch (distributed training)",
    )
    cache_dir: str | None = Field(
        None,
        description="where shards from remote URLs are kept (default ~/.cache/trainflow/shards)",
    )
