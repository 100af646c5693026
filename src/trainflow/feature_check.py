"""A text feature that no `encode` step turns into numbers, found before any task runs: the
step that needs numbers would otherwise fail inside the run (polars' `conversion from str
to f64 failed` in normalize), after the steps before it had run."""

from __future__ import annotations

from typing import Any

import polars as pl

from trainflow.errors import DataError

# Steps that read text features as they are: they keep, drop or count rows, or encode.
TEXT_OK = {"clean", "split", "encode", "subsample"}


def check_text_features(
    steps: list[Any], table: pl.DataFrame | pl.LazyFrame, features: list[str]
) -> None:
    """Raise DataError naming a text feature, the first step that needs it as numbers (or
    the model), and the fix."""
    dtypes = table.collect_schema() if isinstance(table, pl.LazyFrame) else table.schema
    text = [c for c in features if not dtypes[c].is_numeric()]
    for index, step in enumerate(steps):
        if not text:
            return
        if step.type == "encode":
            text = [c for c in text if step.columns is not None and c not in step.columns]
        elif step.type not in TEXT_OK and not _takes_text(step):
            raise DataError(_message(text, f"data.steps.{index} ({step.type}) needs numbers"))
    if text:
        raise DataError(_message(text, "the model needs numbers"))


def _takes_text(step: Any) -> bool:
    """resample with smotenc takes categorical (text) features itself."""
    return step.type == "resample" and step.method == "smotenc"


def _message(text: list[str], why: str) -> str:
    shown = ", ".join(repr(c) for c in text[:5]) + (
        f" and {len(text) - 5} more" if len(text) > 5 else ""
    )
    return (
        f"feature column(s) {shown} hold text and {why}, but no `encode` step before it "
        "turns them into numbers: add {type: encode} after split (one-hot or ordinal), "
        "or leave the column(s) out with data.source.drop"
    )
