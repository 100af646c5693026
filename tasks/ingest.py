"""Ingest: read a bundled scikit-learn dataset, a CSV/Parquet file or an image folder into Parquet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

import numpy as np
import polars as pl
import pyarrow.parquet as pq
from prefect import task
from pydantic import Field, model_validator

from trainflow.artifacts import ArtifactRef, Store, fingerprint_path
from trainflow.caching import CACHED
from trainflow.csvscan import CsvLayout, scan_csv
from trainflow.csvtypes import check_inferred_types, scan_csv_file
from trainflow.errors import DataError
from trainflow.logs import Progress
from trainflow.spec.base import Section
from trainflow.steps import write_parts
from trainflow.tables import IMAGE_COLUMN, TableSchema

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


class SklearnSource(Section):
    type: Literal["sklearn"]
    dataset: Literal["digits", "breast_cancer", "wine", "iris"]


DTYPES = {"float32": pl.Float32, "float64": pl.Float64, "int8": pl.Int8, "int16": pl.Int16,
          "int32": pl.Int32, "int64": pl.Int64, "bool": pl.Boolean, "str": pl.Utf8,
          "category": pl.Utf8, "date": pl.Date, "datetime": pl.Datetime}
DType = Literal["float32", "float64", "int8", "int16", "int32", "int64", "bool", "str",
                "category", "date", "datetime"]
# Encodings whose newline, comma and quote are the ASCII bytes (the line scan reads bytes).
Encoding = Literal["utf-8", "latin-1", "cp1252", "iso-8859-15"]


class FileSource(Section):
    """A CSV or Parquet file, read lazily and written with the streaming engine.

    `columns` declares the schema: only these columns are read, each converted to its type
    (a value that does not convert is an error listing the column and examples); without it,
    types are inferred. `category` columns are text that an `encode` step turns into numbers.
    """

    type: Literal["csv", "parquet"]
    path: str
    target: str
    columns: dict[str, DType] | None = Field(
        None, description="Declared schema: column -> type; only these columns are read")
    features: list[str] | None = Field(None, description="Feature columns; default all but target")
    keep_columns: list[str] = Field(
        default_factory=list, description="Columns carried along but not used as features "
        "(group ids or timestamps for `split`)")
    weight_column: str | None = Field(
        None, description="A column of per-row loss weights (numbers >= 0), carried through to "
        "the training loss; not a feature")
    aux_targets: list[str] = Field(
        default_factory=list, description="Further target columns, each learned by its own "
        "head over the shared model (multi-task learning); not features")
    encoding: Encoding = Field("utf-8", description="The CSV file's text encoding (others "
                               "than UTF-8 are read through a UTF-8 copy)")
    max_line_bytes: int = Field(
        8 * 2**20, ge=1024, le=2**30, description="The longest line a CSV file may have: a "
        "longer one (no newlines, an unclosed quote) is refused before the file is read")

    @model_validator(mode="after")
    def _csv_only(self):
        if self.type != "csv" and {"encoding", "max_line_bytes"} & self.model_fields_set:
            raise ValueError("encoding and max_line_bytes apply to csv files only")
        return self

    def content_fingerprint(self) -> str:
        """The file's sha256, so that an edited file is never served from the cache."""
        path = Path(self.path)
        return fingerprint_path(path) if path.is_file() else "missing"


class ImageFolderSource(Section):
    type: Literal["image_folder"]
    path: str
    channels: Literal[1, 3] = 1

    def content_fingerprint(self) -> str:
        path = Path(self.path)
        return fingerprint_path(path) if path.is_dir() else "missing"


class SequenceSource(Section):
    """A generated sequence-classification dataset (nothing to download): each sample is
    `length` steps of `channels` signals; the class is the frequency of a sine wave with a
    random phase and amplitude in channel 0, under Gaussian noise, while the other channels
    are noise around a random walk. Reproducible from `seed`."""

    type: Literal["sequences"]
    samples: int = Field(2000, ge=20, le=1_000_000)
    length: int = Field(48, ge=4, le=4096)
    channels: int = Field(2, ge=1, le=64)
    classes: int = Field(3, ge=2, le=16)
    noise: float = Field(0.5, ge=0)
    seed: int = 0
    aux: bool = Field(False, description="add an auxiliary target `amplitude` (low/high: "
                      "the sine's amplitude below or above 1), for multi-task learning")


Source = Annotated[Union[SklearnSource, FileSource, ImageFolderSource, SequenceSource],
                   Field(discriminator="type")]


def _natural_sorted(values: list[str]) -> list[str]:
    return sorted(values, key=lambda v: (0, int(v), v) if v.lstrip("-").isdigit() else (1, 0, v))


