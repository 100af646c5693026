"""Sharded data parallel (train.distributed: fsdp): the model's parameters, gradients and
optimizer state split across the ranks by torch.distributed.fsdp.fully_shard (FSDP2), and
its checkpoints written by torch.distributed.checkpoint (DCP), which reshards them for a run
on another world size.

It rides the DDP launcher and loop (engine.ddp): the same global batch cut into the same
per-rank parts. A checkpoint is a folder, `last.dcp`: each rank's shards of the model and
optimizer (DCP's files) and rank 0's `state.pt` with every other piece of the TrainingState
(torch.save, weights_only). It is written under `last.dcp.partial` and renamed into place
once complete, so a half-written one is never read. At the end rank 0 writes last.pt and
best.pt as plain, whole state dicts: packages, export and predict read them as any other.
"""

from __future__ import annotations

import os
import pickle  # (a restricted unpickler for DCP's metadata only: MetadataUnpickler)
import shutil
from collections.abc import Callable
from pathlib import Path, PosixPath
from typing import Any, cast

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import FileSystemReader, _StorageInfo
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from trainflow.engine import checkpoint
from trainflow.errors import TrainflowError

# Below a few hundred parameters a rank, each step's all-gathers cost more than the memory
# sharding saves: such a model is "smaller than one shard", and ddp is the strategy for it.
MIN_SHARD = 256


def check_shardable(net: nn.Module, world_size: int) -> None:
    """Refuse, before any rank starts, a model fsdp cannot take: one smaller than a shard on
    every rank, or one whose batch norm keeps running statistics (each rank would keep its
    own from its part of the batch: FSDP shards parameters, not buffers)."""
    count = sum(p.numel() for p in net.parameters())
    if count < MIN_SHARD * world_size:
        raise TrainflowError(
            f"train.distributed.strategy fsdp shards the model's {count:,} parameters across "
            f"{world_size} rank(s): {count // world_size:,} a rank, smaller than one shard of "
            f"{MIN_SHARD} (sharding so small a model costs more than it saves). Use strategy: "
            f"ddp, fewer ranks (at most {max(count // MIN_SHARD, 1)}), or a larger model"
        )
    norms = [name for name, m in net.named_modules() if getattr(m, "track_running_stats", False)]
    if norms:
        raise TrainflowError(
            f"train.distributed.strategy fsdp cannot train a model with batch norm ({norms[0]}): "
            "each rank would keep its own running statistics; use strategy: ddp (which "
            "broadcasts them from rank 0)"
        )


def shard(model: nn.Module, device: torch.device, share: Callable[[], float]) -> None:
    """fully_shard each submodule that holds parameters of its own, bottom-up, then the root
    (in place: the parameters become DTensors sharded on dim 0, so the optimizer is built
    after). `share()` is this rank's part of the running batch times the world size: FSDP
    averages the ranks' gradients, and scaling each by it makes an uneven last batch's
    gradient the one-process mean too (as engine.ddp.weighted_sum does for DDP)."""
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for name, module in reversed(list(model.named_modules())):  # (descendants first)
        if name and any(True for _ in module.parameters(recurse=False)):
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model.register_forward_hook(lambda _m, _i, out: scaled(out, share()))
    model.register_load_state_dict_pre_hook(to_shards)


class _ScaleGrad(torch.autograd.Function):
    """The identity forward; the gradient times `factor` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


def scaled(out: Any, factor: float) -> Any:
    """The model's outputs (a tensor, or tuples and dicts of them) with gradients scaled."""
    if factor == 1.0 or not torch.is_grad_enabled():
        return out
    if isinstance(out, torch.Tensor):
        return _ScaleGrad.apply(out, factor) if out.requires_grad else out
    if isinstance(out, (tuple, list)):
        return type(out)(scaled(o, factor) for o in out)
    if isinstance(out, dict):
        return {k: scaled(v, factor) for k, v in out.items()}
    return out


def to_shards(module: nn.Module, state_dict: dict, prefix: str, *_args) -> None:
    """load_state_dict of a whole (plain) state dict into the sharded model: each rank
    keeps its own shard of each tensor (engine.training restores the best weights so)."""
    for name, current in module.state_dict().items():
        given = state_dict.get(prefix + name)
        if isinstance(current, DTensor) and given is not None and not isinstance(given, DTensor):
            state_dict[prefix + name] = distribute_tensor(
                given.to(current.device),
                current.device_mesh,
                current.placements,
                src_data_rank=None,
            )


def full_weights(model: nn.Module) -> dict:
    """The whole model's weights on CPU on every rank (gathered from the shards)."""
    whole = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    return {k: cast(torch.Tensor, v).detach().cpu().clone() for k, v in whole.items()}


