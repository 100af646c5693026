"""The fit/apply contract of data steps, and the one form every step's output is stored in.

A step's output is a view over its input (`write_view` writes it, `scan_parts` reads it): the
step's params, fitted state and code fingerprint, and for each part how its rows come about:

- `applied`: readers apply the step to the input's part with the stored state (a polars query:
  encode, normalize, clean with its stored choice of rows), so a chain of such steps costs one
  write, by whoever needs the rows (shard, or `materialize`);
- `stored`: the rows the step made, in `<part>.parquet` (steps that need the rows in memory:
  resampling, synthesis, detectors), written once;
- `input`: the input's rows as they are (a training-only step's validation and test parts).

A split is a view too: its state holds each input row's part number (`part.npy`, one byte a
row), which turns the input's one part into train/val/test. Tables that no step made (ingest,
`materialize`, a view's rows written into another store) are Parquet parts (`write_parts`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel

from trainflow import registry
from trainflow.artifacts import REF_FILE, VIEW_FILE, ArtifactRef, Kind, Store
from trainflow.errors import ArtifactError, DataError
from trainflow.tables import (
    SYNTHETIC_COLUMN,
    TableSchema,
    class_counts,
    scan_table,
    schema_file,
    sink_table,
    write_table,
)

SPLITS = ("train", "val", "test")
ORDER = ("all", *SPLITS)  # the order parts are read in
PART = "_part"  # a split's state: each input row's part number (0 train, 1 val, 2 test)
PART_FILE = "part.npy"  # where a view stores it (state arrays `_name` are stored as name.npy)
APPLIED, STORED, INPUT = "applied", "stored", "input"
State = dict[str, Any]
Frame = pl.DataFrame | pl.LazyFrame
Parts = Mapping[str, tuple[Frame, TableSchema]]
Stored = Mapping[str, tuple[Frame | Path, TableSchema]]
StepParams = Any  # a step's params model: a pydantic model with the step's `type`
Fit = Callable[..., State]  # (frame, schema, params, seed): each step's own frame type
Apply = Callable[..., tuple[Frame, TableSchema]]  # (frame, schema, params, state)


def part_names(ref: ArtifactRef) -> tuple[str, ...]:
    return ("all",) if ref.kind == "table" else SPLITS


def read_parts(ref: ArtifactRef) -> dict[str, tuple[pl.DataFrame, TableSchema]]:
    """The parts of a table artifact ({'all': ...}) or of a splits artifact (train/val/test),
    in memory: `scan_parts`, collected."""
    return {name: (frame.collect(), schema) for name, (frame, schema) in scan_parts(ref).items()}


def scan_parts(ref: ArtifactRef) -> dict[str, tuple[pl.LazyFrame, TableSchema]]:
    """The parts as lazy queries (the one read path): stored Parquet parts, or a view's parts
    built from its input's parts (one query through a chain of views, nothing written)."""
    base = ref.base()
    if base is None:
        return {name: scan_table(ref.path / f"{name}.parquet") for name in part_names(ref)}
    if not base.path.exists():
        raise ArtifactError(
            f"{ref.path} is a view over {base.kind} artifact {base.path}, "
            "which is missing: rerun the pipeline to rebuild it"
        )
    view, state = _read_view(ref)
    return _assemble(ref.path, view, state, _input_parts(ref.path, base, scan_parts(base), state))


def _assemble(
    folder: Path, view: dict, state: State, inputs: dict[str, tuple[pl.LazyFrame, TableSchema]]
) -> dict[str, tuple[pl.LazyFrame, TableSchema]]:
    """A view's parts from its input's parts, each the way `view` names (views written before
    the ways were named applied the step to every part, or were splits)."""
    ways = view.get("parts") or dict.fromkeys(inputs, INPUT if PART in state else APPLIED)
    out = {}
    for name, way in sorted(ways.items(), key=lambda item: ORDER.index(item[0])):
        if way == STORED:
            out[name] = scan_table(folder / f"{name}.parquet")
        elif way == APPLIED:
            step, params = _step(folder, view)
            frame, schema = step.apply(*inputs[name], params, state)
            out[name] = (frame.lazy(), schema)
        else:
            out[name] = inputs[name]
    return out


