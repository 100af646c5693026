"""The report's Model section: the run's package, the input it takes, the command that
scores new data with it, and the champion decision."""

from __future__ import annotations

from pathlib import Path

from trainflow.reporting.table import table

SHOWN = 10  # categories a column's row lists
MAX_COLUMNS = 40  # input columns the Model section lists (sequences have hundreds)


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
    regression = summary.get("task") == "regression"
    predicts = (
        "a number, in the target's units"
        if regression
        else f"classes {', '.join(package['classes'])}"
    )
    out = [
        "",
        "## Model",
        f"package: `{where}` ({package['kind']}; {predicts})",
        "",
        "Score new data with it (CSV, Parquet or an image folder"
        + ("):" if regression else "; `--proba` adds a probability per class):"),
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
    return out + input_lines(schema) + champion_section(champion)


def input_lines(schema: dict) -> list[str]:
    """The package's input columns (categories seen in training and the policy for unseen
    ones), and the shapes and id columns it takes."""
    columns = list(schema["columns"].items())
    out = [
        table(
            ["column", "type", "categories seen in training (unseen: policy)"],
            [[c, t, categories(schema, c)] for c, t in columns[:MAX_COLUMNS]],
        )
    ]
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
    return out


def categories(schema: dict, column: str) -> str:
    if column not in schema["categories"]:
        return ""
    seen = schema["categories"][column]
    return (
        f"{', '.join(seen[:SHOWN])}{' ...' if len(seen) > SHOWN else ''} "
        f"({schema['unknown'].get(column, 'ignore')})"
    )


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
        table(
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
