"""Build torch learning-rate schedulers from `train.schedule`, stepped per optimizer step."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import lr_scheduler as lrs

from trainflow import registry
from trainflow.errors import TrainflowError
from trainflow.spec import schedule as s


def warmup_steps(spec: s.Warmup | None, total_steps: int) -> int:
    if spec is None:
        return 0
    if spec.steps is not None:
        return spec.steps
    assert spec.fraction is not None  # Warmup's validator: steps or fraction
    return max(1, round(spec.fraction * total_steps))


# One builder per `train.schedule.type` (named in trainflow.registry.SCHEDULES), all called
# alike: (params, optimizer, peak lr, optimizer steps per epoch, steps it runs over).
Builder = Callable[[Any, torch.optim.Optimizer, float, int, int], Any]


def step_lr(spec: s.StepSchedule, optimizer, lr, per_epoch, steps) -> lrs.LRScheduler:
    return lrs.StepLR(optimizer, spec.step_epochs * per_epoch, spec.gamma)


def multi_step(spec: s.MultiStepSchedule, optimizer, lr, per_epoch, steps) -> lrs.LRScheduler:
    return lrs.MultiStepLR(optimizer, [m * per_epoch for m in spec.milestones], spec.gamma)


def exponential(spec: s.ExponentialSchedule, optimizer, lr, per_epoch, steps) -> lrs.LRScheduler:
    return lrs.ExponentialLR(optimizer, spec.gamma ** (1 / per_epoch))  # per epoch, spread


def cosine(spec: s.CosineSchedule, optimizer, lr, per_epoch, steps) -> lrs.LRScheduler:
    return lrs.CosineAnnealingLR(optimizer, max(steps, 1), spec.min_lr)


def cosine_restarts(
    spec: s.CosineRestartsSchedule, optimizer, lr, per_epoch, steps
) -> lrs.LRScheduler:
    return lrs.CosineAnnealingWarmRestarts(
        optimizer, spec.period_epochs * per_epoch, spec.period_mult, spec.min_lr
    )


def cyclic(spec: s.CyclicSchedule, optimizer, lr, per_epoch, steps) -> lrs.LRScheduler:
    return lrs.CyclicLR(
        optimizer, spec.base_lr, lr, spec.half_cycle_steps, mode=spec.mode, cycle_momentum=False
    )


def one_cycle(spec: s.OneCycleSchedule, optimizer, lr, per_epoch, steps) -> lrs.LRScheduler:
    return lrs.OneCycleLR(
        optimizer,
        lr,
        total_steps=max(steps, 1),
        pct_start=spec.pct_start,
        div_factor=spec.div_factor,
        final_div_factor=spec.final_div_factor,
        cycle_momentum=False,
    )


def polynomial(spec: s.PolynomialSchedule, optimizer, lr, per_epoch, steps) -> lrs.LRScheduler:
    return lrs.PolynomialLR(optimizer, max(steps, 1), spec.power)


def plateau(spec: s.PlateauSchedule, optimizer, lr, per_epoch, steps) -> lrs.ReduceLROnPlateau:
    """Stepped once per epoch on the monitored value (`per_epoch` on its params)."""
    return lrs.ReduceLROnPlateau(
        optimizer,
        "min" if spec.monitor == "val_loss" else "max",
        spec.factor,
        spec.patience,
        min_lr=spec.min_lr,
    )


def build(
    spec, optimizer: torch.optim.Optimizer, lr: float, steps_per_epoch: int, total_steps: int
) -> tuple[lrs.LRScheduler | None, lrs.ReduceLROnPlateau | None]:
    """(per-step scheduler, per-epoch plateau scheduler); either may be None.

    Warmup multiplies the learning rate from start_factor up to 1 over its steps, then hands
    over to the declared schedule, which runs over the remaining steps.
    """
    if spec is None:
        return None, None
    warm = warmup_steps(spec.warmup, total_steps)
    if warm >= total_steps:
        raise TrainflowError(
            f"train.schedule.warmup lasts {warm} optimizer steps but training has only "
            f"{total_steps} ({steps_per_epoch} per epoch): shorten the warmup or train longer"
        )
    build_main: Builder = registry.SCHEDULES[spec.type].impl
    per_epoch = (
        build_main(spec, optimizer, lr, steps_per_epoch, total_steps) if spec.per_epoch else None
    )
    if not warm:
        return (
            None if per_epoch else build_main(spec, optimizer, lr, steps_per_epoch, total_steps),
            per_epoch,
        )
    start = spec.warmup.start_factor
    ramp: lrs.LRScheduler
    if spec.warmup.mode == "linear":
        ramp = lrs.LinearLR(optimizer, start, 1.0, total_iters=warm)
    else:  # geometric: start * (1/start) ** (step / warm)
        ramp = lrs.LambdaLR(optimizer, lambda step: start ** max(0.0, 1 - step / warm))
    if per_epoch:
        return ramp, per_epoch  # the ramp stops changing after `warm` steps (factor 1)
    main = build_main(spec, optimizer, lr, steps_per_epoch, total_steps - warm)
    return lrs.SequentialLR(optimizer, [ramp, main], milestones=[warm]), None


def steps_per_epoch(samples: int, batch_size: int, accumulate: int) -> int:
    return max(1, math.ceil(math.ceil(samples / batch_size) / accumulate))
