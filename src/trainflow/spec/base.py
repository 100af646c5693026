"""The base of every spec model: unknown keys are errors, values are validated on assignment."""

from pydantic import BaseModel, ConfigDict

# Bounds on values whose cost grows with them, so an absurd one (`epochs: 1.0e12`) is refused
# while the spec is validated instead of spinning once work has started.
MAX_EPOCHS = 100_000
MAX_STEPS = 10**9
MAX_BATCH = 2**20


class Section(BaseModel):
    # No inf or nan anywhere: `weight_decay: .inf` or `timeout_s: .nan` passes a `ge=0` bound
    # (or no bound) and only fails, or never ends, once work has started.
    # defer_build: a model's validator is built when first used, not when its module is
    # imported, so `trainflow validate` builds the models of one spec once (issue 15).
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, frozen=True, allow_inf_nan=False, defer_build=True
    )
