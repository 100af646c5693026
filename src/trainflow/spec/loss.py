"""train.loss: the loss a model trains with (a regression's: mse, huber, l1)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from trainflow.spec.base import Section


class LossSpec(Section):
    """The training loss (regression): mse, huber or l1 on the scaled target
    (train.target_scaling); a classifier trains with cross_entropy, as by default."""

    type: Literal["cross_entropy", "mse", "huber", "l1"]
    delta: float | None = Field(
        None,
        gt=0,
        description="huber: where the loss turns from squared to linear, in scaled target "
        "units (default 1.0)",
    )

    @model_validator(mode="after")
    def _delta_is_huber_only(self):
        if self.delta is not None and self.type != "huber":
            raise ValueError(f"loss.delta is huber's; a {self.type} loss has none: remove delta")
        return self
