"""Files for `trainflow predict`: rows to score read from CSV, Parquet or an image folder in
batches, and predictions written in batches to CSV, Parquet or stdout; a file written is
complete or absent (a temporary name, renamed at the end)."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from trainflow.csvscan import sniff_delimiter
from trainflow.errors import DataError, TrainflowError
from trainflow.readers import IMAGE_SUFFIXES, read_image
from trainflow.storage import TMP_PREFIX, out_of_space
from trainflow.tables import IMAGE_COLUMN

if TYPE_CHECKING:
    from trainflow.predictor import Model

OUTPUTS = (".csv", ".parquet")
PATH_COLUMN = "path"  # an image's path inside the folder: the id of its prediction
COPY_CHARS = 4 << 20  # characters transcoded at a time (a UTF-8 copy of another encoding)


@dataclass(frozen=True)
class Rows:
    """Checked rows to score: where they come from and their batches, in order."""

    where: str
    batches: Callable[[], Iterator[pl.DataFrame]]


def read_rows(path: Path, model: Model, typed: bool = False) -> Rows:
    """The rows of a CSV or Parquet file or an image folder, checked against the model's
    input schema before any is scored (a DataError names the first problem). `typed`: a
    CSV's number columns parsed as their types, the check of their values left to the
    parse, which raises NotTyped, while the rows are read, at a value it cannot take (for a
    caller that can start again with typed=False: one writing a file only at the end)."""
    if path.is_dir():
        return _image_rows(path, model)
    if not path.is_file():
        raise DataError(f"DATA: {path} not found (a .csv or .parquet file, or a folder of images)")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        lf = _scan_csv(path, model, typed)
    elif suffix in (".parquet", ".pq"):
        lf = pl.scan_parquet(path)
    else:
        raise DataError(
            f"DATA: {path} is neither a .csv nor a .parquet file nor a folder of images"
        )
    with _reading(path, typed):
        model.check(lf, str(path))
        names = lf.collect_schema().names()
    wanted = [
        c
        for c in names
        if c in model.input_schema["columns"] or c in model.input_schema["keep_columns"]
    ]

    def batches() -> Iterator[pl.DataFrame]:
        chunks = lf.select(wanted).collect_batches(chunk_size=model.batch_rows)
        some = False
        while True:
            with _reading(path, typed):
                chunk = next(chunks, None)
            if chunk is None:
                break
            some = True
            yield chunk
        if not some:  # no rows: the output still has its columns
            yield lf.select(wanted).head(0).collect()

    return Rows(str(path), batches)


def _scan_csv(path: Path, model: Model, typed: bool) -> pl.LazyFrame:
    """The CSV as text: each column converts to its training type, as ingest's. With
    `typed`, the number columns are parsed as their training types straight away (one parse,
    not text and then a conversion); a value that does not parse raises NotTyped when read."""
    file, read = _read_options(path, model)
    text = pl.scan_csv(file, infer_schema=False, **read)
    if not typed:
        return text
    with _reading(path):
        header = text.collect_schema().names()
    numbers = {c: t for c, t in model.types.items() if c in header and t.is_numeric()}
    return (
        pl.scan_csv(file, infer_schema=False, schema_overrides=numbers, **read) if numbers else text
    )


def _read_options(path: Path, model: Model) -> tuple[Path, dict]:
    """The file polars reads and its options, so that rows score as ingest read them: the
    missing-value tokens (`NA`) training read its file with (None: a package before the
    tokens), this file's delimiter, and its text in training's encoding (polars reads UTF-8
    only: another encoding is read through a UTF-8 copy, as ingest reads it)."""
    source = json.loads((model.path / "spec.json").read_text()).get("data", {}).get("source", {})
    encoding = source.get("encoding") or "utf-8"
    with _reading(path):
        delimiter = sniff_delimiter(path, encoding)
    file = path if encoding == "utf-8" else _utf8_copy(path, encoding)
    return file, {"null_values": source.get("null_values") or None, "separator": delimiter}


def _utf8_copy(path: Path, encoding: str) -> Path:
    """A UTF-8 copy of `path` read as `encoding`, beside the process's other temporaries
    (removed at exit), written in blocks of bounded memory."""
    folder = Path(tempfile.gettempdir()) / f"trainflow-scoring-{os.getpid()}"
    if not folder.is_dir():
        folder.mkdir()
        atexit.register(shutil.rmtree, folder, True)
    copy = folder / f"{uuid.uuid4().hex[:12]}-{path.name}"
    try:
        with (
            open(path, encoding=encoding, newline="") as source,
            open(copy, "w", encoding="utf-8", newline="") as sink,
        ):
            shutil.copyfileobj(source, sink, COPY_CHARS)
    except UnicodeDecodeError:
        raise DataError(
            f"DATA: line {_undecodable_line(path, encoding)} of {path} is not {encoding}: its "
            f"model was trained on {encoding} files (data.source.encoding); save it as {encoding}"
        ) from None
    return copy


def _undecodable_line(path: Path, encoding: str) -> int:
    with open(path, "rb") as source:
        for number, line in enumerate(source, start=1):
            try:
                line.decode(encoding)
            except UnicodeDecodeError:
                return number
    return 0  # pragma: no cover - only called once a decode failed


class NotTyped(Exception):
    """A CSV read with its number columns typed (read_rows' `typed`) holds something polars
    cannot read that way: read it again as text, where the input check names the value."""


@contextmanager
def _reading(path: Path, typed: bool = False) -> Iterator[None]:
    """polars' failure to read a file (a malformed line, bytes that are not UTF-8) as one
    DataError naming the file."""
    try:
        yield
    except (pl.exceptions.PolarsError, OSError) as exc:
        if typed and isinstance(exc, pl.exceptions.PolarsError):
            raise NotTyped(str(path)) from None
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"DATA: cannot read {path}: {first}") from None


def _image_rows(root: Path, model: Model) -> Rows:
    """Every image under `root` (sorted by path), each checked for the model's shape."""
    shape = model.input_schema["image_shape"]
    if not shape:
        raise DataError(
            f"DATA: {root} is a folder, but this model scores columns, not images: "
            "pass a .csv or .parquet file"
        )
    files = sorted(f for f in root.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"DATA: no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    for file in files:
        found = list(read_image(file, shape[0], "DATA").shape)
        if found != shape:
            raise DataError(
                f"DATA: image {file} has shape {found} (channels, height, width), "
                f"but the model takes {shape}: resize it to {shape[2]}x{shape[1]} "
                "pixels"
            )

    def batches() -> Iterator[pl.DataFrame]:
        for start in range(0, len(files), model.batch_rows):
            chunk = files[start : start + model.batch_rows]
            pixels = np.stack(
                [read_image(f, shape[0], "DATA").astype(np.float32).ravel() for f in chunk]
            )
            yield pl.DataFrame(
                {PATH_COLUMN: [f.relative_to(root).as_posix() for f in chunk], IMAGE_COLUMN: pixels}
            ).with_columns(pl.col(IMAGE_COLUMN).cast(pl.List(pl.Float32)))

    return Rows(str(root), batches)


def check_output(output: str | None) -> None:
    if output is None:
        return
    path = Path(output)
    if path.suffix.lower() not in OUTPUTS:
        raise TrainflowError(
            f"--output {output}: write a .csv or .parquet file (the extension says which)"
        )
    if not path.parent.is_dir():
        raise TrainflowError(f"--output {output}: folder {path.parent} does not exist")


def write_predictions(batches: Iterator[pl.DataFrame], output: str | None) -> int:
    """Write each batch as it comes; returns the rows written. A file appears complete (a
    temporary beside it, renamed at the end) or not at all."""
    if output is None:
        rows = _write(batches, sys.stdout.buffer, ".csv")
        sys.stdout.flush()
        return rows
    path = Path(output)
    temporary = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}-{path.name}")
    try:
        with open(temporary, "wb") as handle:
            rows = _write(batches, handle, path.suffix.lower())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        reason = out_of_space(exc)
        if reason is None:
            raise
        raise TrainflowError(
            f"--output {output}: no space to write the predictions ({reason}); nothing was written"
        ) from None
    finally:
        temporary.unlink(missing_ok=True)
    return rows


def _write(batches: Iterator[pl.DataFrame], handle: IO[bytes], suffix: str) -> int:
    rows, parquet, first = 0, None, True
    for batch in batches:
        if suffix == ".csv":
            batch.write_csv(handle, include_header=first)
            first = False
        else:
            table = batch.to_arrow()
            parquet = parquet or pq.ParquetWriter(handle, table.schema)
            parquet.write_table(table)
        rows += batch.height
    if parquet is not None:
        parquet.close()
    return rows
