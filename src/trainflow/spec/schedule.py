"""Learning-rate schedules (`train.schedule`) and their warmup, by `type`.

Periods are in epochs where people think in epochs (step, multi_step, exponential, cosine
restarts) and are turned into optimizer steps by the engine; every schedule except `plateau`
advances once per optimizer step, so warmup composes with any of them.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from trainflow.spec.base import MAX_EPOCHS, MAX_STEPS, Section


class Warmup(Section):
    """Ramp the learning rate up from `start_factor` x lr over `steps` optimizer steps, or over
    a `fraction` of all training steps; `linear` or `exponential` (geometric) ramp."""

    steps: int | None = Field(None, gt=0, le=MAX_STEPS)
    fraction: float | None = Field(None, gt=0, lt=1)
    mode: Literal["linear", "exponential"] = "linear"
    start_factor: float = Field(0.01, gt=0, le=1)

    @model_validator(mode="after")
    def _one_length(self):
        if (self.steps is None) == (self.fraction is None):
            raise ValueError("give warmup either steps or fraction (of all training steps)")
        return self


class _Schedule(Section):
    # Stepped once per epoch on a monitored value instead of once per optimizer step.
    per_epoch: ClassVar[bool] = False

    warmup: Warmup | None = None


class StepSchedule(_Schedule):
    type: Literal["step"]
    step_epochs: int = Field(10, gt=0, le=MAX_EPOCHS)
    gamma: float = Field(0.1, gt=0, le=1)


class MultiStepSchedule(_Schedule):
    type: Literal["multi_step"]
    milestones: list[Annotated[int, Field(gt=0, le=MAX_EPOCHS)]] = Field(
        min_length=1, max_length=1000, description="epochs"
    )
    gamma: float = Field(0.1, gt=0, le=1)


class ExponentialSchedule(_Schedule):
    type: Literal["exponential"]
    gamma: float = Field(0.95, gt=0, le=1, description="factor per epoch")


class CosineSchedule(_Schedule):
    type: Literal["cosine"]
    min_lr: float = Field(0.0, ge=0)


class CosineRestartsSchedule(_Schedule):
    type: Literal["cosine_restarts"]
    period_epochs: int = Field(10, gt=0, le=MAX_EPOCHS)
    period_mult: int = Field(1, gt=0, le=100)
    min_lr: float = Field(0.0, ge=0)


class CyclicSchedule(_Schedule):
    """Between base_lr and train.lr, up for half_cycle_steps then down."""

    type: Literal["cyclic"]
    base_lr: float = Field(1e-4, gt=0)
    half_cycle_steps: int = Field(200, gt=0, le=MAX_STEPS)
    mode: Literal["triangular", "triangular2", "exp_range"] = "triangular"


class OneCycleSchedule(_Schedule):
    """Up to train.lr over pct_start of training, then down (its own warmup: none allowed)."""

    type: Literal["one_cycle"]
    pct_start: float = Field(0.3, gt=0, lt=1)
    div_factor: float = Field(25.0, gt=1)
    final_div_factor: float = Field(1e4, gt=1)

    @model_validator(mode="after")
    def _no_warmup(self):
        if self.warmup is not None:
            raise ValueError("one_cycle ramps up by itself (pct_start); remove warmup")
        return self


class PolynomialSchedule(_Schedule):
    type: Literal["polynomial"]
    power: float = Field(1.0, gt=0)


class PlateauSchedule(_Schedule):
    """Performance-based: multiply lr by `factor` when `monitor` has not improved for
    `patience` epochs (checked once per epoch, after validation)."""

    per_epoch: ClassVar[bool] = True

    type: Literal["plateau"]
    monitor: Literal["val_loss", "val_accuracy"] = "val_loss"
    factor: float = Field(0.1, gt=0, lt=1)
    patience: int = Field(5, ge=0)
    min_lr: float = Field(0.0, ge=0)
