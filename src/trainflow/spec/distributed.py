"""The train.distributed section (training across processes: ddp, fsdp, pipeline,
parameter_server) and what cannot run under it."""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, model_validator

from trainflow.spec.base import Section


class Distributed(Section):
    """Training across processes: the train task starts `nproc_per_node` ranks with
    torchrun and waits for them; rank 0 alone writes. `nnodes` > 1 with `rdzv_endpoint`
    joins a multi-node rendezvous (trainflow.engine.ddp).

    - ddp: each rank takes batch_size / nproc_per_node rows of every global batch (the
      same global batch as one process); gradients are averaged across ranks. Exact
      resume needs the same world size.
    - fsdp: the same batches, with parameters, gradients and optimizer state sharded
      across the ranks (torch.distributed.fsdp.fully_shard); checkpoints through
      torch.distributed.checkpoint, which a run on another world size resumes (it
      reshards).
    - pipeline: the model cut into one stage per rank (torch.distributed.pipelining), each
      global batch run as `microbatches` micro-batches.
    - parameter_server: rank 0 holds the parameters and applies the optimizer; the other
      ranks compute gradients on their shares (c10d point-to-point tensors), in step (`sync`)
      or up to `staleness` updates behind (`async`)."""

    strategy: Literal["ddp", "fsdp", "pipeline", "parameter_server"] = "ddp"
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
    microbatches: int = Field(
        4, ge=1, le=4096, description="pipeline: micro-batches each global batch is cut into"
    )
    schedule: Literal["gpipe", "1f1b"] = Field(
        "gpipe", description="pipeline: the micro-batch schedule (torch.distributed.pipelining)"
    )
    mode: Literal["sync", "async"] = Field(
        "sync",
        description="parameter_server: sync (the server waits for every worker's gradient "
        "each step) or async (a worker goes on with weights up to `staleness` updates old)",
    )
    staleness: int = Field(
        0, ge=0, le=1024, description="parameter_server async: the most updates a gradient may lag"
    )

    @model_validator(mode="after")
    def _rendezvous(self):
        if self.nnodes > 1 and self.rdzv_endpoint is None:
            raise ValueError(
                f"distributed.nnodes is {self.nnodes}: give rdzv_endpoint (host:port) for "
                "the nodes to meet at"
            )
        return self  # (the CUDA device count is checked at launch: the spec loads no torch)

    @model_validator(mode="after")
    def _strategy_knobs(self):
        own = {
            "microbatches": "pipeline",
            "schedule": "pipeline",
            "mode": "parameter_server",
            "staleness": "parameter_server",
        }
        for knob, strategy in own.items():
            moved = getattr(self, knob) != type(self).model_fields[knob].default
            if moved and self.strategy != strategy:  # (a dumped default round-trips)
                raise ValueError(
                    f"distributed.{knob} is a knob of strategy {strategy}, and strategy is "
                    f"{self.strategy}: drop {knob} or set strategy: {strategy}"
                )
        if self.strategy == "parameter_server" and self.nproc_per_node * self.nnodes < 2:
            raise ValueError(
                "strategy parameter_server needs at least 2 ranks (rank 0 is the server, the "
                "others compute gradients): set nproc_per_node to 2 or more"
            )
        if self.staleness and self.mode != "async":
            raise ValueError(
                f"distributed.staleness ({self.staleness}) bounds async updates, and mode is "
                "sync: set mode: async or drop staleness"
            )
        return self

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes


# Strategies the spec names whose engines are still being built (removed one by one).
NOT_BUILT: set[str] = set()

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
    if d.strategy in NOT_BUILT:
        return f"distributed.strategy {d.strategy} is not built yet: use strategy: ddp"
    if d.strategy == "parameter_server":  # (its own rules: the server holds no share)
        return ps_refusal(train)
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
    if d.strategy == "pipeline":  # (the batch is not cut across the ranks, but in time)
        return pipeline_refusal(train)
    if train.batch_size % d.nproc_per_node:
        return (
            f"batch_size ({train.batch_size}) is the global batch: nproc_per_node "
            f"({d.nproc_per_node}) must divide it; pick a multiple of {d.nproc_per_node}"
        )
    for knob, why in DDP_REFUSED.items():
        value = getattr(train, knob)
        if value and value != "shuffle":
            return f"train.{knob} cannot run under distributed ({d.strategy}): {why}; drop it"
    return fsdp_refusal(train) if d.strategy == "fsdp" else None