def gathered(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The whole model and optimizer state as plain CPU tensors on rank 0 ({} elsewhere), for
    the run's final last.pt (the optimizer's state keyed by parameter names)."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights, optim = get_state_dict(model, optimizer, options=options)
    return {"model": weights, "optimizer": optim} if dist.get_rank() == 0 else {}


def save(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, rest: dict) -> None:
    """Write the checkpoint folder `path` (every rank calls it; rank 0 writes `rest`, the
    state's other pieces, and publishes the folder)."""
    partial, writes = path.with_name(path.name + ".partial"), dist.get_rank() == 0
    if writes and partial.exists():  # a write a crash interrupted
        shutil.rmtree(partial)
    dist.barrier()  # (no rank writes into the folder before it is cleared)
    weights, optim = get_state_dict(model, optimizer)
    dcp.save({"model": weights, "optimizer": optim["state"]}, checkpoint_id=partial)
    if writes:
        groups = {"param_groups": optim["param_groups"]}
        checkpoint.save(partial / "state.pt", {**rest, "model": {}, "optimizer": {}, **groups})
        publish(partial, path)


def publish(partial: Path, path: Path) -> None:
    """Rename the complete folder into place (the old one is kept as `.prev` until then: a
    crash between the renames leaves that one for resume_point)."""
    previous = path.with_name(path.name + ".prev")
    if previous.exists():
        shutil.rmtree(previous)
    if path.exists():
        os.replace(path, previous)
    os.replace(partial, path)
    shutil.rmtree(previous, ignore_errors=True)


def resume_point(folder: Path) -> dict | None:
    """The state of the newest complete checkpoint folder in `folder` (any world size), with
    its path under "sharded" for `load`; None to train from the start."""
    for candidate in (folder / "last.dcp", folder / "last.dcp.prev"):
        if (candidate / "state.pt").is_file() and (candidate / ".metadata").is_file():
            return {**checkpoint.load(candidate / "state.pt"), "sharded": str(candidate)}
    return None


def load(saved: dict, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """The model's and optimizer's shards from saved["sharded"] (DCP reads what this rank
    holds now, from however many ranks wrote it)."""
    weights, optim = get_state_dict(model, optimizer)  # (fills a fresh optimizer's state)
    target: dict[str, Any] = {"model": weights, "optimizer": optim["state"]}
    dcp.load(target, storage_reader=SafeReader(saved["sharded"]), planner=SafePlanner())
    groups = saved["param_groups"]
    set_state_dict(
        model,
        optimizer,
        model_state_dict=target["model"],
        optim_state_dict={"state": target["optimizer"], "param_groups": groups},
    )


# DCP's reader unpickles its .metadata file with pickle and torch.loads non-tensor values
# with weights_only=False; these read both safely: the metadata through an unpickler that
# builds DCP's own metadata classes and nothing else (a checkpoint folder is untrusted
# input; torch's weights_only unpickler cannot read the protocol DCP writes), the values
# with weights_only=True.
METADATA_CLASSES = {
    (cls.__module__, cls.__qualname__): cls
    for cls in (
        dcp_metadata.Metadata,
        dcp_metadata.TensorStorageMetadata,
        dcp_metadata.BytesStorageMetadata,
        dcp_metadata.ChunkStorageMetadata,
        dcp_metadata.TensorProperties,
        dcp_metadata.MetadataIndex,
        dcp_metadata.StorageMeta,
        dcp_metadata._MEM_FORMAT_ENCODING,
        _StorageInfo,
        torch.Size,
        PosixPath,
    )
}


class MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in METADATA_CLASSES:
            return METADATA_CLASSES[module, name]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) == ("torch.serialization", "_get_layout"):
            return layout
        raise pickle.UnpicklingError(f"{module}.{name} is not a part of DCP's metadata")


def layout(name: str) -> torch.layout:
    """A tensor layout by its name (torch.serialization._get_layout, for DCP's metadata)."""
    found = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(found, torch.layout):
        raise pickle.UnpicklingError(f"{name} is not a torch layout")
    return found


class SafeReader(FileSystemReader):
    def read_metadata(self, *args: Any, **kwargs: Any) -> dcp_metadata.Metadata:
        path = Path(self.path) / ".metadata"
        try:
            with open(path, "rb") as handle:
                metadata = MetadataUnpickler(handle).load()
        except Exception as exc:  # (a damaged file raises several types)
            raise TrainflowError(f"cannot read the checkpoint {path}: {exc}") from None
        if not isinstance(metadata, dcp_metadata.Metadata):
            raise TrainflowError(f"{path} is not a torch.distributed.checkpoint metadata file")
        metadata.storage_meta = metadata.storage_meta or dcp_metadata.StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafePlanner(DefaultLoadPlanner):
    def load_bytes(self, read_item: Any, value: Any) -> None:
        """A non-tensor value (an optimizer's int or None) through weights_only loading."""
        loaded = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded
