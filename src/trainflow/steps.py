"""The fit/apply contract of data steps, run over one table or over train/val/test splits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import polars as pl
from pydantic import BaseModel

from trainflow.artifacts import ArtifactRef, Store
from trainflow.errors import DataError
from trainflow.tables import (SYNTHETIC_COLUMN, TableSchema, class_counts, read_table,
                              write_table)

SPLITS = ("train", "val", "test")
State = dict[str, Any]
Fit = Callable[[pl.DataFrame, TableSchema, Any, int], State]
Apply = Callable[[pl.DataFrame, TableSchema, Any, State], tuple[pl.DataFrame, TableSchema]]


def read_parts(ref: ArtifactRef) -> dict[str, tuple[pl.DataFrame, TableSchema]]:
    """The parts of a table artifact ({'all': ...}) or of a splits artifact (train/val/test)."""
    names = ("all",) if ref.kind == "table" else SPLITS
    return {name: read_table(ref.path / f"{name}.parquet") for name in names}


def json_state(state: Any) -> Any:
    """A step's state without its in-memory-only entries (keys starting with `_`, such as a
    fitted scikit-learn detector), which are used while the step runs and never stored."""
    if isinstance(state, dict):
        return {k: json_state(v) for k, v in state.items() if not str(k).startswith("_")}
    return state


def write_parts(store: Store, kind: str, parts: dict[str, tuple[pl.DataFrame, TableSchema]],
                extra: dict[str, Any] | None = None, step: str | None = None) -> ArtifactRef:
    """Write parts (and JSON extras such as fitted state) as one artifact; return its ref."""
    with store.writer(kind) as staging:
        for name, (df, schema) in parts.items():
            write_table(df, staging / f"{name}.parquet", schema)
        for name, value in (extra or {}).items():
            (staging / f"{name}.json").write_text(json.dumps(json_state(value), indent=1,
                                                             sort_keys=True))
        schema = next(iter(parts.values()))[1]
        summary = {name: {"rows": len(df), "classes": class_counts(df, schema),
                          "synthetic": int(df[SYNTHETIC_COLUMN].sum())
                          if SYNTHETIC_COLUMN in df.columns else 0}
                   for name, (df, _) in parts.items()}
        return store.commit(staging, kind, count=sum(len(df) for df, _ in parts.values()),
                            schema=schema.model_dump(),
                            meta={"parts": summary, **({"step": step} if step else {})})


def fit_apply(parts: dict[str, tuple[pl.DataFrame, TableSchema]], params: BaseModel, fit: Fit,
              apply: Apply, seed: int) -> tuple[dict[str, tuple[pl.DataFrame, TableSchema]], State]:
    """Fit on the whole table (before split) or on `train` (after), then apply.

    A step whose params say `train_only` (resampling, synthesis) changes the training part
    alone: validation and test rows pass through untouched.
    """
    fitted_on = parts["all"] if "all" in parts else parts["train"]
    state = fit(fitted_on[0], fitted_on[1], params, seed)
    train_only = getattr(params, "train_only", False)
    out = {name: apply(df, schema, params, state) if name in ("all", "train") or not train_only
           else (df, schema) for name, (df, schema) in parts.items()}
    emptied = [name for name, (df, _) in out.items() if len(df) == 0 and len(parts[name][0])]
    if emptied:
        step = getattr(params, "type", type(params).__name__)
        raise DataError(f"step {step!r} left no rows in {', '.join(emptied)}: check its "
                        f"settings ({params.model_dump(exclude={'type'})})")
    return out, state


def transform(ref: ArtifactRef, params: BaseModel, fit: Fit, apply: Apply, seed: int,
              store: str | Path) -> ArtifactRef:
    """Run one fit/apply step over a table or splits artifact; write the result and its state."""
    out, state = fit_apply(read_parts(ref), params, fit, apply, seed)
    return write_parts(Store(store), ref.kind, out, {"state": state},
                       step=getattr(params, "type", None))
