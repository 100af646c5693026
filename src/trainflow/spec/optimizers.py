"""Optimizers (`train.optimizer`), one params model per `type`; builders in engine/optim.py."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

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


class RMSpropParams(Section):
    type: Literal["rmsprop"]
    alpha: float = Field(0.99, gt=0, lt=1)
    momentum: float = Field(0.0, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    centered: bool = False


class AdagradParams(Section):
    type: Literal["adagrad"]
    lr_decay: float = Field(0.0, ge=0)
    eps: float = Field(1e-10, gt=0)


class AdadeltaParams(Section):
    type: Literal["adadelta"]
    rho: float = Field(0.9, gt=0, lt=1)
    eps: float = Field(1e-6, gt=0)
