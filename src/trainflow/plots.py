"""Plots for the run report (rendered by the report task, never on the training path)."""

from __future__ import annotations

import io

PREDICTED_VS_ACTUAL = "predicted_vs_actual.png"  # a regression's test part
RESIDUALS = "residuals.png"


def curves_png(history: list[dict]) -> bytes:
    """Loss (train, validation) and learning rate per epoch, as one PNG."""
    import matplotlib  # here, not at the top: only rendering a report pays for the import

    matplotlib.use("Agg")  # files only, no display
    from matplotlib.figure import Figure

    history = [row for row in history if "train_loss" in row]  # epoch rows, not step rows
    epochs = [row["epoch"] for row in history]
    figure = Figure(figsize=(8, 3), dpi=100, layout="constrained")
    loss, rate = figure.subplots(1, 2)
    loss.plot(epochs, [r["train_loss"] for r in history], label="train")
    loss.plot(epochs, [r["val_loss"] for r in history], label="validation")
    loss.set(xlabel="epoch", ylabel="loss", title="loss")
    loss.legend()
    rate.plot(epochs, [r.get("lr", float("nan")) for r in history])
    rate.set(xlabel="epoch", ylabel="learning rate", title="learning rate (end of epoch)")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})  # no version stamp
    return buffer.getvalue()


def confusion_png(matrix: list[list[int]], classes: list[str]) -> bytes:
    """The test confusion matrix as a heat map with counts (rows true, columns predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    size = min(2.5 + 0.45 * len(classes), 12)
    figure = Figure(figsize=(size, size), dpi=100, layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(matrix, cmap="Blues")
    top = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            axes.text(
                j,
                i,
                str(count),
                ha="center",
                va="center",
                color="white" if count > top / 2 else "black",
                fontsize=8,
            )
    axes.set_xticks(range(len(classes)), [str(c) for c in classes], rotation=45)
    axes.set_yticks(range(len(classes)), [str(c) for c in classes])
    axes.set(xlabel="predicted", ylabel="true", title="confusion matrix (test)")
    figure.colorbar(image, ax=axes, shrink=0.8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def binary_curves_png(curves: dict) -> dict[str, bytes]:
    """The ROC curve and the precision-recall curve of a binary target's test part (as
    trainflow.metrics.binary_curves gives them), one PNG each: roc.png, pr.png."""
    positive = f"(test, positive class {curves['positive']})"
    roc, pr = curves["roc"], curves["pr"]
    return {
        # the ROC curve joins its points (the trapezoids roc_auc sums), beside chance
        "roc.png": _curve_png(
            roc["fpr"],
            roc["tpr"],
            "false positive rate",
            "true positive rate",
            f"ROC {positive}",
            "default",
            chance=True,
        ),
        # the PR curve in steps, as scikit-learn's PrecisionRecallDisplay draws it
        "pr.png": _curve_png(
            pr["recall"],
            pr["precision"],
            "recall",
            "precision",
            f"precision-recall {positive}",
            "steps-post",
        ),
    }


def _curve_png(
    x: list, y: list, xlabel: str, ylabel: str, title: str, style: str, chance: bool = False
) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.5, 4), dpi=100, layout="constrained")
    axes = figure.subplots()
    axes.plot(x, y, drawstyle=style)
    if chance:
        axes.plot([0, 1], [0, 1], linestyle=":", color="grey")
    axes.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.02), title=title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def regression_pngs(actual, predicted) -> dict[str, bytes]:
    """A regression's test part as two PNGs: predicted against actual with the y = x line
    (a perfect model's points lie on it), and the residuals (actual - predicted) against
    the predictions (a pattern in them is what the model missed), in the target's units."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    actual = np.asarray(actual, dtype=np.float64).ravel()
    predicted = np.asarray(predicted, dtype=np.float64).ravel()
    low = float(min(actual.min(), predicted.min())) if len(actual) else 0.0
    high = float(max(actual.max(), predicted.max())) if len(actual) else 1.0
    out = {}
    figure = Figure(figsize=(4.5, 4), dpi=100, layout="constrained")
    axes = figure.subplots()
    axes.scatter(actual, predicted, s=10, alpha=0.6)
    axes.plot([low, high], [low, high], linestyle=":", color="grey", label="y = x")
    axes.set(xlabel="actual", ylabel="predicted", title="predicted vs actual (test)")
    axes.legend()
    out[PREDICTED_VS_ACTUAL] = _png(figure)
    figure = Figure(figsize=(4.5, 4), dpi=100, layout="constrained")
    axes = figure.subplots()
    axes.scatter(predicted, actual - predicted, s=10, alpha=0.6)
    axes.axhline(0.0, linestyle=":", color="grey")
    axes.set(xlabel="predicted", ylabel="residual (actual - predicted)", title="residuals (test)")
    out[RESIDUALS] = _png(figure)
    return out


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})  # no version stamp
    return buffer.getvalue()
