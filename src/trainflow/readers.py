"""Reading each kind of data source (`data.source`) into a table: a scikit-learn dataset, a
CSV or Parquet file, an image folder, generated sequences.

One `Reader` per source type, named in trainflow.registry.SOURCES: the ingest task loads the
whole table through it, and the checks before any task runs (trainflow.preflight) read only
the labels, cheaply where the format allows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from trainflow import registry
from trainflow.csvscan import CsvLayout, scan_csv
from trainflow.csvtypes import check_inferred_types, check_target_tokens, scan_csv_file
from trainflow.errors import DataError, did_you_mean
from trainflow.spec.sources import FileSource, ImageFolderSource, SequenceSource, SklearnSource
from trainflow.tables import IMAGE_COLUMN, TableSchema

Table = tuple[pl.DataFrame | pl.LazyFrame, TableSchema]


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


DTYPES = {
    "float32": pl.Float32,
    "float64": pl.Float64,
    "int8": pl.Int8,
    "int16": pl.Int16,
    "int32": pl.Int32,
    "int64": pl.Int64,
    "bool": pl.Boolean,
    "str": pl.Utf8,
    "category": pl.Utf8,
    "date": pl.Date,
    "datetime": pl.Datetime,
}


def _natural_sorted(values: list[str]) -> list[str]:
    return sorted(values, key=lambda v: (0, int(v), v) if v.lstrip("-").isdigit() else (1, 0, v))


def _load_sklearn(source: SklearnSource) -> tuple[pl.DataFrame, TableSchema]:
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{source.dataset}")()
    if source.dataset == "diabetes":  # a number to regress on (disease progression)
        features = [str(f) for f in bunch.feature_names]
        df = pl.DataFrame(bunch.data.astype(np.float64), schema=features).with_columns(
            pl.Series("target", bunch.target.astype(np.float64))
        )
        return df, TableSchema(target="target", features=features, classes=[], task="regression")
    names = [str(n) for n in bunch.target_names]
    labels = [names[i] for i in bunch.target]
    if source.dataset == "digits":
        images = bunch.images.astype(np.float32).reshape(len(labels), -1)
        df = pl.DataFrame({IMAGE_COLUMN: images, "target": labels})
        df = df.with_columns(pl.col(IMAGE_COLUMN).cast(pl.List(pl.Float32)))
        return df, TableSchema(
            target="target", features=[IMAGE_COLUMN], classes=names, image_shape=[1, 8, 8]
        )
    features = [str(f) for f in bunch.feature_names]
    df = pl.DataFrame(bunch.data.astype(np.float64), schema=features).with_columns(
        pl.Series("target", labels)
    )
    return df, TableSchema(target="target", features=features, classes=names)


def _scan_file(source: FileSource) -> tuple[pl.LazyFrame, CsvLayout | None]:
    """A lazy scan of the file, after checking that it exists, is readable and has the target
    (and declared) columns; a CSV file's lines are checked first (see trainflow.csvscan), and
    declared columns are read as text from CSV and converted later."""
    path = Path(source.path)
    if not path.is_file():
        raise DataError(f"data.source.path: file not found: {path}")
    layout = (
        scan_csv(path, source.max_line_bytes, source.encoding, source.delimiter)
        if source.type == "csv"
        else None
    )
    try:
        lf = (
            scan_csv_file(layout, list(source.columns or {}), source.null_values)
            if layout
            else pl.scan_parquet(path)
        )
        names = lf.collect_schema().names()
    except Exception as exc:  # polars raises several types for unreadable files
        raise DataError(
            f"data.source.path: cannot read {source.type} file {path}: {_first_line(exc)}"
        ) from None
    if source.target not in names:
        raise DataError(
            f"data.source.target: column {source.target!r} not in {path}; columns are {names}"
        )
    missing = [c for c in source.columns or {} if c not in names]
    if missing:
        raise DataError(f"data.source.columns: {missing} not in {path}; columns are {names}")
    return lf, layout


def _first_line(exc: Exception) -> str:
    """polars' own first line (the rest of its message suggests polars arguments)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _check_conversions(
    lf: pl.LazyFrame, declared: Mapping[str, str], path: Path, layout: CsvLayout | None
) -> None:
    """Every declared column's value that does not convert to its type is listed (per column,
    with examples and where the first is) in one error before anything is written."""

    def lost(c: str) -> pl.Expr:
        converted = pl.col(c).cast(DTYPES[declared[c]], strict=False)
        return pl.col(c).is_not_null() & converted.is_null()

    counts = lf.select(lost(c).sum().alias(c) for c in declared).collect(engine="streaming")
    bad = {c: n for c, n in counts.row(0, named=True).items() if n}
    if bad:
        problems = []
        for c, n in bad.items():
            rows = lf.with_row_index("__row").filter(lost(c)).select("__row", c).head(3).collect()
            where = f" (the first on {layout.where(rows['__row'][0])})" if layout else ""
            problems.append(
                f"{c!r} to {declared[c]}: {n} value(s) such as {rows[c].to_list()}{where}"
            )
        raise DataError(f"data.source.columns: cannot convert in {path}: " + "; ".join(problems))