def _input_parts(
    folder: Path,
    base: ArtifactRef,
    parts: dict[str, tuple[pl.LazyFrame, TableSchema]],
    state: State,
) -> dict[str, tuple[pl.LazyFrame, TableSchema]]:
    """The input's parts, or for a split, its one part as train/val/test."""
    if PART not in state:
        return parts
    ((frame, schema),) = parts.values()
    part = state[PART]
    rows = json.loads((base.path / REF_FILE).read_text())["count"]  # not a pass over the rows
    if part.dtype != np.uint8 or part.shape != (rows,):
        raise ArtifactError(
            f"{folder / PART_FILE} holds {part.dtype} {part.shape}, not a "
            f"part number for each of the {rows} rows of {base.path}"
        )
    return split_by_part(frame, schema, part)


def split_by_part(
    frame: pl.LazyFrame, schema: TableSchema, part: np.ndarray
) -> dict[str, tuple[pl.LazyFrame, TableSchema]]:
    """train/val/test as queries over `frame`: the rows whose one-byte part number (looked up
    by row number) is 0, 1 or 2; streamed, never all of the table in memory."""
    part_of = pl.lit(pl.Series("part", part, dtype=pl.UInt8)).gather(pl.col("__row"))
    numbered = frame.with_row_index("__row")
    return {
        name: (numbered.filter(part_of == number).drop("__row"), schema)
        for number, name in enumerate(SPLITS)
    }


def _read_view(ref: ArtifactRef) -> tuple[dict, State]:
    """A view's description and its fitted state, with its stored arrays under `_name`."""
    view = json.loads((ref.path / VIEW_FILE).read_text())
    state = json.loads((ref.path / "state.json").read_text())
    for array in sorted(ref.path.glob("*.npy")):
        state[f"_{array.stem}"] = np.load(array, allow_pickle=False)
    return view, state


def _step(folder: Path, view: dict) -> tuple[Any, BaseModel]:
    """The registry entry and params of the step a view applies."""
    step = registry.STEPS.get(str(view.get("step")))
    if step is None or step.apply is None:
        raise ArtifactError(f"{folder}: a view of unknown step {view.get('step')!r}")
    return step, step.params.model_validate(view["params"])


def applied_state(ref: ArtifactRef) -> State | None:
    """The state readers apply to a view's input to read it, or None where the view stores
    its rows (or is no view): the fitted state exactly as the step ran, for callers that
    replay the step over rows of their own (the test rows of a run)."""
    if ref.base() is None:
        return None
    view, state = _read_view(ref)
    return state if APPLIED in (view.get("parts") or {"all": APPLIED}).values() else None


def json_state(state: Any) -> Any:
    """A step's state without its in-memory-only entries (keys starting with `_`, such as a
    fitted scikit-learn detector), which are used while the step runs and never stored."""
    if isinstance(state, dict):
        return {k: json_state(v) for k, v in state.items() if not str(k).startswith("_")}
    return state


def _summary(frame: Frame, schema: TableSchema) -> dict:
    synthetic = (
        pl.col(SYNTHETIC_COLUMN).sum()
        if SYNTHETIC_COLUMN in frame.lazy().collect_schema().names()
        else pl.lit(0)
    )
    rows, synth = frame.lazy().select(pl.len(), synthetic).collect().row(0)
    return {"rows": int(rows), "classes": class_counts(frame, schema), "synthetic": int(synth)}


def _write_rows(staging: Path, parts: Stored) -> None:
    """Each part as `<name>.parquet` in `staging`. Lazy parts run as one streaming query (the
    parts of one view share their reading); a Path is a Parquet file that already holds the
    part's rows as they should be stored: its bytes are copied, the schema beside it."""
    paths = {name: staging / f"{name}.parquet" for name in parts}
    sinks = [
        sink_table(frame, paths[name], schema, lazy=True)
        for name, (frame, schema) in parts.items()
        if isinstance(frame, pl.LazyFrame)
    ]
    pl.collect_all([sink for sink in sinks if sink is not None])
    for name, (frame, schema) in parts.items():
        if isinstance(frame, Path):
            shutil.copyfile(frame, paths[name])
            schema_file(paths[name]).write_text(schema.model_dump_json())
        elif isinstance(frame, pl.DataFrame):
            write_table(frame, paths[name], schema)


