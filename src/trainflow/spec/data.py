"""The data section's fixed parts: expectations on the ingested table, and sharding."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from trainflow.spec.augment import AugmentSpec
from trainflow.spec.base import Section

Kind = Literal["numeric", "integer", "float", "text"]


class ExpectSpec(Section):
    """Facts the ingested data must satisfy before any step runs; every failure is listed."""

    columns: list[str] = Field(default_factory=list, description="Columns that must exist")
    dtypes: dict[str, Kind] = Field(default_factory=dict)
    ranges: dict[str, tuple[float | None, float | None]] = Field(
        default_factory=dict, description="Inclusive [min, max] per numeric column; null: open"
    )
    not_null: list[str] = Field(default_factory=list, description="Columns without missing values")
    label_not_null: bool = False
    classes: list[str] | None = Field(None, description="The only labels allowed")


class ExpandSpec(Section):
    """Offline training-data expansion: `copies` augmented copies of every training sample
    are written into the training shards next to the originals (validation and test never)."""

    copies: int = Field(1, ge=1, le=100)
    augment: AugmentSpec


class ShardParams(Section):
    max_samples: int = Field(10_000, ge=1, description="Samples per tar shard")
    per_record: int | Literal["auto"] = Field(
        "auto", description="Samples packed into one tar record; auto: about 1 MiB each"
    )
    max_bytes: int | None = Field(None, ge=1024, description="Bytes per tar shard (about)")
    expand: ExpandSpec | None = None