def _blank_as_missing(lf: pl.LazyFrame, declared: Mapping[str, str]) -> pl.LazyFrame:
    """An empty or blank text cell declared as a non-text type is a missing value."""
    dtypes = lf.collect_schema()
    return lf.with_columns(
        pl.when(pl.col(c).str.strip_chars() != "").then(pl.col(c)).alias(c)
        for c, t in declared.items()
        if dtypes[c] == pl.Utf8 and DTYPES[t] != pl.Utf8
    )


def _declared(lf: pl.LazyFrame, declared: Mapping[str, str]) -> pl.LazyFrame:
    """Only the declared columns, blank cells missing, each cast to its type."""
    lf = _blank_as_missing(lf.select(list(declared)), declared)
    return lf.with_columns(pl.col(c).cast(DTYPES[t]) for c, t in declared.items())


def _roles(source: FileSource, names: list[str], path: Path) -> tuple[list[str], list[str]]:
    """The feature columns and the columns carried along (not features, not the target)."""
    kept = (
        source.keep_columns
        + ([source.weight_column] if source.weight_column else [])
        + source.aux_targets
    )
    unknown = [c for c in source.drop if c not in names]
    if unknown:
        raise DataError(
            f"data.source.drop: {unknown[0]!r} is not a column of {path}"
            f"{did_you_mean(unknown[0], names)}; its columns are {names}"
        )
    left_out = (source.target, *kept, *source.drop)
    features = source.features or [c for c in names if c not in left_out]
    missing = [c for c in features + kept if c not in names]
    if missing:
        raise DataError(f"data.source: columns {missing} not in {path}; columns are {names}")
    return features, kept


_CHECKED: set[tuple] = set()  # (source spec, file identity) already checked in this process


def check_file(source: FileSource) -> None:
    """Raise a DataError for the first problem found reading the whole file as declared: a
    malformed CSV line, a declared column's value that does not convert, or (CSV without
    declared columns) a value contradicting the type inferred from the first rows. The
    checks run once per file and source spec in a process (preflight, then ingest)."""
    path = Path(source.path)
    stat = path.stat() if path.is_file() else None
    key = (source.model_dump_json(), stat and (stat.st_size, stat.st_mtime_ns))
    if key in _CHECKED:
        return
    lf, layout = _scan_file(source)
    features, kept = _roles(source, list(source.columns or lf.collect_schema().names()), path)
    if source.columns:
        _check_conversions(
            _blank_as_missing(lf.select(list(source.columns)), source.columns),
            source.columns,
            path,
            layout,
        )
    elif layout:
        weight = [source.weight_column] if source.weight_column else []
        read = [*features, *kept, source.target]
        check_inferred_types(lf, layout, path, features + weight, read, source.null_values)
    _CHECKED.add(key)


def _load_file(source: FileSource) -> tuple[pl.LazyFrame, TableSchema]:
    path = Path(source.path)
    check_file(source)
    lf, _ = _scan_file(source)
    if source.columns:
        lf = _declared(lf, source.columns)
    dtypes = lf.collect_schema()
    features, kept = _roles(source, dtypes.names(), path)
    # Text columns stay text (categories); an `encode` step turns them into numbers.
    lf = lf.select(
        *(pl.col(c) if dtypes[c].is_numeric() else pl.col(c).cast(pl.Utf8) for c in features),
        *kept,
        pl.col(source.target).cast(pl.Utf8),
    )
    labels = lf.select(source.target).drop_nulls().unique().collect(engine="streaming")
    classes = _natural_sorted(labels[source.target].to_list())
    if source.weight_column:
        lf = lf.with_columns(_checked_weights(lf, source.weight_column, dtypes, path))
    aux = {}
    for column in source.aux_targets:
        lf = lf.with_columns(pl.col(column).cast(pl.Utf8))
        values = lf.select(column).drop_nulls().unique().collect(engine="streaming")
        aux[column] = _natural_sorted(values[column].to_list())
    return lf, TableSchema(
        target=source.target,
        features=features,
        classes=classes,
        weight=source.weight_column,
        aux_targets=aux or None,
    )


def _checked_weights(lf: pl.LazyFrame, column: str, dtypes, path: Path) -> pl.Expr:
    """The weight column as float64, after checking every value is a finite number >= 0."""
    if not dtypes[column].is_numeric():
        raise DataError(
            f"data.source.weight_column: {column!r} in {path} holds {dtypes[column]}, not numbers"
        )
    value = pl.col(column).cast(pl.Float64)
    bad = (
        lf.select((value.is_null() | ~value.is_finite() | (value < 0)).sum())
        .collect(engine="streaming")
        .item()
    )
    if bad:
        examples = (
            lf.filter(value.is_null() | ~value.is_finite() | (value < 0))
            .select(column)
            .head(3)
            .collect()[column]
            .to_list()
        )
        raise DataError(
            f"data.source.weight_column: {bad} value(s) of {column!r} in {path} are "
            f"missing, infinite or negative, such as {examples}; weights must be "
            "finite numbers >= 0"
        )
    return value