# Knobs that cannot hold under parameter_server: the trainers compute gradients of single
# batches in a loop of their own; the server steps on them and keeps nothing else.
PS_REFUSED = {
    "accumulate": "the server steps on each global batch's gradient; raise batch_size instead",
    "ema": "the server keeps no running average of the weights",
    "swa": "the server keeps no running average of the weights",
    "distill": "the trainers load no teacher",
    "compile": "the trainers run their batches eagerly",
    "deterministic": "the trainers run outside the deterministic block",
    "debug.detect_anomaly": "the trainers' backward runs outside anomaly detection",
    "checkpoint_every_steps": "the server checkpoints between epochs (a resume starts an epoch)",
    "auto_batch": "the trainers would each measure a batch size",
    "sampler": "weighted draws rows with replacement from the whole set on one process",
    "loader.mode": "every rank reads the training split into memory (loader.mode: memory)",
    "device": "the server and trainers exchange CPU tensors (device: cpu or auto)",
}


def ps_refusal(train: Any) -> str | None:
    """Why this train section cannot run under strategy parameter_server, or None. Its rank
    0 only steps and validates while the trainers compute, so the trainers alone are counted
    against the cores (1 server + 2 trainers on 2 cores)."""
    d = train.distributed
    if d.nnodes > 1:  # (gloo's point-to-point would carry it, but no test covers more nodes)
        return (
            f"distributed.nnodes ({d.nnodes}): strategy parameter_server runs on one machine, "
            "as it is tested; set nnodes: 1, or use strategy: ddp"
        )
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if d.nproc_per_node - 1 > (cores or 1):
        return (
            f"distributed.nproc_per_node ({d.nproc_per_node}) gives {d.nproc_per_node - 1} "
            f"trainers (rank 0 is the server), more than this machine's {cores} usable CPU "
            f"cores: set nproc_per_node to at most {(cores or 1) + 1}"
        )
    moved = {
        "accumulate": train.accumulate > 1,
        "ema": train.ema is not None,
        "swa": train.swa is not None,
        "distill": train.distill is not None,
        "compile": train.compile,
        "deterministic": train.deterministic,
        "debug.detect_anomaly": train.debug.detect_anomaly,
        "checkpoint_every_steps": train.checkpoint_every_steps > 0,
        "auto_batch": train.auto_batch is not None,
        "sampler": train.sampler == "weighted",
        "loader.mode": train.loader.mode == "stream",
        "device": train.device in ("cuda", "mps"),
    }
    for knob, why in PS_REFUSED.items():
        if moved[knob]:
            return f"train.{knob} cannot run under distributed (parameter_server): {why}; drop it"
    return None


# Knobs that cannot hold under pipeline: each stage holds and steps only its own parameters,
# and sees a batch one micro-batch at a time.
PIPELINE_REFUSED = {
    "accumulate": "each step already accumulates its micro-batches; raise batch_size instead",
    "grad_clip": "clipping by norm needs the norm over every stage's gradients",
    "l1": "the penalty sums over every stage's weights",
    "precision": "the stages exchange fp32 activations (use fp32 or auto)",
    "compile": "torch.compile would wrap the whole model, not a stage",
    "ema": "the average would span every stage's weights",
    "swa": "the average would span every stage's weights",
    "adversarial": "attacks need the gradient with respect to the input through every stage",
    "distill": "the teacher's soft targets need the student's whole output per batch",
    "tbptt": "truncated backpropagation through time is for recurrent models",
    "freeze": "parameter globs name layers of the whole model, not of a stage",
    "task_weights": "multi-task heads branch off the trunk, not a plain sequence",
    "auto_batch": "the stages' buffers are shaped by a fixed batch size",
    "batch_ramp": "the stages' buffers are shaped by a fixed batch size",
    "checkpoint_every_steps": "a pipeline run checkpoints per epoch and does not resume",
    "log.every_steps": "the step's loss is on the last stage, the log on rank 0",
    "debug.layer_norms": "the model's layers are spread over the ranks",
    "augment.mixup": "mixup blends targets, and the last stage alone holds them",
}


