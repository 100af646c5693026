"""Ingest: read the declared data source into a Parquet table artifact."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
from prefect import task

from trainflow import registry
from trainflow.artifacts import ArtifactRef, Store
from trainflow.caching import CACHED
from trainflow.logs import Progress, run_logger
from trainflow.readers import IMAGE_SUFFIXES, check_file, load_source, read_image, read_labels  # noqa: F401
from trainflow.regression_target import load_for_task, source_task
from trainflow.spec.sources import FileSource, ImageFolderSource, SequenceSource, SklearnSource  # noqa: F401
from trainflow.steps import write_parts

Source = registry.union(registry.SOURCES)


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
    return all(footer.row_group(i).num_rows <= MAX_ROW_GROUP for i in range(footer.num_row_groups))


@task(name="ingest", **CACHED)
def ingest(source: Source, store: str, task: str = "auto") -> ArtifactRef:
    """Read the declared source into a Parquet table artifact (images as flat arrays + shape);
    files are streamed, so a file larger than memory passes through. `task` (the spec's)
    decides with the target whether it is class labels or numbers (schema.task), once."""
    progress = Progress("ingest-progress", "source read (50 %), table written (100 %)")
    decided, why = source_task(source, task)
    run_logger().info("%s", why)
    df, schema = load_for_task(source, decided)
    progress.update(0.5)
    stored = Path(source.path) if _stored_as_is(source, df) else df
    table = write_parts(Store(store), "table", {"all": (stored, schema)})
    progress.update(1.0)
    return table