def read_image(file: Path, channels: int, where: str = "data.source.path") -> np.ndarray:
    """An image file as the model takes it: (C, H, W) pixels, grey (1) or RGB (3)."""
    import cv2

    image = cv2.imread(str(file), cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"{where}: cannot decode image {file}")
    return image[None] if image.ndim == 2 else image[:, :, ::-1].transpose(2, 0, 1)


def _load_image_folder(source: ImageFolderSource) -> tuple[pl.DataFrame, TableSchema]:
    root = Path(source.path)
    if not root.is_dir():
        raise DataError(f"data.source.path: image folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"data.source.path: {root} has no class sub-folders (class_name/*.png)")
    images, labels, shape = [], [], None
    for name in classes:
        files = (f for f in (root / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        for file in sorted(files):
            chw = read_image(file, source.channels)
            if shape is None:
                shape = chw.shape
            elif chw.shape != shape:
                raise DataError(
                    f"data.source.path: image {file} has shape {chw.shape}, "
                    f"the first image has {shape}; all images must share a size"
                )
            images.append(chw.astype(np.float32).ravel())
            labels.append(name)
    if not images:
        raise DataError(f"data.source.path: no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    df = pl.DataFrame({IMAGE_COLUMN: np.stack(images), "target": labels}).with_columns(
        pl.col(IMAGE_COLUMN).cast(pl.List(pl.Float32))
    )
    return df, TableSchema(
        target="target", features=[IMAGE_COLUMN], classes=classes, image_shape=list(shape or ())
    )


def _generate_sequences(source: SequenceSource) -> tuple[pl.DataFrame, TableSchema]:
    rng = np.random.default_rng(source.seed)
    n, t, c = source.samples, source.length, source.channels
    labels = np.arange(n) % source.classes
    rng.shuffle(labels)
    time = np.linspace(0.0, 1.0, t, endpoint=False)
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    amplitude = rng.uniform(0.5, 1.5, (n, 1))
    x = rng.normal(0.0, source.noise, (n, t, c))
    x[:, :, 0] += amplitude * np.sin(2 * np.pi * (labels[:, None] + 1) * time + phase)
    if c > 1:
        x[:, :, 1:] += np.cumsum(rng.normal(0.0, 0.1, (n, t, c - 1)), axis=1)
    features = [f"t{step:04d}_c{channel}" for step in range(t) for channel in range(c)]
    df = pl.DataFrame(x.reshape(n, t * c).astype(np.float32), schema=features).with_columns(
        pl.Series("target", [f"freq{k + 1}" for k in labels])
    )
    aux = None
    if source.aux:
        df = df.with_columns(pl.Series("amplitude", np.where(amplitude[:, 0] > 1.0, "high", "low")))
        aux = {"amplitude": ["high", "low"]}
    return df, TableSchema(
        target="target",
        features=features,
        classes=[f"freq{k + 1}" for k in range(source.classes)],
        feature_shape=[t, c],
        aux_targets=aux,
    )


def _file_labels(source: FileSource) -> pl.Series:
    lf, layout = _scan_file(source)
    if source.columns:
        lf = _declared(lf, {source.target: source.columns.get(source.target, "str")})
    labels = lf.select(source.target).collect().to_series()
    if layout and labels.null_count():
        check_target_tokens(layout, labels, source.null_values, Path(source.path))
    return labels


def _folder_labels(source: ImageFolderSource) -> pl.Series:
    root = Path(source.path)
    if not root.is_dir():
        raise DataError(f"data.source.path: image folder not found: {root}")
    return pl.Series(
        "target",
        [
            d.name
            for d in sorted(root.iterdir())
            if d.is_dir()
            for f in d.iterdir()
            if f.suffix.lower() in IMAGE_SUFFIXES
        ],
        pl.Utf8,
    )


@dataclass(frozen=True)
class Reader:
    """How one source type is read: the whole table, and its labels alone (by default, the
    target column of the whole table)."""

    load: Callable[[Any], Table]
    labels: Callable[[Any], pl.Series] | None = None

    def read_labels(self, source: Any) -> pl.Series:
        if self.labels is not None:
            return self.labels(source)
        df, schema = self.load(source)
        return df.lazy().select(pl.col(schema.target).cast(pl.Utf8)).collect().to_series()


SKLEARN = Reader(_load_sklearn)
FILE = Reader(_load_file, _file_labels)
IMAGE_FOLDER = Reader(_load_image_folder, _folder_labels)
SEQUENCES = Reader(_generate_sequences)


def load_source(source: Any) -> Table:
    """The declared source as a table and its schema (a lazy query for files)."""
    return registry.SOURCES[source.type].impl.load(source)


def read_labels(source: Any) -> pl.Series:
    """The target column as read (named, with its type), cheaply, for checks before any
    task runs."""
    return registry.SOURCES[source.type].impl.read_labels(source)
