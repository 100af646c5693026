"""A study's results for people: the trials table, the best spec as YAML, history and
parameter-importance plots, in a run folder and as Prefect UI artifacts."""

from __future__ import annotations

import base64
import io
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import optuna
import yaml

from trainflow.storage import atomic_write_bytes, atomic_write_text

BEST_SPEC = "best_spec.yaml"
IMAGES = ("history.png", "importance.png")


def trial_rows(study: optuna.Study) -> list[dict]:
    """One row per trial: number, state, value, the step a pruned trial stopped at, params."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        rows.append(
            {
                "trial": trial.number,
                "state": trial.state.name.lower(),
                "value": trial.value,
                "pruned_at": trial.user_attrs.get("pruned_at"),
                "params": json.dumps(trial.params, sort_keys=True),
                "seconds": round(trial.duration.total_seconds(), 1) if trial.duration else None,
            }
        )
    return rows


def importances(study: optuna.Study) -> dict[str, float]:
    """Optuna's fANOVA importance of each parameter (seeded); empty below two complete
    trials or with nothing that varied."""
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
    except (ValueError, RuntimeError, ZeroDivisionError):  # too few trials to tell
        return {}


def _figure(width: float, height: float):
    import matplotlib  # here: only a report pays for the import

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def history_png(rows: list[dict], goal: str, metric: str) -> bytes:
    """Each trial's value (pruned ones at their last reported value, as crosses) and the
    best so far."""
    figure = _figure(7, 3)
    axes = figure.subplots()
    done = [r for r in rows if r["state"] == "complete" and r["value"] is not None]
    pruned = [r for r in rows if r["state"] == "pruned" and r["value"] is not None]
    axes.scatter([r["trial"] for r in done], [r["value"] for r in done], label="complete")
    axes.scatter(
        [r["trial"] for r in pruned], [r["value"] for r in pruned], marker="x", label="pruned"
    )
    best, line = None, []
    for row in done:
        value = row["value"]
        if best is None or (value < best if goal == "minimize" else value > best):
            best = value
        line.append((row["trial"], best))
    if line:
        axes.step(*zip(*line), where="post", label="best so far")
    axes.set(xlabel="trial", ylabel=metric, title="optimization history")
    axes.legend()
    return _png(figure)


def importance_png(scores: dict[str, float]) -> bytes:
    figure = _figure(7, 0.6 + 0.35 * max(len(scores), 1))
    axes = figure.subplots()
    names = list(scores)[::-1]
    axes.barh(names, [scores[n] for n in names])
    axes.set(xlabel="importance (fANOVA)", title="parameter importance")
    return _png(figure)


def render(study: optuna.Study, rows: list[dict], scores: dict[str, float], best) -> str:
    metric = study.user_attrs.get("metric", "value")
    lines = [f"# Search: {study.study_name}", ""]
    complete = [r for r in rows if r["state"] == "complete"]
    lines.append(
        f"{len(rows)} trial(s): {len(complete)} complete, "
        f"{sum(r['state'] == 'pruned' for r in rows)} pruned; "
        f"objective: {study.direction.name.lower()} {metric}."
    )
    if best is not None:
        lines += ["", f"Best trial: {study.best_trial.number}, value {study.best_value:.6g}"]
        lines.append(f"({BEST_SPEC} holds its whole spec: `trainflow run {BEST_SPEC}`)")
        lines += ["", "| parameter | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in study.best_trial.params.items()]
    lines += ["", "## Trials", "", "A pruned trial's value is its last reported one; its step"]
    lines.append("counts epochs over its folds (fold j's epoch e: j * epochs + e).")
    lines += ["", "| trial | state | value | pruned at | seconds | params |"]
    lines.append("|---|---|---|---|---|---|")
    for r in rows:
        value = "" if r["value"] is None else f"{r['value']:.6g}"
        pruned = "" if r["pruned_at"] is None else str(r["pruned_at"])
        lines.append(
            f"| {r['trial']} | {r['state']} | {value} | {pruned} | {r['seconds']} "
            f"| `{r['params']}` |"
        )
    lines += ["", "![optimization history](history.png)"]
    if scores:
        lines += ["", "## Parameter importance", "", "![parameter importance](importance.png)"]
    return "\n".join(lines) + "\n"


def publish(storage: str, name: str, best: dict | None, pipeline: str, runs_dir: str) -> str:
    """Write runs/<pipeline>/<stamp>-search/ (report.md, trials.json, best_spec.yaml, plots)
    and the UI's table and markdown artifacts; the folder's path."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    study = optuna.load_study(study_name=name, storage=storage)
    rows = trial_rows(study)
    scores = importances(study)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run = Path(runs_dir) / pipeline / f"{stamp}-search"
    run.mkdir(parents=True, exist_ok=True)
    if best is not None:
        atomic_write_text(run / BEST_SPEC, yaml.safe_dump(best, sort_keys=False))
    atomic_write_text(run / "trials.json", json.dumps(rows, indent=1))
    images = {
        "history.png": history_png(
            rows, study.direction.name.lower(), study.user_attrs.get("metric", "value")
        )
    }
    if scores:
        images["importance.png"] = importance_png(scores)
    markdown = render(study, rows, scores, best)
    atomic_write_text(run / "report.md", markdown)
    for image, png in images.items():
        atomic_write_bytes(run / image, png)
        inline = "data:image/png;base64," + base64.b64encode(png).decode()
        markdown = markdown.replace(f"]({image})", f"]({inline})")
    key = _key(pipeline)
    create_table_artifact(rows, key=f"{key}-trials", description=f"{name}: the study's trials")
    create_markdown_artifact(markdown, key=f"{key}-search", description=f"search {name}")
    return str(run.resolve())


