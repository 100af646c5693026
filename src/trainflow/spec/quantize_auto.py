"""compress.quantize auto's params: the quantization methods to try on this machine, and how
the fastest that passes the accuracy gate is measured and chosen (trainflow.quantize_auto)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, PositiveInt

from trainflow.spec.after_training import DynamicInt8Params, StaticInt8Params
from trainflow.spec.base import Section

Method = Annotated[DynamicInt8Params | StaticInt8Params, Field(discriminator="type")]


def _every_method() -> list:
    return [DynamicInt8Params(type="dynamic_int8"), StaticInt8Params(type="static_int8")]


class AutoQuantizeParams(Section):
    """Try each of `methods` and keep the fastest whose validation metric passes compress.gate
    (with no gate declared: drops at most the gate's default max_drop, 0.01 of accuracy); the
    kept model is packaged exactly as if its type had been declared. A method the model
    cannot take (static_int8 of a recurrent model) is skipped with the reason."""

    type: Literal["auto"]
    methods: list[Method] = Field(
        default_factory=_every_method,
        min_length=1,
        description="the candidates, in order of preference: the first that passes is kept "
        "unless another that passes is faster by `margin`",
    )
    margin: float = Field(
        1.2,
        ge=1.0,
        description="how much faster (CPU time per batch) a later method must be to beat an "
        "earlier one: timings are noisy, so near-equal methods keep the declared order and "
        "the same spec keeps the same choice",
    )
    batch_size: PositiveInt = Field(
        256, le=65_536, description="rows per timed forward pass (validation rows, repeated)"
    )
    runs: PositiveInt = Field(
        7, le=1000, description="interleaved timing rounds on 1 thread; the median is kept"
    )
    latency_repeats: PositiveInt = 30
