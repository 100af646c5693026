"""Report: report.md and metrics.json for a run, in the store, the run folder and the Prefect UI.

The store's report is content-addressed, so it holds only what the run's inputs determine: the
models are named by their address in the store (`model/<fingerprint>`, as views name their
base), and CPU latency, measured anew on every run, is absent. The run folder's copy and the
UI's markdown artifact add the latency figures and name the models by their full paths."""

from __future__ import annotations

import base64
import json
import re
import shutil
import statistics
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from trainflow import placement
from trainflow.artifacts import ArtifactRef, Store, atomic_write_bytes, atomic_write_text
from trainflow.caching import CACHED
from trainflow.metrics import METRICS
from trainflow.plots import (
    PREDICTED_VS_ACTUAL,
    RESIDUALS,
    confusion_png,
    curves_png,
    regression_pngs,
)
from trainflow.reporting import markdown
from trainflow.reporting.markdown import CONFUSION, CURVES, PREVIEW
from trainflow.reporting.regression_section import REGRESSION_COLUMNS
from trainflow.run_outputs import RunOutputs
from trainflow.steps import scan_parts
from trainflow.tables import IMAGE_COLUMN
from trainflow.tasks.evaluate import CURVES as TEST_CURVES
from trainflow.tasks.evaluate import PREDICTED, TRUE, evaluation_images, evaluation_lines
from trainflow.tasks.explain import PNG as EXPLAIN_PNG
from trainflow.tasks.explain import explanation_lines, publish_explanation
from trainflow.transforms.encode import decode

# copied beside the report and embedded in the UI artifact (roc.png, pr.png: evaluate's)
IMAGES = (PREVIEW, CURVES, CONFUSION, "roc.png", "pr.png", EXPLAIN_PNG)
IMAGES += (PREDICTED_VS_ACTUAL, RESIDUALS)  # a regression's, in place of the confusion matrix


def cv_summary(folds: list[ArtifactRef]) -> dict:
    """Per-fold validation metrics with their mean and (sample) standard deviation: a
    classifier's BASE metrics, or a regression's rmse, mae, r2 and mape."""
    names = REGRESSION_COLUMNS if run_task(folds[0]) == "regression" else METRICS
    rows = [{"fold": ref.meta["fold"], **{m: ref.meta["val"][m] for m in names}} for ref in folds]
    spread = {m: statistics.stdev(r[m] for r in rows) if len(rows) > 1 else 0.0 for m in names}
    return {
        "metrics": list(names),
        "folds": rows,
        "mean": {m: statistics.fmean(r[m] for r in rows) for m in names},
        "std": spread,
        # the rows the folds were drawn from (evaluate.cv.rows) and how many
        "rows": folds[0].meta.get("rows", "train+validation") if folds else None,
        "pool": folds[0].meta.get("pool") if folds else None,
    }


def run_task(model: ArtifactRef) -> str:
    """classification or regression, as the model's (or a fold model's) schema records."""
    return model.data_schema.get("task", "classification")


def target_figures(splits: ArtifactRef) -> dict:
    """A regression target's mean, std, min, median and max in each part (as split left
    them, before the post-split steps)."""
    out = {}
    for name, (frame, schema) in scan_parts(splits).items():
        y = pl.col(schema.target)
        found = frame.select(
            mean=y.mean(), std=y.std(), min=y.min(), median=y.median(), max=y.max()
        ).collect()
        out[name] = {k: float(v) for k, v in found.row(0, named=True).items() if v is not None}
    return out


def training_sample(splits: ArtifactRef, steps: list[ArtifactRef], rows: int = 5) -> list[dict]:
    """The first training rows as the model gets them, with encoded categories shown by name
    again (encode's inverse), so that a reader can check what the steps did."""
    frame = scan_parts(splits)["train"][0].head(rows).collect()
    for ref in steps:
        if ref.meta.get("step") == "encode":
            frame = decode(frame, json.loads((ref.path / "state.json").read_text()))
    if IMAGE_COLUMN in frame.columns:
        frame = frame.drop(IMAGE_COLUMN)
    return frame.to_dicts()


