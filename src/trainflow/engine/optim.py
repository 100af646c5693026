"""Optimizer builders, one per `train.optimizer.type`, over parameter groups."""

from __future__ import annotations

import fnmatch

import torch
from torch import nn

from trainflow.spec.optimizers import (
    AdadeltaParams,
    AdagradParams,
    AdamParams,
    RMSpropParams,
    SGDParams,
)

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm2d)


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    no_decay: list[str],
    lr_multipliers: dict[str, float],
) -> list[dict]:
    """Parameters grouped by (lr, weight decay): biases and norm-layer parameters lose their
    decay when `no_decay` says so; names matching an `lr_multipliers` glob get lr x factor."""
    in_norm = {
        id(p) for m in model.modules() if isinstance(m, NORMS) for p in m.parameters(recurse=False)
    }
    groups: dict[tuple[float, float], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = weight_decay
        if ("bias" in no_decay and name.endswith("bias")) or (
            "norm" in no_decay and id(param) in in_norm
        ):
            decay = 0.0
        factor = next(
            (f for pattern, f in lr_multipliers.items() if fnmatch.fnmatch(name, pattern)), 1.0
        )
        groups.setdefault((lr * factor, decay), []).append(param)
    return [
        {"params": params, "lr": group_lr, "weight_decay": decay}
        for (group_lr, decay), params in groups.items()
    ]


def sgd(groups: list[dict], opt: SGDParams, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=lr, momentum=opt.momentum, nesterov=opt.nesterov)


def adam(groups: list[dict], opt: AdamParams, lr: float) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if opt.type == "adamw" else torch.optim.Adam
    return cls(groups, lr=lr, betas=opt.betas, eps=opt.eps)


def rmsprop(groups: list[dict], opt: RMSpropParams, lr: float) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(
        groups, lr=lr, alpha=opt.alpha, eps=opt.eps, momentum=opt.momentum, centered=opt.centered
    )


def adagrad(groups: list[dict], opt: AdagradParams, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adagrad(groups, lr=lr, lr_decay=opt.lr_decay, eps=opt.eps)


def adadelta(groups: list[dict], opt: AdadeltaParams, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adadelta(groups, lr=lr, rho=opt.rho, eps=opt.eps)