def _write_state(staging: Path, state: State) -> None:
    """state.json (the JSON entries), and each NumPy array under `_name` as name.npy."""
    (staging / "state.json").write_text(json.dumps(json_state(state), indent=1, sort_keys=True))
    for key, value in state.items():
        if key.startswith("_") and isinstance(value, np.ndarray):
            np.save(staging / f"{key[1:]}.npy", value, allow_pickle=False)


def write_parts(
    store: Store,
    kind: Kind,
    parts: Stored,
    state: State | None = None,
    step: str | None = None,
) -> ArtifactRef:
    """Store rows as Parquet parts (a table no step made, or a view's rows written out);
    with a step's `state`, its state.json beside them."""
    with store.writer(kind) as staging:
        _write_rows(staging, parts)
        summary = {
            name: _summary(pl.scan_parquet(staging / f"{name}.parquet"), schema)
            for name, (_, schema) in parts.items()
        }
        if state is not None:
            _write_state(staging, state)
        schema = next(iter(parts.values()))[1]
        return store.commit(
            staging,
            kind,
            count=sum(p["rows"] for p in summary.values()),
            schema=schema.model_dump(),
            meta={"parts": summary, **({"step": step} if step else {})},
        )


def in_store(ref: ArtifactRef, store: Store) -> bool:
    """Whether `ref` lives in `store`: a view can only name an input of its own store."""
    return ref.path.parent.parent == store.root


def write_view(
    store: Store,
    ref: ArtifactRef,
    params: StepParams,
    state: State,
    module: str,
    stored: Parts | None = None,
    applied: Iterable[str] = (),
    keeps_rows: bool = False,
    summary: dict[str, dict] | None = None,
) -> ArtifactRef:
    """Store a step's output over its input `ref` (the one writer of step outputs).

    Each part is `stored` (the rows given, written now), `applied` (the step's `apply` with
    `state`, run by readers) or else the input's part as it is. The code fingerprint of the
    step's `module` is part of the view, so a change of the step's code is a new view and a
    new cache key for every step after it. Rows and classes: `summary` where the caller has
    counted them; the input's for parts read as they are, or `applied` by a step that
    `keeps_rows`; otherwise counted, and a step that empties a part is an error. Where `ref`
    lives in another store, the view's rows are written out as Parquet parts instead."""
    stored, applied = stored or {}, set(applied)
    kind: Kind = "splits" if PART in state else ref.kind
    names = SPLITS if PART in state else part_names(ref)
    ways = {
        name: STORED if name in stored else APPLIED if name in applied else INPUT for name in names
    }
    from trainflow.caching import code_fingerprint  # Prefect's; prediction never writes a view

    with store.writer(kind) as staging:
        view = {
            "base": {"kind": ref.kind, "fingerprint": ref.fingerprint},
            "step": params.type,
            "params": params.model_dump(mode="json"),
            "code": code_fingerprint(module),
            "parts": ways,
        }
        (staging / VIEW_FILE).write_text(json.dumps(view, indent=1, sort_keys=True))
        _write_state(staging, state)
        _write_rows(staging, stored)
        parts = _assemble(staging, view, state, _input_parts(staging, ref, scan_parts(ref), state))
        if not in_store(ref, store):  # a view names an input of its own store only
            return write_parts(store, kind, parts, json_state(state), params.type)
        known = ref.meta.get("parts", {})
        counts = summary or {
            name: known[name]
            if name in known and (way == INPUT or way == APPLIED and keeps_rows)
            else _summary(*parts[name])
            for name, way in ways.items()
        }
        _check_not_emptied(
            params,
            {n: p["rows"] for n, p in known.items()},
            {n: p["rows"] for n, p in counts.items()},
        )
        return store.commit(
            staging,
            kind,
            count=sum(p["rows"] for p in counts.values()),
            schema=parts[names[0]][1].model_dump(),
            meta={"parts": counts, "step": params.type, "view": True},
        )


