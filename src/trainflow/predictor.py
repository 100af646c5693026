"""Scoring raw rows with a model package: the input check, the fitted data steps applied as
training applied them (each step's own `apply`), the network(s), batch by batch.

`trainflow.load_model(path)` returns a `Model`; `trainflow predict` streams a file through
one (see trainflow.scorefiles for reading and writing files).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from trainflow import registry
from trainflow.calibration import decide
from trainflow.engine.model_folder import build_from_folder
from trainflow.engine.target_scale import regression_of
from trainflow.errors import ArtifactError, DataError, TrainflowError
from trainflow.package import (
    PREDICTION_MODES,
    Decision,
    Member,
    Package,
    PackageStep,
    dtype,
    load_package,
    prediction_mode,
)
from trainflow.tables import TableSchema, feature_array

BATCH_ROWS = 65_536  # rows per batch through the steps (bounded memory on any file size)
BATCH_BYTES = 256 * 2**20  # image batches are cut to about this many bytes of pixels
FORWARD_ROWS = 256  # rows per forward pass at least, as the evaluate task scores
# ... and as many more as keep a pass at about this many input values: each pass starts
# torch's thread pool, which on narrow tabular rows costs more than the arithmetic (results
# agree with evaluate's to float rounding, well inside the parity tests' 1e-5)
FORWARD_VALUES = 2**22
SHOWN = 10  # values or columns a message lists

Step = tuple[Callable, Any, dict]


def resolve_model(name_or_path: str | Path, store: str | Path | None = None) -> Path:
    """The package folder that MODEL names: a path, or a pipeline's name for its champion's
    package (in `store`, else the store trainflow.champion.store_for finds for it)."""
    from trainflow.champion import NAME, champion_package

    text = str(name_or_path)
    path = Path(text)
    if path.exists() or "/" in text or text.startswith(".") or text.endswith(".json"):
        return path  # load_package says what is wrong with a path that is no package
    if NAME.match(text):
        return champion_package(text, store)
    raise TrainflowError(
        f"{text!r} is neither a model package folder nor a pipeline name: pass the package "
        'folder that `trainflow run` printed as "package", or a pipeline\'s name to score '
        "with its champion"
    )


def predict_command(model: str, data: str, output: str | None, proba: bool) -> int:
    """`trainflow predict`: one output row per input row, in order, batch by batch."""
    from trainflow.scorefiles import NotTyped, check_output, read_rows, write_predictions

    check_output(output)
    loaded = load_model(model)
    if proba:  # a regression's package has none: refused before any row is read
        loaded._has_classes("--proba")
    # A file appears only once complete, so a first try that parses a CSV's numbers as
    # numbers (one parse instead of text and a conversion) can start again reading text.
    for typed in (True, False) if output is not None else (False,):
        rows = read_rows(Path(data), loaded, typed)
        try:
            written = write_predictions(
                loaded.score_batches(rows.batches(), rows.where, proba), output
            )
            break
        except NotTyped:
            continue
    if output is not None:
        print(f"{written} prediction(s) written to {output}")
    return 0


def load_model(path: str | Path) -> Model:
    """The model package at `path`, verified against its manifest, ready to score."""
    return Model(load_package(resolve_model(path)))


class Model:
    """A loaded model package. `predict(frame)` gives a class per row and `predict_proba(frame)`
    a probability per class (columns in `classes` order) for a polars or pandas frame of raw
    rows, shaped as the training data was (`input_schema`), in the frame's order."""

    def __init__(self, package: Package):
        info = package.info
        where = str(package.path / "package.json")
        self.path = package.path
        self.info = info
        self.classes: list[str] = list(info.classes)
        self.input_schema: dict[str, Any] = info.input.model_dump()
        self.types = {c: dtype(t, where) for c, t in info.input.columns.items()}
        self._table = TableSchema(**info.table_schema)
        self._steps = [_loaded(s, where) for s in info.steps]
        self._members = [self._member(package, m, where) for m in info.members]
        # a regression's members predict numbers: each one's target scaling (model.json)
        self._regressions = [
            regression_of(json.loads((package.member_folder(m) / "model.json").read_text()))
            for m in info.members
        ]
        self.task = "regression" if self._regressions and self._regressions[0] else "classification"
        if info.combine is not None and info.combine not in registry.ENSEMBLES:
            raise ArtifactError(f"{where}: unknown way to combine members {info.combine!r}")
        self._combine = registry.ENSEMBLES[info.combine].impl if info.combine else None
        self.decision = info.decision or Decision()  # evaluate.calibrate / evaluate.threshold
        self._combine_state = info.combine_state  # weights, a meta-model's coefficients
        pixels = math.prod(info.input.image_shape or [1])
        self.batch_rows = max(1, min(BATCH_ROWS, BATCH_BYTES // (4 * pixels)))

    @staticmethod
    def _member(package: Package, member: Member, where: str) -> tuple[list[Step], Any]:
        net = build_from_folder(package.member_folder(member), "model package")
        return [_loaded(s, where) for s in member.steps], net

    def __repr__(self) -> str:
        predicts = "predicts a number" if self.task == "regression" else f"classes={self.classes}"
        return (
            f"<trainflow model {self.info.pipeline} ({self.info.kind}) {predicts} from {self.path}>"
        )

    # ---- the Python API ---------------------------------------------------------------

    def predict_proba(self, frame: Any) -> np.ndarray:
        """Class probabilities, float32 (rows, classes)."""
        self._has_classes("predict_proba")
        df = _polars(frame)
        self.check(df.lazy(), "the frame")
        parts = [
            self._probabilities(batch, "the frame", start)
            for start, batch in _slices(df, self.batch_rows)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, len(self.classes)), np.float32)

    def predict(self, frame: Any) -> np.ndarray:
        """The predicted class of each row (labels as in `classes`); a regression's number,
        float64, in the target's own units."""
        if self.task == "regression":
            df = _polars(frame)
            self.check(df.lazy(), "the frame")
            parts = [self._values(b, "the frame", i) for i, b in _slices(df, self.batch_rows)]
            return np.concatenate(parts) if parts else np.zeros(0)
        return np.asarray(self.classes)[self.predicted_indices(self.predict_proba(frame))]

    def predicted_indices(self, probs: np.ndarray) -> np.ndarray:
        """Each row's class index: the most probable, or the package's threshold's."""
        return decide(probs, self.decision.threshold, self.decision.positive)

    def score(self, frame: Any, proba: bool = False) -> pl.DataFrame:
        """What `trainflow predict` writes: the id columns present, `prediction`, and with
        `proba` a `proba_<class>` column per class."""
        df = _polars(frame)
        self.check(df.lazy(), "the frame")
        parts = [
            self.score_batch(batch, proba, "the frame", start)
            for start, batch in _slices(df, self.batch_rows)
        ]
        return pl.concat(parts) if parts else self.score_batch(df, proba, "the frame", 0)

    # ---- checking and scoring batches -----------------------------------------------

    def check(self, rows: pl.LazyFrame, where: str) -> None:
        """Raise a DataError naming the first problem of `rows` before any is scored: a
        missing column, a value that does not convert to its column's training type, an
        image of the wrong size, or a category unseen in training under `unknown: error`."""
        from trainflow.inputcheck import check_rows

        check_rows(rows, self, where)

    def converted(self, types: pl.Schema) -> dict[str, pl.Expr]:
        """Each column the steps read, as the type ingest gave it (blank text is missing,
        as ingest reads it)."""
        out = {}
        for name, target in self.types.items():
            value = pl.col(name)
            if types[name] == target:
                out[name] = value
                continue
            if types[name] == pl.String and target != pl.String:
                value = pl.when(value.str.strip_chars() != "").then(value)
            out[name] = value.cast(target, strict=False).alias(name)
        return out

    def unseen_policies(self) -> dict[str, list[str]]:
        """Text column -> the categories every `encode` step with `unknown: error` knows."""
        known: dict[str, set[str]] = {}
        steps = [*self._steps, *(s for member, _ in self._members for s in member)]
        for _, params, state in steps:
            if getattr(params, "type", None) == "encode" and params.unknown == "error":
                for column, categories in state["categories"].items():
                    known[column] = known.get(column, set(categories)) & set(categories)
        return {c: sorted(v) for c, v in known.items()}

    def score_batches(
        self, batches: Iterator[pl.DataFrame], where: str, proba: bool
    ) -> Iterator[pl.DataFrame]:
        """The output rows of checked batches, numbered on from batch to batch (for
        messages that name a row)."""
        first_row = 0
        for batch in batches:
            yield self.score_batch(batch, proba, where, first_row)
            first_row += batch.height

    def score_batch(
        self, batch: pl.DataFrame, proba: bool, where: str, first_row: int
    ) -> pl.DataFrame:
        """One checked batch's output rows."""
        ids = [*self.info.input.keep_columns, *(["path"] if self.info.input.image_shape else [])]
        keep = [c for c in ids if c in batch.columns]  # "path": an image file's, in its folder
        if self.task == "regression":  # a number per row, no probabilities
            if proba:
                self._has_classes("--proba")
            values = self._values(batch, where, first_row)
            return batch.select(*keep, pl.lit(pl.Series("prediction", values, pl.Float64)))
        probs = self._probabilities(batch, where, first_row)
        # as a selected literal, so a batch without id columns keeps its height
        out = batch.select(
            *keep,
            pl.lit(
                pl.Series(
                    "prediction",
                    np.asarray(self.classes, dtype=object)[self.predicted_indices(probs)],
                    dtype=pl.String,
                )
            ),
        )
        if proba:
            out = out.with_columns(
                pl.Series(f"proba_{c}", probs[:, i], dtype=pl.Float32)
                for i, c in enumerate(self.classes)
            )
        return out

    def _has_classes(self, asked: str) -> None:
        if self.task == "regression":
            raise TrainflowError(
                f"{asked}: the model package {self.path} is a regression's: it predicts a "
                "number per row (the `prediction` column; predict() in Python), and has no "
                "class probabilities"
            )

    def _values(self, batch: pl.DataFrame, where: str, first_row: int) -> np.ndarray:
        """A regression's predictions of one batch, float64 (rows,), in the target's units."""
        if batch.height == 0:
            return np.zeros(0)
        frame = batch.select(*self.converted(batch.collect_schema()).values())
        frame, schema = _through(self._steps, frame, self._table)
        values = [
            _numbers(net, _features(*_through(steps, frame, schema), where, first_row), scale)
            for (steps, net), scale in zip(self._members, self._regressions)
        ]
        if self._combine is None:
            return values[0]
        return np.asarray(self._combine(values, self._combine_state), dtype=np.float64)

    def _probabilities(self, batch: pl.DataFrame, where: str, first_row: int) -> np.ndarray:
        if batch.height == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        frame = batch.select(*self.converted(batch.collect_schema()).values())
        frame, schema = _through(self._steps, frame, self._table)
        probs = [
            _forward(
                net,
                _features(*_through(steps, frame, schema), where, first_row),
                self.decision.temperature,
            )
            for steps, net in self._members
        ]
        if self._combine is None:
            return probs[0]
        return np.asarray(self._combine(probs, self._combine_state), dtype=np.float32)


def _loaded(step: PackageStep, where: str) -> Step:
    entry = registry.STEPS.get(step.type)
    if entry is None or step.type not in PREDICTION_MODES:
        raise ArtifactError(
            f"{where}: data step {step.type!r} is not one this trainflow applies at prediction"
        )
    try:
        params = entry.params.model_validate(step.params)
    except ValueError as exc:
        raise ArtifactError(
            f"{where}: the {step.type} step's params do not validate: {exc}"
        ) from None
    return prediction_mode(step.type), params, step.state


def _through(
    steps: list[Step], frame: pl.DataFrame, schema: TableSchema
) -> tuple[pl.DataFrame, TableSchema]:
    """The rows after each step's prediction mode, with its fitted state, in order."""
    for apply, params, state in steps:
        frame, schema = apply(frame, schema, params, state)
    return frame, schema


def _features(frame: pl.DataFrame, schema: TableSchema, where: str, first_row: int) -> np.ndarray:
    """The model's input, after checking every value is finite: a missing value no step of
    the package fills never reached the model in training either."""
    x = feature_array(frame, schema)
    bad = ~np.isfinite(x.reshape(len(x), -1))
    if bad.any():
        row = first_row + int(np.flatnonzero(bad.any(axis=1))[0]) + 1
        what = (
            "image pixels"
            if schema.image_shape
            else [c for c, n in zip(schema.features, bad.sum(axis=0)) if n][:SHOWN]
        )
        raise DataError(
            f"{where}: row {row} (and {int(bad.any(axis=1).sum()) - 1} more) has "
            f"missing or non-finite values in {what} after the package's steps, "
            "which fill no value there (the model never saw one in training): "
            "fill them before scoring, or retrain with a `clean` step that fills "
            "missing values (missing: median, mean, mode or constant)"
        )
    return x


@torch.no_grad()
def _forward(net: torch.nn.Module, x: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities as the evaluate task computes them (softmax of float logits,
    divided by the package's temperature when evaluate calibrated them)."""
    rows = max(FORWARD_ROWS, FORWARD_VALUES // max(1, math.prod(x.shape[1:])))
    out = [
        torch.softmax(_calibrated(net(torch.from_numpy(x[i : i + rows])).float(), temperature), 1)
        for i in range(0, len(x), rows)
    ]
    return torch.cat(out).numpy().astype(np.float32, copy=False)


@torch.no_grad()
def _numbers(net: torch.nn.Module, x: np.ndarray, regression: Any) -> np.ndarray:
    """A regression's predictions as the evaluate task computes them: the network's output
    turned back into the target's units (engine.target_scale)."""
    rows = max(FORWARD_ROWS, FORWARD_VALUES // max(1, math.prod(x.shape[1:])))
    out = [net(torch.from_numpy(x[i : i + rows])).float() for i in range(0, len(x), rows)]
    return regression.scale.original(torch.cat(out)) if out else np.zeros(0)


def _calibrated(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits / temperature if temperature != 1.0 else logits


def _polars(frame: Any) -> pl.DataFrame:
    if isinstance(frame, pl.LazyFrame):
        return frame.collect()
    if isinstance(frame, pl.DataFrame):
        return frame
    pandas = sys.modules.get("pandas")  # only a frame of an imported pandas can be one
    if pandas is not None and isinstance(frame, pandas.DataFrame):
        return pl.from_pandas(frame)
    raise TrainflowError(
        f"a model scores a polars or pandas DataFrame, not a {type(frame).__name__}"
    )


def _slices(df: pl.DataFrame, rows: int) -> Iterator[tuple[int, pl.DataFrame]]:
    for start in range(0, df.height, rows):
        yield start, df.slice(start, rows)
