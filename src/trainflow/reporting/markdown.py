"""report.md: the run's summary (metrics.json) rendered section by section.

The evaluation's and the explanation's lines are written by their own task modules
(`tasks/evaluate.py`, `tasks/explain.py`) and handed in by the report task."""

from __future__ import annotations

from trainflow.metrics import EVALUATED, METRICS
from trainflow.reporting.distill_section import (
    distill_lines,
    quantized_of,
    quantized_student_lines,
)
from trainflow.reporting.gate_section import gate_lines
from trainflow.reporting.model_section import model_section
from trainflow.reporting.placement_section import placement_lines
from trainflow.reporting.regression_section import (
    is_regression,
    regression_data_lines,
    regression_ensemble_lines,
    regression_metric_lines,
    regression_training_figures,
)
from trainflow.reporting.table import table

PREVIEW = "augment_preview.png"
CURVES = "curves.png"
CONFUSION = "confusion.png"


def render(summary: dict, evaluation: list[str], explanation: list[str]) -> str:
    """The report: `evaluation` follows the test metrics, `explanation` the plots."""
    out = [
        f"# trainflow report: {summary['pipeline']}",
        f"spec fingerprint `{summary['spec_fingerprint'][:16]}`",
    ]
    # the result first (what a reader opens the report for), then how it came about
    if is_regression(summary):  # numbers: no classes, no confusion matrix
        out += regression_metric_lines(summary["test"], EVALUATED)
    else:
        out += metric_lines(summary["test"], classes_of(summary))
    out += evaluation
    out += ["", "## Data"]
    out += (
        regression_data_lines(summary["data"])  # the target's spread per part
        if is_regression(summary)
        else data_lines(summary["data"])
    )
    out += profile_lines(summary["profile"])
    out += sample_lines(summary.get("training_sample"))
    out += anomaly_lines(summary["anomalies"])
    out += training_lines(summary["train"])
    out += cv_lines(summary["cv"])
    if is_regression(summary) and summary["ensemble"]:
        out += regression_ensemble_lines(summary["ensemble"], summary["test"])
    else:
        out += ensemble_lines(summary["ensemble"], summary["test"])
    out += compression_sections(summary["compress"], summary.get("latency"))
    out += picture_lines(summary)
    out += explanation  # evaluate.explain
    out += [
        "",
        "## Models written",
        table(["model", "path"], [[k, v] for k, v in summary["models"].items()]),
    ]
    out += model_section(summary)
    out += placement_lines(summary.get("placement"))  # a run's report only
    return "\n".join(out) + "\n"


def classes_of(summary: dict) -> list[str]:
    """The target's classes, in the order the data section counts them."""
    return list(next(iter(summary["data"]["classes"].values())))


