"""Plots for the run report (rendered by the report task, never on the training path)."""

from __future__ import annotations

import io


def curves_png(history: list[dict]) -> bytes:
    """Loss (train, validation) and learning rate per epoch, as one PNG."""
    import matplotlib  # here, not at the top: only rendering a report pays for the import

    matplotlib.use("Agg")  # files only, no display
    from matplotlib.figure import Figure

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
