"""Transfer learning: warm start from pretrained weights, a new head, freezing and a schedule
of unfreezing (fine-tuning)."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import torch
from torch import nn

from trainflow.errors import TrainflowError


def read_state_dict(path: str | Path, where: str) -> dict[str, torch.Tensor]:
    """Weights from a trainflow model folder (its best.pt), a trainflow checkpoint or a plain
    state dict file, loaded with weights_only=True."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise TrainflowError(f"{where}: no such file: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for damaged or unsafe files
        raise TrainflowError(f"{where}: cannot load {path}: {exc}") from None
    state = payload.get("model", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TrainflowError(
            f"{where}: {path} holds neither a trainflow checkpoint nor a state "
            "dict (a mapping of parameter names to tensors)"
        )
    return state


def head_keys(model: nn.Module) -> set[str]:
    """The state-dict keys of the model's output layer (its last Linear)."""
    name = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    return {f"{name}.{k}" for k in dict(model.get_submodule(name).state_dict())}


def warm_start(
    model: nn.Module, state: dict[str, torch.Tensor], replace_head: bool, where: str
) -> None:
    """Load pretrained weights; with `replace_head`, the output layer keeps its fresh
    weights (a new number of classes). Any other difference is an error listing the missing,
    unexpected and mis-shaped keys."""
    own = model.state_dict()
    skip = head_keys(model) if replace_head else set()
    state = {k: v for k, v in state.items() if k not in skip}
    missing = sorted(k for k in own if k not in state and k not in skip)
    unexpected = sorted(k for k in state if k not in own)
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    )
    if missing or unexpected or shapes:
        problems = [
            f"{label} ({len(keys)}): {', '.join(keys[:12])}" + (" ..." if len(keys) > 12 else "")
            for label, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shapes differ (pretrained vs model)", shapes),
            )
            if keys
        ]
        hint = (
            "; if only the output layer differs (a new number of classes), set replace_head: true"
            if shapes and not replace_head
            else ""
        )
        raise TrainflowError(
            f"{where}: the pretrained weights do not fit the model: " + "; ".join(problems) + hint
        )
    model.load_state_dict({**own, **state})


def frozen_at(epoch: int, freeze: list[str], unfreeze: dict[int, list[str]]) -> list[str]:
    """The name globs frozen during `epoch`: `freeze` minus what `unfreeze` has released by
    then (epoch -> globs released from that epoch on)."""
    released = {g for at, globs in unfreeze.items() if at <= epoch for g in globs}
    return [g for g in freeze if g not in released]


def apply_freeze(model: nn.Module, globs: list[str]) -> int:
    """Set requires_grad by the globs; return how many parameters are frozen."""
    frozen = 0
    for name, param in model.named_parameters():
        hold = any(fnmatch.fnmatch(name, g) for g in globs)
        param.requires_grad_(not hold)
        frozen += hold
    return frozen


def check_globs(model: nn.Module, freeze: list[str], unfreeze: dict[int, list[str]]) -> None:
    names = [n for n, _ in model.named_parameters()]
    unmatched = [g for g in freeze if not any(fnmatch.fnmatch(n, g) for n in names)]
    if unmatched:
        raise TrainflowError(
            f"train.freeze: {unmatched} match no parameter; the model's "
            f"parameters are {names[:16]}" + (" ..." if len(names) > 16 else "")
        )
    stray = sorted({g for globs in unfreeze.values() for g in globs} - set(freeze))
    if stray:
        raise TrainflowError(f"train.unfreeze: {stray} are not in train.freeze {freeze}")


def hold_frozen_norms(model: nn.Module) -> None:
    """Batch-norm layers whose parameters are all frozen keep their running statistics too
    (eval mode while training), so a frozen layer computes what it computed before."""
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if (
            isinstance(module, nn.modules.batchnorm._BatchNorm)
            and params
            and not any(p.requires_grad for p in params)
        ):
            module.eval()