def _load_sklearn(source: SklearnSource) -> tuple[pl.DataFrame, TableSchema]:
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{source.dataset}")()
    names = [str(n) for n in bunch.target_names]
    labels = [names[i] for i in bunch.target]
    if source.dataset == "digits":
        images = bunch.images.astype(np.float32).reshape(len(labels), -1)
        df = pl.DataFrame({IMAGE_COLUMN: images, "target": labels})
        df = df.with_columns(pl.col(IMAGE_COLUMN).cast(pl.List(pl.Float32)))
        return df, TableSchema(target="target", features=[IMAGE_COLUMN], classes=names,
                               image_shape=[1, 8, 8])
    features = [str(f) for f in bunch.feature_names]
    df = pl.DataFrame(bunch.data.astype(np.float64), schema=features).with_columns(
        pl.Series("target", labels))
    return df, TableSchema(target="target", features=features, classes=names)


def _scan_file(source: FileSource) -> tuple[pl.LazyFrame, CsvLayout | None]:
    """A lazy scan of the file, after checking that it exists, is readable and has the target
    (and declared) columns; a CSV file's lines are checked first (see trainflow.csvscan), and
    declared columns are read as text from CSV and converted later."""
    path = Path(source.path)
    if not path.is_file():
        raise DataError(f"data.source.path: file not found: {path}")
    layout = scan_csv(path, source.max_line_bytes, source.encoding) if source.type == "csv" \
        else None
    try:
        lf = (scan_csv_file(layout, list(source.columns or {})) if layout
              else pl.scan_parquet(path))
        names = lf.collect_schema().names()
    except Exception as exc:  # polars raises several types for unreadable files
        raise DataError(f"data.source.path: cannot read {source.type} file {path}: "
                        f"{_first_line(exc)}") from None
    if source.target not in names:
        raise DataError(f"data.source.target: column {source.target!r} not in {path}; "
                        f"columns are {names}")
    missing = [c for c in source.columns or {} if c not in names]
    if missing:
        raise DataError(f"data.source.columns: {missing} not in {path}; columns are {names}")
    return lf, layout


