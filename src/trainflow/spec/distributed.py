"""The train.distributed section (data-parallel training, DDP) and what cannot run under it."""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, model_validator

from trainflow.spec.base import Section


class Distributed(Section):
    """Data-parallel training (DDP): the train task starts `nproc_per_node` ranks with
    torchrun; each takes batch_size / nproc_per_node rows of every global batch (the same
    global batch as one process), gradients are averaged across ranks, rank 0 alone writes.
    `nnodes` > 1 with `rdzv_endpoint` joins a multi-node rendezvous (trainflow.engine.ddp)."""

    strategy: Literal["ddp"] = "ddp"
    nproc_per_node: int = Field(2, ge=1, le=1024, description="ranks on this machine")
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="auto: nccl on CUDA, gloo on CPU"
    )
    nnodes: int = Field(1, ge=1, le=4096, description="machines joining the rendezvous")
    rdzv_endpoint: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9.\-]*:[0-9]{1,5}$",
        description="host:port of the rendezvous (c10d) all nodes join; needed when nnodes > 1",
    )

    @model_validator(mode="after")
    def _rendezvous(self):
        if self.nnodes > 1 and self.rdzv_endpoint is None:
            raise ValueError(
                f"distributed.nnodes is {self.nnodes}: give rdzv_endpoint (host:port) for "
                "the nodes to meet at"
            )
        return self  # (the CUDA device count is checked at launch: the spec loads no torch)


# Knobs that cannot hold under DDP: each rank would decide them on its own rows.
DDP_REFUSED = {
    "auto_batch": "each rank would measure its own batch size",
    "batch_ramp": "the per-rank share of a ramped batch changes each epoch",
    "sampler": "weighted draws rows with replacement from the whole set on one process",
}


def ddp_refusal(train: Any) -> str | None:
    """Why this train section cannot run under train.distributed, or None."""
    d = train.distributed
    if d is None:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if (
        d.nnodes == 1
        and (train.device == "cpu" or d.backend == "gloo")
        and d.nproc_per_node > (cores or 1)
    ):
        return (
            f"distributed.nproc_per_node ({d.nproc_per_node}) is more than this machine's "
            f"{cores} usable CPU cores: lower it to at most {cores}"
        )
    if train.batch_size % d.nproc_per_node:
        return (
            f"batch_size ({train.batch_size}) is the global batch: nproc_per_node "
            f"({d.nproc_per_node}) must divide it; pick a multiple of {d.nproc_per_node}"
        )
    for knob, why in DDP_REFUSED.items():
        value = getattr(train, knob)
        if value and value != "shuffle":
            return f"train.{knob} cannot run under distributed (ddp): {why}; drop it"
    return None