def _key(pipeline: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", pipeline.lower())


# ---- nested cross-validation (search.nested) -------------------------------------------------


def nested_rows(nested: dict) -> list[dict]:
    """One row per outer fold: its outer score beside its study's inner best and choice."""
    return [
        {
            "outer_fold": f["outer_fold"],
            "outer_score": f["score"],
            "inner_best": f["inner_best"],
            "trial": f["trial"],
            "scored_rows": f["scored_rows"],
            "params": json.dumps(f["params"], sort_keys=True),
        }
        for f in nested["folds"]
    ]


def render_nested(nested: dict) -> str:
    name = nested["metric"].removeprefix("val_")
    folds = nested["folds"]
    lines = ["", "## Nested cross-validation", ""]
    lines.append(
        f"Each outer fold's study searched the other outer folds' rows; its best spec was "
        f"trained on them and its {name} measured on the outer fold, which no trial saw."
    )
    lines += [
        "",
        f"**Outer {name} (the tuned pipeline's estimate): {nested['mean']:.6g} "
        f"+/- {nested['std']:.3g}** (sample std over {len(folds)} outer folds); the inner "
        f"bests' mean, {nested['inner_mean']:.6g}, is optimistic (each study kept its best).",
        "",
        "| outer fold | outer score | inner best | trial | scored rows | params |",
        "|---|---|---|---|---|---|",
    ]
    for r in nested_rows(nested):
        lines.append(
            f"| {r['outer_fold']} | {r['outer_score']:.6g} | {r['inner_best']:.6g} "
            f"| {r['trial']} | {r['scored_rows']} | `{r['params']}` |"
        )
    return "\n".join(lines) + "\n"


def publish_nested(run_dir: str, nested: dict, pipeline: str) -> None:
    """Add the nested CV's section to the run folder's report.md, write nested.json, and give
    the UI a table of the outer folds and a markdown artifact of the section."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    run = Path(run_dir)
    section = render_nested(nested)
    atomic_write_text(run / "nested.json", json.dumps(nested, indent=1))
    atomic_write_text(run / "report.md", (run / "report.md").read_text() + section)
    key = _key(pipeline)
    create_table_artifact(
        nested_rows(nested), key=f"{key}-nested", description="nested CV: the outer folds"
    )
    create_markdown_artifact(section, key=f"{key}-nested-cv", description="nested CV")
