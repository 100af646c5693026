"""The fit/apply contract of data steps, run over one table or over train/val/test splits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl
from pydantic import BaseModel

from trainflow.artifacts import VIEW_FILE, ArtifactRef, Store
from trainflow.caching import code_fingerprint
from trainflow.errors import ArtifactError, DataError
from trainflow.tables import (SYNTHETIC_COLUMN, TableSchema, class_counts, read_table,
                              scan_table, schema_file, sink_table, write_table)

SPLITS = ("train", "val", "test")
PART_FILE = "part.npy"  # a split view: each base row's part number (0 train, 1 val, 2 test)
State = dict[str, Any]
Frame = pl.DataFrame | pl.LazyFrame
Fit = Callable[[Frame, TableSchema, Any, int], State]
Apply = Callable[[Frame, TableSchema, Any, State], tuple[Frame, TableSchema]]


def part_names(ref: ArtifactRef) -> tuple[str, ...]:
    return ("all",) if ref.kind == "table" else SPLITS


def read_parts(ref: ArtifactRef) -> dict[str, tuple[pl.DataFrame, TableSchema]]:
    """The parts of a table artifact ({'all': ...}) or of a splits artifact (train/val/test)."""
    if ref.base() is not None:
        return {name: (frame.collect(), schema)
                for name, (frame, schema) in scan_parts(ref).items()}
    return {name: read_table(ref.path / f"{name}.parquet") for name in part_names(ref)}


def scan_parts(ref: ArtifactRef) -> dict[str, tuple[pl.LazyFrame, TableSchema]]:
    """The parts as lazy scans, for steps that stream data larger than memory; a view's parts
    are its base's parts with the step applied (one query, nothing written in between)."""
    base = ref.base()
    if base is None:
        return {name: scan_table(ref.path / f"{name}.parquet") for name in part_names(ref)}
    if not base.path.exists():
        raise ArtifactError(f"{ref.path} is a view over {base.kind} artifact {base.path}, "
                            "which is missing: rerun the pipeline to rebuild it")
    if (ref.path / PART_FILE).is_file():
        return _split_parts(ref, base)
    step, params, state = _view_step(ref)
    return {name: step.apply(frame, schema, params, state)
            for name, (frame, schema) in scan_parts(base).items()}


def _split_parts(ref: ArtifactRef, base: ArtifactRef) -> dict[str, tuple[pl.LazyFrame,
                                                                          TableSchema]]:
    """A split view's parts: the base table's rows filtered by their stored part number."""
    (frame, schema), = scan_parts(base).values()
    part = np.load(ref.path / PART_FILE, allow_pickle=False)
    rows = frame.select(pl.len()).collect().item()
    if part.dtype != np.uint8 or part.shape != (rows,):
        raise ArtifactError(f"{ref.path / PART_FILE} holds {part.dtype} {part.shape}, not a "
                            f"part number for each of the {rows} rows of {base.path}")
    return split_by_part(frame, schema, part)


def split_by_part(frame: pl.LazyFrame, schema: TableSchema,
                  part: np.ndarray) -> dict[str, tuple[pl.LazyFrame, TableSchema]]:
    """train/val/test as queries over `frame`: the rows whose one-byte part number (looked up
    by row number) is 0, 1 or 2; streamed, never all of the table in memory."""
    part_of = pl.lit(pl.Series("part", part, dtype=pl.UInt8)).gather(pl.col("__row"))
    numbered = frame.with_row_index("__row")
    return {name: (numbered.filter(part_of == number).drop("__row"), schema)
            for number, name in enumerate(SPLITS)}


def _registered(name: Any) -> Any:
    from trainflow import registry  # the registry imports the tasks, which import this module

    step = registry.STEPS.get(name)
    if step is None or step.apply is None:
        raise ArtifactError(f"a view of unknown step {name!r}")
    return step


def _view_step(ref: ArtifactRef) -> tuple[Any, BaseModel, State]:
    """The registry entry, params and fitted state (with its stored arrays) a view applies."""
    view = json.loads((ref.path / VIEW_FILE).read_text())
    try:
        step = _registered(view.get("step"))
    except ArtifactError as exc:
        raise ArtifactError(f"{ref.path}: {exc}") from None
    state = json.loads((ref.path / "state.json").read_text())
    for array in sorted(ref.path.glob("*.npy")):
        if array.name != PART_FILE:
            state[f"_{array.stem}"] = np.load(array, allow_pickle=False)
    return step, step.params.model_validate(view["params"]), state


def json_state(state: Any) -> Any:
    """A step's state without its in-memory-only entries (keys starting with `_`, such as a
    fitted scikit-learn detector), which are used while the step runs and never stored."""
    if isinstance(state, dict):
        return {k: json_state(v) for k, v in state.items() if not str(k).startswith("_")}
    return state


