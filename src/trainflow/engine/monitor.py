"""The early-stopping monitor beyond val_loss and val_accuracy: its value per epoch (only the
metric that picks the best epoch is computed), and a refusal, before training, of a monitor
the validation rows cannot give."""

from __future__ import annotations

import torch

from trainflow.engine.data import Split
from trainflow.engine.setup import Setup
from trainflow.engine.state import TrainingState
from trainflow.errors import TrainflowError
from trainflow.metrics import RANKING, metric_value, undefined


def monitored(monitor: str, val: Split, probs: torch.Tensor) -> dict[str, float]:
    """The early-stopping monitor's value when it is more than val_loss and val_accuracy
    (which every row has): only the metric that picks the best epoch is computed per epoch."""
    if monitor in ("val_loss", "val_accuracy"):
        return {}
    if not len(val):  # no validation rows: no score, as val_loss is then NaN
        return {monitor: float("nan")}
    p = probs.numpy()
    name = monitor.removeprefix("val_")
    return {monitor: metric_value(name, val.y.numpy(), p, p.argmax(1), p.shape[1], WHERE)}


WHERE = "the validation part (train.early_stopping.monitor)"


def check_monitor(run: Setup, state: TrainingState) -> None:
    """Refuse, before any epoch trains, a monitor the validation rows cannot give (ROC AUC
    with a class absent from them)."""
    monitor, val = run.stopping.monitor, run.val
    name = monitor.removeprefix("val_")
    if not len(val) or name not in RANKING:
        return
    with torch.no_grad():  # the model's classes: its output width, on one row
        state.model.eval()
        classes = state.model(val.x[:1].to(run.update.device)).shape[1]
    reason = undefined(name, val.y.numpy(), classes)
    if reason:
        raise TrainflowError(
            f"train.early_stopping.monitor: {monitor} cannot be computed on the validation "
            f"part: {reason}; monitor val_loss or val_f1_macro, or give the validation part "
            "rows of every class (a larger or stratified split)"
        )