def data_lines(data: dict) -> list[str]:
    """Rows and class counts per part, and before the post-split steps."""
    classes = list(next(iter(data["classes"].values())))
    raw = data["train_before_post_split_steps"]
    out = [
        table(
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
    ]
    if any(data["synthetic_rows"].values()):
        out.append(
            "\nsynthetic rows (marked `synthetic` = 1): "
            + ", ".join(f"{k} {v}" for k, v in data["synthetic_rows"].items())
        )
    return out


def profile_lines(profile: list[dict]) -> list[str]:
    """The ingested table's columns: numbers with their range, the others with their count
    of distinct values."""
    numbers = [r for r in profile if "mean" in r]
    others = [r for r in profile if "mean" not in r]
    out = ["", "## Data profile (ingested table)"]
    if numbers:
        out += [
            "",
            table(
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
            table(
                ["column", "type", "missing", "distinct"],
                [[r["column"], r["dtype"], r["missing"], r.get("distinct", "")] for r in others],
            ),
        ]
    notes = [r for r in profile if r.get("note")]  # id-like, constant, text by a few words
    if notes:
        out += ["", *(f"- **{r['column']}**: {r['note']}" for r in notes)]
    return out


def sample_lines(sample: list[dict] | None) -> list[str]:
    if not sample or len(sample[0]) <= 1:
        return []
    keys = list(sample[0])[:12]
    return [
        "",
        f"## Training rows as prepared (first {len(sample)}; encoded categories shown by name)",
        "",
        table(keys, [[row[k] for k in keys] for row in sample]),
    ]


def anomaly_lines(anomalies: list[dict]) -> list[str]:
    out = []
    for found in anomalies:
        out += [
            "",
            "## Anomalies",
            f"{found['anomalies']} of {found['rows']} rows flagged where the detector was "
            f"fitted; a sample:",
        ]
        if found["sample"]:
            keys = list(found["sample"][0])
            out += ["", table(keys, [[row[k] for k in keys] for row in found["sample"]])]
    return out


def training_lines(t: dict) -> list[str]:
    return [
        "",
        "## Training",
        f"best epoch {t['best_epoch']} of {t['epochs_run']} run"
        f"{' (stopped early)' if t['stopped_early'] else ''}; "
        + (
            (
                f"validation accuracy {t['val_accuracy']:.4f}, loss {t['val_loss']:.4f}"
                if "val_accuracy" in t
                else regression_training_figures(t)  # a regression's best validation figures
            )
            if t.get("val_loss") is not None
            else "trained on train + validation (train.fit_on), its last epoch the model"
        )
        + (
            f"; **{t['samples_lost']} samples lost to corrupt shards (skipped)**"
            if t.get("samples_lost")
            else ""
        ),
    ]


def metric_lines(test: dict, classes: list[str]) -> list[str]:
    return [
        "",
        "## Test metrics",
        table(
            ["metric", "value"],
            [[m, test[m]] for m in EVALUATED if m in test]
            # adversarially trained: accuracy under the same attack, beside accuracy
            + [[m, test[m]] for m in ("robust_accuracy",) if m in test],
        ),
        "",
        "Confusion matrix (rows: true class, columns: predicted):",
        "",
        table(["", *classes], [[c, *row] for c, row in zip(classes, test["confusion_matrix"])]),
        "",
        f"![confusion matrix]({CONFUSION})",
    ]


def cv_lines(cv: dict | None) -> list[str]:
    if not cv:
        return []
    columns = cv.get("metrics", METRICS)  # a regression's: rmse, mae, r2, mape
    return [
        "",
        f"## Cross-validation ({len(cv['folds'])} folds, validation metrics)",
        "",
        cv_rows_line(cv),
        table(
            ["fold", *columns],
            [[r["fold"], *(r[m] for m in columns)] for r in cv["folds"]]
            # by name: metrics.json sorts its keys, so a run's summary has them in another order
            + [[label, *(cv[label].get(m, "") for m in columns)] for label in ("mean", "std")],
        ),
    ]


def cv_rows_line(cv: dict) -> str:
    """Which rows the folds were drawn from (evaluate.cv.rows), said beside the scores."""
    rows = f"{cv['pool']} " if cv.get("pool") else ""
    if cv.get("rows") == "all":
        return (
            f"The folds are drawn from all {rows}rows, the test part included "
            "(evaluate.cv.rows: all); each fold is scored on its held-out rows."
        )
    return (
        f"The folds are drawn from the {rows}train + validation rows; each fold is scored "
        "on its held-out rows, and the test part stays out of them (evaluate.cv.rows: all "
        "draws them from every row)."
    )


def ensemble_lines(e: dict | None, test: dict) -> list[str]:
    if not e:
        return []
    return [
        "",
        f"## Ensemble ({e['type']}, {e['members']} fold models, test part)",
        *ensemble_comparison(e, test),
        "",
        f"members' test accuracy: {', '.join(f'{a:.4f}' for a in e['members_accuracy'])}",
    ]


def ensemble_comparison(ensemble: dict, test: dict) -> list[str]:
    """The ensemble beside the best single fold model (lowest validation loss, so chosen
    without the test part) and the trained model, on the test part."""
    best = ensemble.get("best_single")
    if not best:  # an ensemble made before the comparison was recorded
        return [table(["metric", "value"], [[m, ensemble[m]] for m in METRICS])]
    header = ["metric", "ensemble", f"best single (fold {best['fold']}, member {best['member']})"]
    rows = [[m, ensemble[m], best[m], test.get(m)] for m in METRICS]
    lines = [table([*header, "trained model"], rows)]
    if "weights" in ensemble:  # weighted: the fitted weights of the members
        lines += ["", f"member weights: {', '.join(f'{w:.3f}' for w in ensemble['weights'])}"]
    return lines


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
            for row, name in zip(rows, (quantized_of(kind, c), kind)):  # (distill.quantize)
                row.insert(3, latency["ms_per_batch"][name])
        out += ["", f"## Compression: {kind} ({c['type']})", table(header, rows)]
        if kind == "quantize":
            out.append(f"\nlinear weights {c['linear_weights_smaller_x']:.2f}x smaller")
            out += quantized_student_lines(c)
        elif kind == "distill":  # compress.distill: the student beside the teacher
            out += distill_lines(c)
        elif "structured" in c:  # whole units removed: a smaller model, not a sparser one
            was, now = c["structured"]["before"], c["structured"]["after"]
            out.append(
                f"\nparameters {was['parameters']} -> {now['parameters']}, FLOPs per sample "
                f"{was['flops']} -> {now['flops']} ({c['target_sparsity']} of each pruned "
                f"layer's units removed in {c['steps']} step(s), fine-tuned "
                f"{c['finetune_epochs']} epoch(s) after each)"
            )
        else:
            out.append(
                f"\nsparsity {c['sparsity']:.4f} (target {c['target_sparsity']}), "
                f"fine-tuned {c['finetune_epochs']} epoch(s)"
            )
        out += gate_lines(kind, c)  # compress.gate
    if latency:
        out.append(
            f"\nlatency: median of {latency['repeats']} forward passes on this "
            "machine's CPU, measured on this run"
        )
    return out


def picture_lines(summary: dict) -> list[str]:
    """The training curves and the augmentation preview, where the run made them."""
    out = []
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
    return out