def collect(
    name: str, spec_fingerprint: str, outputs: RunOutputs, package: str | None = None
) -> dict:
    """Everything the run measured, as one JSON-ready dict (metrics.json)."""
    data, model, test, folds = outputs.data, outputs.model, outputs.test, outputs.folds
    ensemble, compressed = outputs.ensemble, outputs.compressed
    parts = data["splits"].meta["parts"]
    regression = run_task(model) == "regression"
    return {
        "package": package_summary(package),
        "pipeline": name,
        "spec_fingerprint": spec_fingerprint,
        "task": "regression" if regression else "classification",
        "data": {
            "rows": {k: v["rows"] for k, v in parts.items()},
            "synthetic_rows": {k: v.get("synthetic", 0) for k, v in parts.items()},
            "train_before_post_split_steps": data["raw_splits"].meta["parts"]["train"],
            "classes": {k: v["classes"] for k, v in parts.items()},
            "ingested_rows": data["table"].count,
            # a regression's target per part (the quantile-bin split keeps them alike)
            **({"target": target_figures(data["raw_splits"])} if regression else {}),
        },
        "profile": data["profile"].meta["profile"],
        "training_sample": training_sample(data["splits"], data["steps"]),
        "anomalies": [
            json.loads((ref.path / "state.json").read_text())["found"]
            for ref in data["steps"]
            if ref.meta.get("step") == "anomalies"
        ],
        "train": dict(model.meta),
        "test": dict(test.meta),
        "cv": cv_summary(folds) if folds else None,
        "ensemble": dict(ensemble.meta) if ensemble else None,
        "compress": {kind: dict(ref.meta) for kind, ref in compressed.items()},
        "augment_preview": (model.path / PREVIEW).is_file(),
        "curves": (model.path / "metrics.jsonl").is_file(),
        "binary_curves": (test.path / TEST_CURVES).is_file(),  # ROC and PR (evaluate)
        "models": {
            "model": address(model),
            **{kind: address(ref) for kind, ref in compressed.items()},
            **{f"fold_{ref.meta['fold']}": address(ref) for ref in folds},
        },
    }


def package_summary(package: str | None) -> dict | None:
    """What the report says of the run's model package: where it is in the store and the
    input it takes (read from the verified package)."""
    if package is None:
        return None
    from trainflow.package import load_package

    found = load_package(package)
    return {
        "address": f"package/{found.path.name}",
        "kind": found.info.kind,
        "input": found.info.input.model_dump(),
        "classes": found.info.classes,
    }


def address(ref: ArtifactRef) -> str:
    """Where an artifact is inside its store, the same wherever the store lives."""
    return f"{ref.kind}/{ref.fingerprint}"


def render(summary: dict) -> str:
    """report.md, with the sections evaluate and explain write of their own results."""
    return markdown.render(
        summary,
        evaluation_lines(summary["test"], summary.get("binary_curves", False)),
        explanation_lines(summary.get("explain")),  # evaluate.explain
    )