def like(original: Frame, result: pl.LazyFrame) -> Frame:
    """A lazy step's result in the kind it was given: collected for a DataFrame."""
    return result.collect() if isinstance(original, pl.DataFrame) else result


def _collected(frame: Frame) -> pl.DataFrame:
    return frame.collect() if isinstance(frame, pl.LazyFrame) else frame


def _check_not_emptied(step: BaseModel, before: dict[str, int], after: dict[str, int]) -> None:
    emptied = [name for name, rows in after.items() if rows == 0 and before.get(name)]
    if emptied:
        name = getattr(step, "type", type(step).__name__)
        raise DataError(
            f"step {name!r} left no rows in {', '.join(emptied)}: check its "
            f"settings ({step.model_dump(exclude={'type'})})"
        )


def fit_apply(
    parts: dict[str, tuple[Frame, TableSchema]],
    params: StepParams,
    fit: Fit,
    apply: Apply,
    seed: int,
    lazy: bool = False,
) -> tuple[dict[str, tuple[Frame, TableSchema]], State]:
    """Fit on the whole table (before split) or on `train` (after), then apply.

    A step whose params say `train_only` (resampling, synthesis) changes the training part
    alone: validation and test rows pass through untouched. With `lazy`, parts stay LazyFrames
    (the step builds a query; the caller streams it); otherwise they come back collected.
    """
    fitted_on = parts["all"] if "all" in parts else parts["train"]
    state = fit(fitted_on[0], fitted_on[1], params, seed)
    out = {
        name: apply(df, schema, params, state) if name in _changed(params, parts) else (df, schema)
        for name, (df, schema) in parts.items()
    }
    if not lazy:
        out = {name: (_collected(df), schema) for name, (df, schema) in out.items()}
        _check_not_emptied(
            params,
            {n: len(_collected(df)) for n, (df, _) in parts.items()},
            {n: _collected(df).height for n, (df, _) in out.items()},
        )
    return out, state


def _changed(params: StepParams, parts: Iterable[str]) -> list[str]:
    """The parts a step changes: all of them, or the training part of a `train_only` step."""
    train_only = getattr(params, "train_only", False)
    return [name for name in parts if name in ("all", "train") or not train_only]


def transform(
    ref: ArtifactRef,
    params: StepParams,
    fit: Fit,
    apply: Apply,
    seed: int,
    store: str | Path,
    lazy: bool = False,
    replay: bool = False,
    keeps_rows: bool = False,
) -> ArtifactRef:
    """Run one fit/apply step over a table or splits artifact and store its view.

    `lazy` steps (polars queries) are fitted on the input's scans and their rows streamed to
    disk, so tables larger than memory pass through them; other steps get the parts they
    change in memory. A `replay` step (a query that the fitted state alone decides, such as
    encode or normalize) stores no rows: readers apply it; `keeps_rows` says that it keeps
    every row (so the input's counts hold). A training-only step's other parts are the
    input's, never written again.
    """
    scans = scan_parts(ref)
    changed: dict[str, tuple[Frame, TableSchema]] = {
        name: scans[name] for name in _changed(params, scans)
    }
    if not (lazy or replay):
        changed = {name: (_collected(frame), schema) for name, (frame, schema) in changed.items()}
    fitted_on = changed["all"] if "all" in changed else changed["train"]
    state = fit(fitted_on[0], fitted_on[1], params, seed)
    module = fit.__module__
    if replay:
        return write_view(
            Store(store), ref, params, state, module, applied=changed, keeps_rows=keeps_rows
        )
    out = {name: apply(frame, schema, params, state) for name, (frame, schema) in changed.items()}
    return write_view(Store(store), ref, params, state, module, stored=out)


def materialize(ref: ArtifactRef, store: str | Path) -> ArtifactRef:
    """The artifact's rows written out as Parquet parts (a stored artifact is returned as is):
    a view chain becomes one streamed query and one write per part."""
    if ref.base() is None:
        return ref
    return write_parts(Store(store), ref.kind, scan_parts(ref), step=ref.meta.get("step"))
