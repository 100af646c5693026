"""Score: rows of a file or folder through a model package into a predictions file, with the
predicted classes counted and each feature's drift from the training profile measured on the
way (one pass over the data); then the report of it in the Prefect UI."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from trainflow import drift
from trainflow.errors import TrainflowError
from trainflow.logs import Progress, run_logger
from trainflow.predictor import Model, load_model
from trainflow.scorefiles import NotTyped, Rows, read_rows, write_predictions
from trainflow.tasks.ingest import IMAGE_SUFFIXES
from trainflow.tasks.report import artifact_key


@task(name="score")
def score_data(
    pipeline: str, package: str, data: str, output: str, proba: bool, threshold: float
) -> dict[str, Any]:
    """Write one prediction per row of `data` (in its order) to `output`, atomically, with
    a package of `pipeline`; return the row count, the rows per predicted class and the
    drift table."""
    model = load_model(package)
    if model.info.pipeline != pipeline:
        raise TrainflowError(
            f"package {package} is a model of pipeline "
            f"{model.info.pipeline!r}, not of {pipeline!r}: pick a package "
            f"of {pipeline} (or score with its champion)"
        )
    progress = Progress("score-progress", f"scoring {data} with {model.info.pipeline}")
    total = _row_count(Path(data))
    # As `trainflow predict` does: a CSV's numbers parsed as numbers first; the file is
    # written only at the end, so a value that does not parse can start it again as text.
    for typed in (True, False):
        rows = read_rows(Path(data), model, typed)  # checked against the input schema
        counts = drift.DriftCounts(model.info.profile)
        classes: Counter[str] = Counter()
        try:
            written = write_predictions(
                _scored(model, rows, proba, counts, classes, progress, total), output
            )
            break
        except NotTyped:
            continue
    progress.update(1.0)
    table = counts.table(threshold)
    run_logger().info(
        "%d prediction(s) written to %s; drift past %s in %s",
        written,
        output,
        threshold,
        drift.flagged(table) or "no column",
    )
    return {
        "pipeline": model.info.pipeline,
        "package": str(model.path),
        "data": data,
        "output": output,
        "rows": written,
        "classes": {c: classes.get(c, 0) for c in model.classes},
        "drift": table,
        "profiled": bool(model.info.profile),
        "threshold": threshold,
    }


def _scored(
    model: Model,
    rows: Rows,
    proba: bool,
    counts: drift.DriftCounts,
    classes: Counter,
    progress: Progress,
    total: int,
) -> Iterator[pl.DataFrame]:
    """The output batches; each input batch also counted into the drift bins (as the
    model reads it: converted to the training types) and the class counts."""
    done = 0
    for batch in rows.batches():
        if counts.columns and batch.height:
            counts.add(batch.select(*model.converted(batch.collect_schema()).values()))
        out = model.score_batch(batch, proba, rows.where, done)
        classes.update(out["prediction"].to_list())
        done += batch.height
        progress.update(done / max(total, 1))
        yield out


def _row_count(data: Path) -> int:
    """How many rows the progress goes to (a cheap count: metadata, or a scan of lines)."""
    if data.is_dir():
        return sum(1 for f in data.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
    if data.suffix.lower() == ".csv":
        return int(pl.scan_csv(data, infer_schema=False).select(pl.len()).collect().item())
    return pq.ParquetFile(data).metadata.num_rows


@task(name="report_scores")
def report_scores(summary: dict[str, Any], model_source: str) -> str:
    """The run's report in the UI: rows, predicted classes, the drift table (markdown), the
    drift table as a table artifact, and a link to the predictions file."""
    name, threshold = summary["pipeline"], summary["threshold"]
    flagged = drift.flagged(summary["drift"])
    total = max(summary["rows"], 1)
    lines = [
        f"# Scoring: {name}",
        "",
        f"- **{summary['rows']}** row(s) of `{summary['data']}` scored",
        f"- model: {model_source} `{summary['package']}`",
        f"- predictions: `{summary['output']}`",
        f"- drift: {', '.join(f'**{c}**' for c in flagged) if flagged else 'none'}"
        f" (PSI > {threshold})",
        "",
        "## Predicted classes",
        "",
        "| class | rows | share |",
        "|---|---:|---:|",
    ]
    lines += [f"| {c} | {n} | {n / total:.1%} |" for c, n in summary["classes"].items()]
    lines += ["", "## Drift", "", drift.markdown(summary["drift"], threshold, summary["profiled"])]
    markdown = "\n".join(lines)
    key = artifact_key(name)
    create_markdown_artifact(
        markdown,
        key=f"{key}-score-report",
        description=f"trainflow scoring of {summary['data']} by {name}",
    )
    if summary["drift"]:
        create_table_artifact(
            summary["drift"],
            key=f"{key}-score-drift",
            description=f"{name}: PSI per feature against training",
        )
    output = Path(summary["output"]).resolve()
    create_link_artifact(
        output.as_uri(),
        link_text=str(output),
        key=f"{key}-score-predictions",
        description=f"{name}: the predictions of this scoring run",
    )
    return markdown