@task(name="report", **CACHED)
def write_report(
    name: str,
    spec_fingerprint: str,
    outputs: RunOutputs,
    store: str,
    package: str | None = None,
    explained: ArtifactRef | None = None,
) -> ArtifactRef:
    """Render report.md and metrics.json into the store (`package`: the run's model
    package, named by its store address)."""
    summary = collect(name, spec_fingerprint, outputs, package)
    model, test = outputs.model, outputs.test
    summary["explain"] = explained.meta["explain"] if explained else None  # evaluate.explain
    target = Store(store)
    with target.writer("report") as staging:
        (staging / "metrics.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
        (staging / "report.md").write_text(render(summary))
        if summary["task"] == "regression":  # predicted vs actual, residuals: no classes
            actual, predicted = (np.load(test.path / name) for name in (TRUE, PREDICTED))
            for image, png in regression_pngs(actual, predicted).items():
                (staging / image).write_bytes(png)
        else:
            classes = list(next(iter(summary["data"]["classes"].values())))
            (staging / CONFUSION).write_bytes(
                confusion_png(summary["test"]["confusion_matrix"], classes)
            )
        for image, png in evaluation_images(test).items():  # ROC and PR of a binary target
            (staging / image).write_bytes(png)
        if summary["curves"]:
            history = [
                json.loads(line) for line in (model.path / "metrics.jsonl").read_text().splitlines()
            ]
            (staging / CURVES).write_bytes(curves_png(history))
        if summary["augment_preview"]:
            shutil.copyfile(model.path / PREVIEW, staging / PREVIEW)
        if explained:
            shutil.copyfile(explained.path / EXPLAIN_PNG, staging / EXPLAIN_PNG)
        return target.commit(staging, "report")


def run_summary(report: ArtifactRef, latency: dict | None, champion: dict | None = None) -> dict:
    """The store's metrics.json as a run's: models and package by full path, this run's
    latency and champion decision added."""
    summary = json.loads((report.path / "metrics.json").read_text())
    store = report.path.parent.parent
    summary["models"] = {
        name: str((store / where).resolve()) for name, where in summary["models"].items()
    }
    if summary.get("package"):
        summary["package"]["address"] = str((store / summary["package"]["address"]).resolve())
    if latency:
        summary["latency"] = latency
    if champion:
        summary["champion"] = champion
    return summary


@task(name="publish_report", cache_policy=NO_CACHE)
def publish_report(
    report: ArtifactRef,
    name: str,
    runs_dir: str,
    latency: dict | None = None,
    champion: dict | None = None,
    records: str | None = None,
) -> str:
    """Write the report into runs/<pipeline>/<run>/ and show it in the Prefect UI (every run),
    with this run's `latency` figures (measure_latency), `champion` decision (promote) and
    where each of its steps ran (the trainflow.placement `records` folder)."""
    report.verify()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run = Path(runs_dir) / name / f"{stamp}-{flow_run.get_name() or 'local'}"
    run.mkdir(parents=True, exist_ok=True)
    summary = run_summary(report, latency, champion)
    if records is not None:  # this run's, like the latency: never in the store's report
        summary["placement"] = placement.read(records)
    markdown = render(summary)
    atomic_write_text(run / "report.md", markdown)
    atomic_write_text(run / "metrics.json", json.dumps(summary, indent=1, sort_keys=True))
    for image in IMAGES:
        if (report.path / image).is_file():
            png = (report.path / image).read_bytes()
            atomic_write_bytes(run / image, png)
            # the UI artifact has no folder beside it: embed the image
            inline = "data:image/png;base64," + base64.b64encode(png).decode()
            markdown = markdown.replace(f"]({image})", f"]({inline})")
    key = artifact_key(name)
    create_markdown_artifact(
        markdown, key=f"{key}-report", description=f"trainflow report for {name}"
    )
    publish_tables_and_links(summary, key, run)
    return str(run.resolve())


def artifact_key(name: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) for a pipeline name."""
    return re.sub(r"[^a-z0-9-]+", "-", name.lower())


def publish_tables_and_links(summary: dict, key: str, run: Path) -> None:
    """The per-fold CV metrics as a table artifact (4 digits, as the report rounds them), one
    table of what the run wrote and where (a browser opens no file:// link: the paths are
    text, and a link where the store has a URL), and a link to the run folder."""
    publish_explanation(summary.get("explain"), summary["pipeline"], key)
    if summary["cv"]:
        cv = summary["cv"]
        names = cv.get("metrics", METRICS)  # a regression's rmse, mae, r2, mape
        rows = [{"fold": str(r["fold"]), **{m: r[m] for m in names}} for r in cv["folds"]]
        rows += [{"fold": label, **cv[label]} for label in ("mean", "std")]
        rounded = [
            {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows
        ]
        create_table_artifact(
            rounded,
            key=f"{key}-cv-folds",
            description=f"{summary['pipeline']}: validation metrics per "
            f"cross-validation fold, with mean and std",
        )
    written = [
        {"written": f"{model} weights", "where": f"{uri.rstrip('/')}/best.pt"}
        for model, uri in summary["models"].items()
    ]
    if summary.get("package"):  # the run's deployable model
        written.append({"written": "model package", "where": summary["package"]["address"]})
    written.append({"written": "report.md, metrics.json, plots", "where": str(run.resolve())})
    create_table_artifact(
        written,
        key=f"{key}-files",
        description=f"{summary['pipeline']}: what this run wrote, and where",
    )
    create_link_artifact(
        run.resolve().as_uri(),
        link_text=str(run.resolve()),
        key=f"{key}-run-folder",
        description=f"{summary['pipeline']}: report.md, metrics.json, plots",
    )
