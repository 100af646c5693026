"""Build torch learning-rate schedulers from `train.schedule`, stepped per optimizer step."""

from __future__ import annotations

import math

import torch
from torch.optim import lr_scheduler as lrs

from trainflow.errors import TrainflowError
from trainflow.spec import schedule as s


def warmup_steps(spec: s.Warmup | None, total_steps: int) -> int:
    if spec is None:
        return 0
    return spec.steps if spec.steps is not None else max(1, round(spec.fraction * total_steps))


def _main(spec, optimizer: torch.optim.Optimizer, lr: float, steps_per_epoch: int,
          steps: int) -> lrs.LRScheduler:
    """The schedule after warmup, over `steps` optimizer steps."""
    if isinstance(spec, s.StepSchedule):
        return lrs.StepLR(optimizer, spec.step_epochs * steps_per_epoch, spec.gamma)
    if isinstance(spec, s.MultiStepSchedule):
        return lrs.MultiStepLR(optimizer, [m * steps_per_epoch for m in spec.milestones],
                               spec.gamma)
    if isinstance(spec, s.ExponentialSchedule):  # the per-epoch factor spread over its steps
        return lrs.ExponentialLR(optimizer, spec.gamma ** (1 / steps_per_epoch))
    if isinstance(spec, s.CosineSchedule):
        return lrs.CosineAnnealingLR(optimizer, max(steps, 1), spec.min_lr)
    if isinstance(spec, s.CosineRestartsSchedule):
        return lrs.CosineAnnealingWarmRestarts(optimizer, spec.period_epochs * steps_per_epoch,
                                               spec.period_mult, spec.min_lr)
    if isinstance(spec, s.CyclicSchedule):
        return lrs.CyclicLR(optimizer, spec.base_lr, lr, spec.half_cycle_steps,
                            mode=spec.mode, cycle_momentum=False)
    if isinstance(spec, s.OneCycleSchedule):
        return lrs.OneCycleLR(optimizer, lr, total_steps=max(steps, 1), pct_start=spec.pct_start,
                              div_factor=spec.div_factor, final_div_factor=spec.final_div_factor,
                              cycle_momentum=False)
    if isinstance(spec, s.PolynomialSchedule):
        return lrs.PolynomialLR(optimizer, max(steps, 1), spec.power)
    raise TrainflowError(f"unknown schedule {spec!r}")


def build(spec, optimizer: torch.optim.Optimizer, lr: float, steps_per_epoch: int,
          total_steps: int) -> tuple[lrs.LRScheduler | None, lrs.ReduceLROnPlateau | None]:
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
            f"{total_steps} ({steps_per_epoch} per epoch): shorten the warmup or train longer")
    plateau = None
    if isinstance(spec, s.PlateauSchedule):
        plateau = lrs.ReduceLROnPlateau(optimizer, "min" if spec.monitor == "val_loss" else "max",
                                        spec.factor, spec.patience, min_lr=spec.min_lr)
    if not warm:
        return (None if plateau else _main(spec, optimizer, lr, steps_per_epoch, total_steps),
                plateau)
    start = spec.warmup.start_factor
    if spec.warmup.mode == "linear":
        ramp = lrs.LinearLR(optimizer, start, 1.0, total_iters=warm)
    else:  # geometric: start * (1/start) ** (step / warm)
        ramp = lrs.LambdaLR(optimizer, lambda step: start ** max(0.0, 1 - step / warm))
    if plateau:
        return ramp, plateau  # the ramp stops changing after `warm` steps (factor 1)
    main = _main(spec, optimizer, lr, steps_per_epoch, total_steps - warm)
    return lrs.SequentialLR(optimizer, [ramp, main], milestones=[warm]), None


def steps_per_epoch(samples: int, batch_size: int, accumulate: int) -> int:
    return max(1, math.ceil(math.ceil(samples / batch_size) / accumulate))