def _summary(frame: Frame, schema: TableSchema) -> dict:
    synthetic = (pl.col(SYNTHETIC_COLUMN).sum() if SYNTHETIC_COLUMN in
                 frame.lazy().collect_schema().names() else pl.lit(0))
    rows, synth = frame.lazy().select(pl.len(), synthetic).collect().row(0)
    return {"rows": int(rows), "classes": class_counts(frame, schema), "synthetic": int(synth)}


def write_parts(store: Store, kind: str,
                parts: dict[str, tuple[Frame | Path, TableSchema]],
                extra: dict[str, Any] | None = None, step: str | None = None,
                check: Callable[[dict[str, dict]], None] | None = None) -> ArtifactRef:
    """Write parts (and JSON extras such as fitted state) as one artifact; return its ref.

    Lazy parts are streamed to disk, so a step over a LazyFrame never holds the table in memory.
    A part given as a Path is a Parquet file that already holds the part's rows as they should
    be stored: its bytes are copied, with the schema in a file beside it.
    `check` sees the per-part summary before the artifact is committed and may raise.
    """
    with store.writer(kind) as staging:
        paths = {name: staging / f"{name}.parquet" for name in parts}
        # lazy parts run as one streaming query: parts of one view share their reading
        pl.collect_all([sink_table(frame, paths[name], schema, lazy=True)
                        for name, (frame, schema) in parts.items()
                        if isinstance(frame, pl.LazyFrame)])
        summary = {}
        for name, (frame, schema) in parts.items():
            if isinstance(frame, Path):
                shutil.copyfile(frame, paths[name])
                schema_file(paths[name]).write_text(schema.model_dump_json())
            elif isinstance(frame, pl.DataFrame):
                write_table(frame, paths[name], schema)
            summary[name] = _summary(pl.scan_parquet(paths[name]), schema)
        if check:
            check(summary)
        for name, value in (extra or {}).items():
            (staging / f"{name}.json").write_text(json.dumps(json_state(value), indent=1,
                                                             sort_keys=True))
        schema = next(iter(parts.values()))[1]
        return store.commit(staging, kind, count=sum(p["rows"] for p in summary.values()),
                            schema=schema.model_dump(),
                            meta={"parts": summary, **({"step": step} if step else {})})


def like(original: Frame, result: pl.LazyFrame) -> Frame:
    """A lazy step's result in the kind it was given: collected for a DataFrame."""
    return result.collect() if isinstance(original, pl.DataFrame) else result


def _collected(frame: Frame) -> pl.DataFrame:
    return frame.collect() if isinstance(frame, pl.LazyFrame) else frame


def _check_not_emptied(step: BaseModel, before: dict[str, int], after: dict[str, int]) -> None:
    emptied = [name for name, rows in after.items() if rows == 0 and before.get(name)]
    if emptied:
        name = getattr(step, "type", type(step).__name__)
        raise DataError(f"step {name!r} left no rows in {', '.join(emptied)}: check its "
                        f"settings ({step.model_dump(exclude={'type'})})")


def fit_apply(parts: dict[str, tuple[Frame, TableSchema]], params: BaseModel, fit: Fit,
              apply: Apply, seed: int, lazy: bool = False
              ) -> tuple[dict[str, tuple[Frame, TableSchema]], State]:
    """Fit on the whole table (before split) or on `train` (after), then apply.

    A step whose params say `train_only` (resampling, synthesis) changes the training part
    alone: validation and test rows pass through untouched. With `lazy`, parts stay LazyFrames
    (the step builds a query; the caller streams it); otherwise they come back collected.
    """
    fitted_on = parts["all"] if "all" in parts else parts["train"]
    state = fit(fitted_on[0], fitted_on[1], params, seed)
    train_only = getattr(params, "train_only", False)
    out = {name: apply(df, schema, params, state) if name in ("all", "train") or not train_only
           else (df, schema) for name, (df, schema) in parts.items()}
    if not lazy:
        out = {name: (_collected(df), schema) for name, (df, schema) in out.items()}
        _check_not_emptied(params, {n: len(_collected(df)) for n, (df, _) in parts.items()},
                           {n: len(df) for n, (df, _) in out.items()})
    return out, state


