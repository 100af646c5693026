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

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from trainflow.artifacts import ArtifactRef, Store, atomic_write_bytes, atomic_write_text
from trainflow.caching import CACHED
from trainflow.metrics import EVALUATED, METRICS
from trainflow.plots import confusion_png, curves_png
from trainflow.steps import scan_parts
from trainflow.tables import IMAGE_COLUMN
from trainflow.tasks.evaluate import CURVES as TEST_CURVES
from trainflow.tasks.evaluate import evaluation_images, evaluation_lines
from trainflow.tasks.explain import PNG as EXPLAIN_PNG
from trainflow.tasks.explain import explanation_lines, publish_explanation
from trainflow.transforms.encode import decode

PREVIEW = "augment_preview.png"
CURVES = "curves.png"
CONFUSION = "confusion.png"
# copied beside the report and embedded in the UI artifact (roc.png, pr.png: evaluate's)
IMAGES = (PREVIEW, CURVES, CONFUSION, "roc.png", "pr.png", EXPLAIN_PNG)
SHOWN = 10  # categories a column's row lists
MAX_COLUMNS = 40  # input columns the Model section lists (sequences have hundreds)


def cv_summary(folds: list[ArtifactRef]) -> dict:
    """Per-fold validation metrics with their mean and (sample) standard deviation."""
    rows = [{"fold": ref.meta["fold"], **{m: ref.meta["val"][m] for m in METRICS}} for ref in folds]
    spread = {m: statistics.stdev(r[m] for r in rows) if len(rows) > 1 else 0.0 for m in METRICS}
    return {
        "folds": rows,
        "mean": {m: statistics.fmean(r[m] for r in rows) for m in METRICS},
        "std": spread,
    }


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
    name: str,
    spec_fingerprint: str,
    data: dict,
    model: ArtifactRef,
    test: ArtifactRef,
    folds: list[ArtifactRef],
    ensemble: ArtifactRef | None,
    compressed: dict[str, ArtifactRef],
    package: str | None = None,
) -> dict:
    """Everything the run measured, as one JSON-ready dict (metrics.json)."""
    parts = data["splits"].meta["parts"]
    return {
        "package": package_summary(package),
        "pipeline": name,
        "spec_fingerprint": spec_fingerprint,
        "data": {
            "rows": {k: v["rows"] for k, v in parts.items()},
            "synthetic_rows": {k: v.get("synthetic", 0) for k, v in parts.items()},
            "train_before_post_split_steps": data["raw_splits"].meta["parts"]["train"],
            "classes": {k: v["classes"] for k, v in parts.items()},
            "ingested_rows": data["table"].count,
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


def _table(header: list[str], rows: list[list]) -> str:
    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def render(summary: dict) -> str:
    out = [
        f"# trainflow report: {summary['pipeline']}",
        f"spec fingerprint `{summary['spec_fingerprint'][:16]}`",
        "",
        "## Data",
    ]
    data = summary["data"]
    classes = list(next(iter(data["classes"].values())))
    raw = data["train_before_post_split_steps"]
    out.append(
        _table(
            ["split", "rows", *classes],
            [[s, n, *data["classes"][s].values()] for s, n in data["rows"].items()]
            + [
                [
                    "train, before post-split steps",
                    raw["rows"],
                    *(raw["classes"][c] for c in classes),
                ]
            ],
        )
    )
    if any(data["synthetic_rows"].values()):
        out.append(
            "\nsynthetic rows (marked `synthetic` = 1): "
            + ", ".join(f"{k} {v}" for k, v in data["synthetic_rows"].items())
        )
    numbers = [r for r in summary["profile"] if "mean" in r]
    others = [r for r in summary["profile"] if "mean" not in r]
    out += ["", "## Data profile (ingested table)"]
    if numbers:
        out += [
            "",
            _table(
                ["column", "type", "missing", "min", "mean", "max"],
                [
                    [r["column"], r["dtype"], r["missing"], r["min"], r["mean"], r["max"]]
                    for r in numbers
                ],
            ),
        ]
    if others:
        out += [
            "",
            _table(
                ["column", "type", "missing", "distinct"],
                [[r["column"], r["dtype"], r["missing"], r.get("distinct", "")] for r in others],
            ),
        ]
    sample = summary.get("training_sample")
    if sample and len(sample[0]) > 1:
        keys = list(sample[0])[:12]
        out += [
            "",
            f"## Training rows as prepared (first {len(sample)}; encoded categories shown by name)",
            "",
            _table(keys, [[row[k] for k in keys] for row in sample]),
        ]
    for found in summary["anomalies"]:
        out += [
            "",
            "## Anomalies",
            f"{found['anomalies']} of {found['rows']} rows flagged where the detector was "
            f"fitted; a sample:",
        ]
        if found["sample"]:
            keys = list(found["sample"][0])
            out += ["", _table(keys, [[row[k] for k in keys] for row in found["sample"]])]
    t = summary["train"]
    out += [
        "",
        "## Training",
        f"best epoch {t['best_epoch']} of {t['epochs_run']} run"
        f"{' (stopped early)' if t['stopped_early'] else ''}; "
        + (
            f"validation accuracy {t['val_accuracy']:.4f}, loss {t['val_loss']:.4f}"
            if t.get("val_loss") is not None
            else "trained on train + validation (train.fit_on), its last epoch the model"
        )
        + (
            f"; **{t['samples_lost']} samples lost to corrupt shards (skipped)**"
            if t.get("samples_lost")
            else ""
        ),
        "",
        "## Test metrics",
        _table(
            ["metric", "value"],
            [[m, summary["test"][m]] for m in EVALUATED if m in summary["test"]]
            # adversarially trained: accuracy under the same attack, beside accuracy
            + [[m, summary["test"][m]] for m in ("robust_accuracy",) if m in summary["test"]],
        ),
        "",
        "Confusion matrix (rows: true class, columns: predicted):",
        "",
        _table(
            ["", *classes],
            [[c, *row] for c, row in zip(classes, summary["test"]["confusion_matrix"])],
        ),
        "",
        f"![confusion matrix]({CONFUSION})",
    ]
    out += evaluation_lines(summary["test"], summary.get("binary_curves", False))
    if summary["cv"]:
        cv = summary["cv"]
        out += [
            "",
            f"## Cross-validation ({len(cv['folds'])} folds, validation metrics)",
            _table(
                ["fold", *METRICS],
                [[r["fold"], *(r[m] for m in METRICS)] for r in cv["folds"]]
                + [["mean", *cv["mean"].values()], ["std", *cv["std"].values()]],
            ),
        ]
    if summary["ensemble"]:
        e = summary["ensemble"]
        out += [
            "",
            f"## Ensemble ({e['type']}, {e['members']} fold models, test part)",
            *ensemble_comparison(e, summary["test"]),
            "",
            f"members' test accuracy: {', '.join(f'{a:.4f}' for a in e['members_accuracy'])}",
        ]
    out += compression_sections(summary["compress"], summary.get("latency"))
    if summary.get("curves"):
        out += ["", "## Training curves", "", f"![training curves]({CURVES})"]
    if summary.get("augment_preview"):
        out += [
            "",
            "## Augmentation preview",
            "originals above, augmented below",
            "",
            f"![augmentation preview]({PREVIEW})",
        ]
    out += explanation_lines(summary.get("explain"))  # evaluate.explain
    out += [
        "",
        "## Models written",
        _table(["model", "path"], [[k, v] for k, v in summary["models"].items()]),
    ]
    out += model_section(summary)
    return "\n".join(out) + "\n"


def model_section(summary: dict) -> list[str]:
    """The package (where, what input it takes, the command that scores new data with it)
    and, in a run's report, the champion decision with both models' metrics side by side."""
    package, champion = summary.get("package"), summary.get("champion")
    if package is None:
        return [
            "",
            "## Model",
            "no model package was made for this run (see the package "
            "step's warning in the run's log)",
        ]
    schema = package["input"]
    # the store's copy names the package by its address in the store (the same anywhere)
    where = (
        package["address"]
        if Path(package["address"]).is_absolute()
        else f"<store>/{package['address']}"
    )
    out = [
        "",
        "## Model",
        f"package: `{where}` ({package['kind']}; classes {', '.join(package['classes'])})",
        "",
        "Score new data with it (CSV, Parquet or "
        "an image folder; `--proba` adds a probability per class):",
        "",
        f"    trainflow predict {where} DATA --output preds.csv",
        "",
        "or with the pipeline's current champion:",
        "",
        f"    trainflow predict {summary['pipeline']} DATA --output preds.csv",
        "",
        f"Input schema ({schema['source']} source; the model predicts `{schema['target']}`):",
        "",
    ]
    columns = list(schema["columns"].items())
    out.append(
        _table(
            ["column", "type", "categories seen in training (unseen: policy)"],
            [
                [
                    c,
                    t,
                    (
                        f"{', '.join(schema['categories'][c][:SHOWN])}"
                        f"{' ...' if len(schema['categories'][c]) > SHOWN else ''} "
                        f"({schema['unknown'].get(c, 'ignore')})"
                    )
                    if c in schema["categories"]
                    else "",
                ]
                for c, t in columns[:MAX_COLUMNS]
            ],
        )
    )
    if len(columns) > MAX_COLUMNS:
        out.append(f"\nand {len(columns) - MAX_COLUMNS} more columns (package.json lists all)")
    for label, key in (
        ("image shape (C, H, W)", "image_shape"),
        ("sequence shape (steps, channels)", "sequence_shape"),
    ):
        if schema.get(key):
            out.append(f"\n{label}: {schema[key]}")
    if schema["keep_columns"]:
        out.append(f"\nid columns carried to the predictions: {', '.join(schema['keep_columns'])}")
    return out + champion_section(champion)


def champion_section(champion: dict | None) -> list[str]:
    if champion is None:  # the store's report: the decision is a run's, in its run folder
        return ["", "### Champion", "decided on each run: see the run folder's report"]
    out = ["", "### Champion", f"decision: **{champion['decision']}**: {champion['reason']}"]
    if champion["decision"] == "none":
        return out
    before = champion["champion_before"]
    theirs = before["metrics"] or {}
    rule = (
        f"rule: {champion['metric']} must beat the champion by more than {champion['min_delta']:g}"
    )
    out += [
        "",
        rule,
        f"both scored on this run's test split ({champion['rows']} raw rows)",
        "",
        _table(
            ["metric", "this run (challenger)", "champion before this run"],
            [
                [("**" + m + "**") if m == champion["metric"] else m, v, theirs.get(m, "-")]
                for m, v in champion["challenger"]["metrics"].items()
            ],
        ),
        "",
        f"challenger: `{champion['challenger']['package']}`",
        f"champion before: `{before['package'] or 'none (first run)'}`",
        f"champion now: `{champion['champion']}`",
    ]
    return out


def ensemble_comparison(ensemble: dict, test: dict) -> list[str]:
    """The ensemble beside the best single fold model (lowest validation loss, so chosen
    without the test part) and the trained model, on the test part."""
    best = ensemble.get("best_single")
    if not best:  # an ensemble made before the comparison was recorded
        return [_table(["metric", "value"], [[m, ensemble[m]] for m in METRICS])]
    header = ["metric", "ensemble", f"best single (fold {best['fold']}, member {best['member']})"]
    rows = [[m, ensemble[m], best[m], test.get(m)] for m in METRICS]
    table = [_table([*header, "trained model"], rows)]
    if "weights" in ensemble:  # weighted: the fitted weights of the members
        table += ["", f"member weights: {', '.join(f'{w:.3f}' for w in ensemble['weights'])}"]
    return table


def compression_sections(compressed: dict, latency: dict | None) -> list[str]:
    """A before/after table per compression; with `latency` (this run's timings), a column
    of CPU milliseconds per batch (before: the trained model)."""
    out = []
    for kind, c in compressed.items():
        header = ["", "size on disk (bytes)", "linear weights (bytes)", "test accuracy"]
        rows = [
            [label, c[label]["size_bytes"], c[label]["linear_weight_bytes"], c[label]["accuracy"]]
            for label in ("before", "after")
        ]
        if latency:
            header.insert(3, f"CPU latency per batch of {latency['batch_size']} (ms)")
            for row, name in zip(rows, ("model", kind)):
                row.insert(3, latency["ms_per_batch"][name])
        out += ["", f"## Compression: {kind} ({c['type']})", _table(header, rows)]
        if kind == "quantize":
            out.append(f"\nlinear weights {c['linear_weights_smaller_x']:.2f}x smaller")
        else:
            out.append(
                f"\nsparsity {c['sparsity']:.4f} (target {c['target_sparsity']}), "
                f"fine-tuned {c['finetune_epochs']} epoch(s)"
            )
    if latency:
        out.append(
            f"\nlatency: median of {latency['repeats']} forward passes on this "
            "machine's CPU, measured on this run"
        )
    return out


@task(name="report", **CACHED)
def write_report(
    name: str,
    spec_fingerprint: str,
    data: dict,
    model: ArtifactRef,
    test: ArtifactRef,
    folds: list[ArtifactRef],
    ensemble: ArtifactRef | None,
    compressed: dict[str, ArtifactRef],
    store: str,
    package: str | None = None,
    explained: ArtifactRef | None = None,
) -> ArtifactRef:
    """Render report.md and metrics.json into the store (`package`: the run's model
    package, named by its store address)."""
    summary = collect(
        name, spec_fingerprint, data, model, test, folds, ensemble, compressed, package
    )
    summary["explain"] = explained.meta["explain"] if explained else None  # evaluate.explain
    target = Store(store)
    with target.writer("report") as staging:
        (staging / "metrics.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
        (staging / "report.md").write_text(render(summary))
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
) -> str:
    """Write the report into runs/<pipeline>/<run>/ and show it in the Prefect UI (every run),
    with this run's `latency` figures (measure_latency) and `champion` decision (promote)."""
    report.verify()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run = Path(runs_dir) / name / f"{stamp}-{flow_run.get_name() or 'local'}"
    run.mkdir(parents=True, exist_ok=True)
    summary = run_summary(report, latency, champion)
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
    """The per-fold CV metrics as a table artifact, and a link artifact per model file and to
    the run folder, so that the UI leads to the files on the machine that ran the flow."""
    publish_explanation(summary.get("explain"), summary["pipeline"], key)
    if summary["cv"]:
        cv = summary["cv"]
        rows = [{"fold": str(r["fold"]), **{m: r[m] for m in METRICS}} for r in cv["folds"]]
        rows += [{"fold": label, **cv[label]} for label in ("mean", "std")]
        create_table_artifact(
            rows,
            key=f"{key}-cv-folds",
            description=f"{summary['pipeline']}: validation metrics per "
            f"cross-validation fold, with mean and std",
        )
    for model, uri in summary["models"].items():
        link = (
            f"{uri.rstrip('/')}/best.pt"
            if "://" in uri
            else (Path(uri) / "best.pt").resolve().as_uri()
        )
        create_link_artifact(
            link,
            link_text=f"{model}: {link}",
            key=f"{key}-{artifact_key(model)}-file",
            description=f"{summary['pipeline']}: {model} weights (best.pt)",
        )
    create_link_artifact(
        run.resolve().as_uri(),
        link_text=str(run.resolve()),
        key=f"{key}-run-folder",
        description=f"{summary['pipeline']}: report.md, metrics.json, plots",
    )
