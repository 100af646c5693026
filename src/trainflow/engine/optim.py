"""Optimizer builders, one per `train.optimizer.type`."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from trainflow.spec.train import AdamParams, SGDParams


def sgd(params: Iterable, opt: SGDParams, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=opt.momentum, nesterov=opt.nesterov,
                           weight_decay=weight_decay)


def adam(params: Iterable, opt: AdamParams, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if opt.type == "adamw" else torch.optim.Adam
    return cls(params, lr=lr, betas=opt.betas, eps=opt.eps, weight_decay=weight_decay)