def transform(ref: ArtifactRef, params: BaseModel, fit: Fit, apply: Apply, seed: int,
              store: str | Path, lazy: bool = False, view: bool = False) -> ArtifactRef:
    """Run one fit/apply step over a table or splits artifact; write the result and its state.

    `lazy` steps (written as polars queries) read, fit and write with the streaming engine, so
    tables larger than memory pass through them. A `view` step (a lazy column-wise map that
    keeps every row, such as encode or normalize) writes only its fitted state: readers apply
    it to the input's rows in their own query, so a chain of such steps costs one write (by
    whoever needs the rows: shard, or `materialize`) instead of one per step.
    """
    if view and in_store(ref, Store(store)):
        out, state = fit_apply(scan_parts(ref), params, fit, apply, seed, lazy=True)
        return write_view(Store(store), ref, params, state, next(iter(out.values()))[1],
                          fit.__module__)
    lazy = lazy or view
    if lazy:
        out, state = fit_apply(scan_parts(ref), params, fit, apply, seed, lazy=True)
    else:
        out, state = fit_apply(read_parts(ref), params, fit, apply, seed)
    before = {name: part["rows"] for name, part in ref.meta.get("parts", {}).items()}
    return write_parts(Store(store), ref.kind, out, {"state": state},
                       step=getattr(params, "type", None),
                       check=lambda summary: _check_not_emptied(
                           params, before, {n: p["rows"] for n, p in summary.items()}))


def write_view(store: Store, ref: ArtifactRef, params: BaseModel, state: State,
               schema: TableSchema, module: str, rows_change: bool = False) -> ArtifactRef:
    """Store a step's result as a view over `ref`: its params, fitted state and code
    fingerprint (so that a change of the step's code is a new view, and a new cache key for
    every step after it). NumPy arrays in the state under `_name` (such as the rows a step
    keeps) are stored as `name.npy`. Rows and classes are the input's, unless `rows_change`
    (then they are counted through the view, and a step that empties a part is an error)."""
    parts, count = ref.meta.get("parts", {}), ref.count
    if rows_change:
        step = _registered(params.type)
        counted = {name: _summary(step.apply(frame, part_schema, params, state)[0], part_schema)
                   for name, (frame, part_schema) in scan_parts(ref).items()}
        _check_not_emptied(params, {n: p["rows"] for n, p in parts.items()},
                           {n: p["rows"] for n, p in counted.items()})
        parts, count = counted, sum(p["rows"] for p in counted.values())
    with store.writer(ref.kind) as staging:
        view = {"base": {"kind": ref.kind, "fingerprint": ref.fingerprint},
                "step": params.type, "params": params.model_dump(mode="json"),
                "code": code_fingerprint(module)}
        (staging / VIEW_FILE).write_text(json.dumps(view, indent=1, sort_keys=True))
        (staging / "state.json").write_text(json.dumps(json_state(state), indent=1,
                                                       sort_keys=True))
        for key, value in state.items():
            if key.startswith("_") and isinstance(value, np.ndarray):
                np.save(staging / f"{key[1:]}.npy", value, allow_pickle=False)
        return store.commit(staging, ref.kind, count=count, schema=schema.model_dump(),
                            meta={"parts": parts, "step": params.type, "view": True})


def materialize(ref: ArtifactRef, store: str | Path) -> ArtifactRef:
    """The artifact's rows written out as Parquet parts (a stored artifact is returned as is):
    a view chain becomes one streamed query and one write per part."""
    if ref.base() is None:
        return ref
    return write_parts(Store(store), ref.kind, scan_parts(ref),
                       step=ref.meta.get("step"))


def in_store(ref: ArtifactRef, store: Store) -> bool:
    """Whether `ref` lives in `store`: a view can only name a base of its own store."""
    return ref.path.parent.parent == store.root


def write_split_view(store: Store, ref: ArtifactRef, part: np.ndarray, params: BaseModel,
                     module: str, summary: dict[str, dict] | None = None) -> ArtifactRef:
    """Store a split as a view over the table `ref`: the part number of each row (one byte a
    row) instead of a copy of the table's rows in three files; the parts are written out
    when `ref` is in another store. `summary`: the parts' rows and classes, where the caller
    has counted them."""
    parts = split_by_part(*next(iter(scan_parts(ref).values())), part)
    if not in_store(ref, store):
        return write_parts(store, "splits", parts, step=params.type)
    summary = summary or {name: _summary(frame, schema) for name, (frame, schema) in
                          parts.items()}
    with store.writer("splits") as staging:
        view = {"base": {"kind": ref.kind, "fingerprint": ref.fingerprint},
                "step": params.type, "params": params.model_dump(mode="json"),
                "code": code_fingerprint(module)}
        (staging / VIEW_FILE).write_text(json.dumps(view, indent=1, sort_keys=True))
        np.save(staging / PART_FILE, part.astype(np.uint8), allow_pickle=False)
        schema = parts["train"][1]
        return store.commit(staging, "splits", count=sum(p["rows"] for p in summary.values()),
                            schema=schema.model_dump(),
                            meta={"parts": summary, "step": params.type, "view": True})
