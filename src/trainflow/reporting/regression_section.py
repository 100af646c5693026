"""The report's lines of a regression run (summary["task"] == "regression"): its test
metrics in the target's units with the predicted-vs-actual and residual plots (no confusion
matrix: there are no classes), its training's best validation figures, its ensemble."""

from __future__ import annotations

from trainflow.plots import PREDICTED_VS_ACTUAL, RESIDUALS
from trainflow.reporting.table import table
from trainflow.spec.metric_table import REGRESSION_BASE

REGRESSION_COLUMNS = REGRESSION_BASE  # the CV summary's and the ensemble comparison's columns


def is_regression(summary: dict) -> bool:
    return summary.get("task") == "regression"


def regression_metric_lines(test: dict, evaluated: tuple[str, ...]) -> list[str]:
    """The test metrics (the table's order; mape as a fraction, 0.1 is 10 %) and the plots."""
    shown = [m for m in (*REGRESSION_COLUMNS, *evaluated) if m in test]
    return [
        "",
        "## Test metrics",
        table(["metric", "value"], [[m, test[m]] for m in dict.fromkeys(shown)]),
        "",
        "Predictions in the target's own units (the target scaling inverted); a residual is "
        "actual - predicted.",
        "",
        f"![predicted vs actual (test)]({PREDICTED_VS_ACTUAL})",
        "",
        f"![residuals (test)]({RESIDUALS})",
    ]


def regression_training_figures(t: dict) -> str:
    """The best epoch's validation figures of a regression's training."""
    figures = [(k.removeprefix("val_"), t.get(k)) for k in ("val_rmse", "val_mae", "val_r2")]
    shown = ", ".join(f"{name} {value:.4f}" for name, value in figures if value is not None)
    return f"validation {shown}, loss {t['val_loss']:.4f} (on the scaled target)"


def regression_ensemble_lines(e: dict, test: dict) -> list[str]:
    """A regression's ensemble beside the best single fold model and the trained model."""
    best = e["best_single"]
    header = ["metric", "ensemble", f"best single (fold {best['fold']}, member {best['member']})"]
    rows = [[m, e[m], best.get(m), test.get(m)] for m in REGRESSION_COLUMNS]
    return [
        "",
        f"## Ensemble ({e['type']}: the mean of {e['members']} fold models' predictions, "
        "test part)",
        table([*header, "trained model"], rows),
        "",
        f"members' test rmse: {', '.join(f'{a:.4f}' for a in e['members_rmse'])}",
    ]


def regression_data_lines(data: dict) -> list[str]:
    """Rows and the target's spread per part: the quantile-bin split gives every part its
    share of each decile, so the parts' figures should agree."""
    figures = data.get("target") or {}
    names = ("mean", "std", "min", "median", "max")
    rows = [
        [s, n, *(figures.get(s, {}).get(k, "") for k in names)] for s, n in data["rows"].items()
    ]
    return [table(["split", "rows", *(f"target {k}" for k in names)], rows)]