def pipeline_refusal(train: Any) -> str | None:
    """Why this train section cannot run under strategy pipeline, or None."""
    d = train.distributed
    if d.world_size < 2:
        return (
            "strategy pipeline cuts the model into one stage per rank: give it at least 2 "
            "ranks (distributed.nproc_per_node: 2)"
        )
    if train.batch_size % d.microbatches:
        return (
            f"batch_size ({train.batch_size}) is cut into distributed.microbatches "
            f"({d.microbatches}) equal micro-batches: pick a batch_size that is a multiple "
            f"of {d.microbatches}, or a microbatches count that divides {train.batch_size}"
        )
    if d.schedule == "1f1b" and d.microbatches < d.world_size:
        return (
            f"distributed.schedule 1f1b needs at least one micro-batch per stage: "
            f"microbatches ({d.microbatches}) is less than the {d.world_size} stages; raise "
            f"microbatches to {d.world_size} or more, or use schedule: gpipe"
        )
    moved = {
        "accumulate": train.accumulate > 1,
        "grad_clip": train.grad_clip is not None,
        "l1": train.l1 > 0,
        "precision": train.precision in ("bf16", "fp16"),
        "compile": train.compile,
        "ema": train.ema is not None,
        "swa": train.swa is not None,
        "adversarial": train.adversarial is not None,
        "distill": train.distill is not None,
        "tbptt": train.tbptt is not None,
        "freeze": bool(train.freeze or train.unfreeze),
        "task_weights": bool(train.task_weights),
        "auto_batch": train.auto_batch is not None,
        "batch_ramp": train.batch_ramp is not None,
        "checkpoint_every_steps": train.checkpoint_every_steps > 0,
        "log.every_steps": train.log.every_steps > 0,
        "debug.layer_norms": train.debug.layer_norms or train.debug.dead_units,
        "augment.mixup": bool(train.augment and train.augment.mixup),
    }
    for knob, why in PIPELINE_REFUSED.items():
        if moved[knob]:
            return f"train.{knob} cannot run under distributed (pipeline): {why}; drop it"
    return None


# Knobs that cannot hold under fsdp: each rank holds a shard of every parameter (a DTensor),
# never the whole model, between its forward and backward passes.
FSDP_REFUSED = {
    "swa": "the running average would copy the sharded model (FSDP2 modules cannot be copied)",
    "ema": "the running average would copy the sharded model (FSDP2 modules cannot be copied)",
    "l1": "the penalty would add sharded weights to the plain loss",
    "precision": "fp16's grad scaler would unscale each rank's shard on its own (bf16 or fp32)",
    "compile": "torch.compile would trace the sharding hooks of the whole model at once",
    "freeze": "FSDP fixes which parameters train when it shards the model",
    "adversarial": "the attack's extra backward passes would reduce the shards' gradients",
    "debug.layer_norms": "each rank sees the gradients and weights of its shards only",
}


def fsdp_refusal(train: Any) -> str | None:
    """Why this train section cannot run under strategy fsdp, or None."""
    moved = {
        "swa": train.swa is not None,
        "ema": train.ema is not None,
        "l1": train.l1 > 0,
        "precision": train.precision == "fp16",
        "compile": train.compile,
        "freeze": bool(train.freeze or train.unfreeze),
        "adversarial": train.adversarial is not None,
        "debug.layer_norms": train.debug.layer_norms or train.debug.dead_units,
    }
    for knob, why in FSDP_REFUSED.items():
        if moved[knob]:
            return f"train.{knob} cannot run under distributed (fsdp): {why}; drop it"
    return None