def _first_line(exc: Exception) -> str:
    """polars' own first line (the rest of its message suggests polars arguments)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _check_conversions(lf: pl.LazyFrame, declared: dict[str, str], path: Path,
                       layout: CsvLayout | None) -> None:
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
            rows = lf.with_row_index("__row").filter(lost(c)).select("__row", c).head(3) \
                .collect()
            where = f" (the first on {layout.where(rows['__row'][0])})" if layout else ""
            problems.append(f"{c!r} to {declared[c]}: {n} value(s) such as "
                            f"{rows[c].to_list()}{where}")
        raise DataError(f"data.source.columns: cannot convert in {path}: "
                        + "; ".join(problems))


def _blank_as_missing(lf: pl.LazyFrame, declared: dict[str, str]) -> pl.LazyFrame:
    """An empty or blank text cell declared as a non-text type is a missing value."""
    dtypes = lf.collect_schema()
    return lf.with_columns(
        pl.when(pl.col(c).str.strip_chars() != "").then(pl.col(c)).alias(c)
        for c, t in declared.items() if dtypes[c] == pl.Utf8 and DTYPES[t] != pl.Utf8)


def _declared(lf: pl.LazyFrame, declared: dict[str, str]) -> pl.LazyFrame:
    """Only the declared columns, blank cells missing, each cast to its type."""
    lf = _blank_as_missing(lf.select(list(declared)), declared)
    return lf.with_columns(pl.col(c).cast(DTYPES[t]) for c, t in declared.items())


def _roles(source: FileSource, dtypes: pl.Schema, path: Path) -> tuple[list[str], list[str]]:
    """The feature columns and the columns carried along (not features, not the target)."""
    kept = (source.keep_columns + ([source.weight_column] if source.weight_column else [])
            + source.aux_targets)
    features = source.features or [c for c in dtypes if c not in (source.target, *kept)]
    missing = [c for c in features + kept if c not in dtypes]
    if missing:
        raise DataError(f"data.source: columns {missing} not in {path}; columns are "
                        f"{dtypes.names()}")
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
    if source.columns:
        _check_conversions(_blank_as_missing(lf.select(list(source.columns)), source.columns),
                           source.columns, path, layout)
    elif layout:
        features, kept = _roles(source, lf.collect_schema(), path)
        weight = [source.weight_column] if source.weight_column else []
        check_inferred_types(lf, layout, path, features + weight,
                             [*features, *kept, source.target])
    _CHECKED.add(key)


def _load_file(source: FileSource) -> tuple[pl.LazyFrame, TableSchema]:
    path = Path(source.path)
    check_file(source)
    lf, _ = _scan_file(source)
    if source.columns:
        lf = _declared(lf, source.columns)
    dtypes = lf.collect_schema()
    features, kept = _roles(source, dtypes, path)
    # Text columns stay text (categories); an `encode` step turns them into numbers.
    lf = lf.select(*(pl.col(c) if dtypes[c].is_numeric() else pl.col(c).cast(pl.Utf8)
                     for c in features), *kept, pl.col(source.target).cast(pl.Utf8))
    labels = lf.select(source.target).drop_nulls().unique().collect(engine="streaming")
    classes = _natural_sorted(labels[source.target].to_list())
    if source.weight_column:
        lf = lf.with_columns(_checked_weights(lf, source.weight_column, dtypes, path))
    aux = {}
    for column in source.aux_targets:
        lf = lf.with_columns(pl.col(column).cast(pl.Utf8))
        values = lf.select(column).drop_nulls().unique().collect(engine="streaming")
        aux[column] = _natural_sorted(values[column].to_list())
    return lf, TableSchema(target=source.target, features=features, classes=classes,
                           weight=source.weight_column, aux_targets=aux or None)


MAX_ROW_GROUP = 1 << 20  # rows: larger groups would be read whole by the streaming engine


def _stored_as_is(source: Source, table: pl.DataFrame | pl.LazyFrame) -> bool:
    """Whether a Parquet source already is the table ingest writes, so that its bytes are
    stored instead of decoded and encoded again: ingest's query only selects and casts, so
    when its result has the file's columns in the file's order with the file's types, it
    reads the file unchanged. Row groups must be small enough to stream."""
    if not isinstance(source, FileSource) or source.type != "parquet":
        return False
    path = Path(source.path)
    if table.lazy().collect_schema() != pl.scan_parquet(path).collect_schema():
        return False
    footer = pq.read_metadata(path)
    return all(footer.row_group(i).num_rows <= MAX_ROW_GROUP
               for i in range(footer.num_row_groups))


def _checked_weights(lf: pl.LazyFrame, column: str, dtypes, path: Path) -> pl.Expr:
    """The weight column as float64, after checking every value is a finite number >= 0."""
    if not dtypes[column].is_numeric():
        raise DataError(f"data.source.weight_column: {column!r} in {path} holds "
                        f"{dtypes[column]}, not numbers")
    value = pl.col(column).cast(pl.Float64)
    bad = lf.select((value.is_null() | ~value.is_finite() | (value < 0)).sum()).collect(
        engine="streaming").item()
    if bad:
        examples = lf.filter(value.is_null() | ~value.is_finite() | (value < 0)).select(
            column).head(3).collect()[column].to_list()
        raise DataError(f"data.source.weight_column: {bad} value(s) of {column!r} in {path} are "
                        f"missing, infinite or negative, such as {examples}; weights must be "
                        "finite numbers >= 0")
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
        for file in sorted(f for f in (root / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES):
            chw = read_image(file, source.channels)
            if shape is None:
                shape = chw.shape
            elif chw.shape != shape:
                raise DataError(f"data.source.path: image {file} has shape {chw.shape}, "
                                f"the first image has {shape}; all images must share a size")
            images.append(chw.astype(np.float32).ravel())
            labels.append(name)
    if not images:
        raise DataError(f"data.source.path: no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    df = pl.DataFrame({IMAGE_COLUMN: np.stack(images), "target": labels}).with_columns(
        pl.col(IMAGE_COLUMN).cast(pl.List(pl.Float32)))
    return df, TableSchema(target="target", features=[IMAGE_COLUMN], classes=classes,
                           image_shape=list(shape))


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
        pl.Series("target", [f"freq{k + 1}" for k in labels]))
    aux = None
    if source.aux:
        df = df.with_columns(pl.Series("amplitude", np.where(amplitude[:, 0] > 1.0, "high",
                                                             "low")))
        aux = {"amplitude": ["high", "low"]}
    return df, TableSchema(target="target", features=features,
                           classes=[f"freq{k + 1}" for k in range(source.classes)],
                           feature_shape=[t, c], aux_targets=aux)


LOADERS = {"sequences": _generate_sequences, "sklearn": _load_sklearn, "csv": _load_file, "parquet": _load_file,
           "image_folder": _load_image_folder}


def load_source(source: SklearnSource | FileSource | ImageFolderSource | SequenceSource):
    return LOADERS[source.type](source)


@task(name="ingest", **CACHED)
def ingest(source: Source, store: str) -> ArtifactRef:
    """Read the declared source into a Parquet table artifact (images as flat arrays + shape);
    files are streamed, so a file larger than memory passes through."""
    progress = Progress("ingest-progress", "source read (50 %), table written (100 %)")
    df, schema = load_source(source)
    progress.update(0.5)
    stored = Path(source.path) if _stored_as_is(source, df) else df
    table = write_parts(Store(store), "table", {"all": (stored, schema)})
    progress.update(1.0)
    return table


def read_labels(source: SklearnSource | FileSource | ImageFolderSource | SequenceSource
                ) -> pl.Series:
    """The target column as read (named, with its type), cheaply, for checks before any
    task runs."""
    if isinstance(source, FileSource):
        lf, _ = _scan_file(source)
        if source.columns:
            lf = _declared(lf, {source.target: source.columns.get(source.target, "str")})
        return lf.select(source.target).collect().to_series()
    if isinstance(source, ImageFolderSource):
        root = Path(source.path)
        if not root.is_dir():
            raise DataError(f"data.source.path: image folder not found: {root}")
        return pl.Series("target", [d.name for d in sorted(root.iterdir()) if d.is_dir()
                                    for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES],
                         pl.Utf8)
    df, schema = load_source(source)
    return df[schema.target].cast(pl.Utf8)
