"""The metric table (trainflow.spec.metric_table): each evaluate metric equals scikit-learn's
on known values, the spec accepts exactly the table's names, and a monitor other than
val_loss picks the best checkpoint and stops training by its own values and direction."""

import numpy as np
import pytest
import torch
from sklearn import metrics as sk

from trainflow import metrics
from trainflow.engine.data import Split
from trainflow.engine.loop import fit
from trainflow.engine.training import optimizer_factory
from trainflow.errors import DataError, TrainflowError
from trainflow.models.mlp import mlp
from trainflow.spec.after_training import EvaluateSpec
from trainflow.spec.metric_table import METRICS, MONITORS
from trainflow.spec.train import EarlyStopping, TrainSpec

Y2 = np.array([0, 1, 1, 0, 1, 0, 1, 1])
P2 = np.array([0.1, 0.7, 0.4, 0.35, 0.9, 0.6, 0.8, 0.55])
PROBS2 = np.stack([1 - P2, P2], axis=1)
Y3 = np.array([0, 1, 2, 2, 1, 0, 2, 1])
PROBS3 = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.2, 0.5, 0.3],
        [0.1, 0.3, 0.6],
        [0.3, 0.3, 0.4],
        [0.5, 0.4, 0.1],
        [0.4, 0.4, 0.2],
        [0.2, 0.2, 0.6],
        [0.1, 0.8, 0.1],
    ]
)


def expected(name: str, y: np.ndarray, probs: np.ndarray) -> float:
    """scikit-learn's figure, called as a user would call it."""
    pred, labels = probs.argmax(1), list(range(probs.shape[1]))
    binary = probs.shape[1] == 2
    return {
        "accuracy": lambda: sk.accuracy_score(y, pred),
        "balanced_accuracy": lambda: sk.balanced_accuracy_score(y, pred),
        "precision_macro": lambda: sk.precision_score(y, pred, average="macro"),
        "recall_macro": lambda: sk.recall_score(y, pred, average="macro"),
        "f1_macro": lambda: sk.f1_score(y, pred, average="macro"),
        "roc_auc": lambda: (
            sk.roc_auc_score(y, probs[:, 1])
            if binary
            else sk.roc_auc_score(y, probs, multi_class="ovr", average="macro")
        ),
        "pr_auc": lambda: (
            sk.average_precision_score(y, probs[:, 1])
            if binary
            else np.mean([sk.average_precision_score(y == k, probs[:, k]) for k in labels])
        ),
        "log_loss": lambda: sk.log_loss(y, probs),
        "brier": lambda: (
            sk.brier_score_loss(y, probs[:, 1])
            if binary
            else np.mean(((np.eye(len(labels))[y] - probs) ** 2).sum(1))
        ),
    }[name]()


@pytest.mark.parametrize("y,probs", [(Y2, PROBS2), (Y3, PROBS3)], ids=["binary", "3 classes"])
@pytest.mark.parametrize(
    "name", [n for n, info in METRICS.items() if n != "ece" and info.task == "classification"]
)
def test_each_metric_equals_scikit_learns(name, y, probs):
    got = metrics.classification_metrics(y, probs, probs.shape[1], [name])[name]
    assert got == pytest.approx(expected(name, y, probs), abs=1e-12)


def test_ece_is_the_weighted_gap_over_15_equal_width_bins():
    # confidences 0.9 (bin 14), 0.9, 0.62 (bin 9), 0.55 (bin 8): two right at 0.9, one
    # right and one wrong below
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.62, 0.38], [0.45, 0.55]])
    y = np.array([0, 1, 0, 0])
    gaps = 2 * abs(1.0 - 0.9) + abs(1.0 - 0.62) + abs(0.0 - 0.55)
    assert metrics.ECE_BINS == 15
    assert metrics.classification_metrics(y, probs, 2, ["ece"])["ece"] == pytest.approx(gaps / 4)
    # two confidences in one bin are averaged before the gap is taken
    same_bin = np.array([[0.61, 0.39], [0.64, 0.36]])
    got = metrics.ece(np.array([0, 1]), same_bin, same_bin.argmax(1), 2)
    assert got == pytest.approx(abs(0.5 - 0.625))


def test_a_ranking_metric_of_a_part_without_a_class_names_it():
    with pytest.raises(DataError, match="roc_auc cannot be computed on the test part.*index"):
        metrics.classification_metrics(
            np.zeros(4, int), PROBS2[:4], 2, ["roc_auc"], where="the test part"
        )


def test_the_spec_takes_exactly_the_tables_names_with_their_direction():
    assert set(EvaluateSpec.model_fields["metrics"].annotation.__args__[0].__args__) == set(METRICS)
    assert set(MONITORS) == {
        "val_loss",
        "val_accuracy",
        "val_balanced_accuracy",
        "val_f1_macro",
        "val_roc_auc",
        "val_pr_auc",
        "val_log_loss",
        "val_rmse",  # a regression's (tests/tasks/test_regression.py)
        "val_mae",
        "val_r2",
    }
    modes = {m: EarlyStopping(monitor=m).mode for m in MONITORS}
    lower = ("val_loss", "val_log_loss", "val_rmse", "val_mae")
    assert modes == {m: "min" if m in lower else "max" for m in MONITORS}
    with pytest.raises(ValueError, match="val_f1_macro"):
        EarlyStopping(monitor="val_f1")


def imbalanced() -> tuple[Split, Split]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 6, generator=g)
    y = ((x[:, 0] + 0.5 * x[:, 1] + 0.8 * torch.randn(400, generator=g)) > 1.0).long()
    return Split(x[:300], y[:300]), Split(x[300:], y[300:])


def train(monitor: str, patience: int, epochs: int = 20):
    spec = TrainSpec.model_validate(
        {
            "lr": 0.01,
            "epochs": epochs,
            "batch_size": 32,
            "device": "cpu",
            "checkpoint_every": 0,
            "early_stopping": {"monitor": monitor, "patience": patience},
        }
    )
    data = imbalanced()
    torch.manual_seed(0)
    net = mlp([6], 2, [16])
    return net, fit(net, *data, spec, 0, optimizer_factory(spec)), data[1]


def test_selection_on_val_f1_macro_keeps_the_epoch_of_the_best_validation_f1():
    net, result, val = train("val_f1_macro", patience=100)
    f1 = [row["val_f1_macro"] for row in result.history]
    loss = [row["val_loss"] for row in result.history]
    best = int(np.argmax(f1)) + 1  # the first epoch at the highest F1
    assert result.best_epoch == best
    assert best != int(np.argmin(loss)) + 1  # where val_loss would have chosen another epoch
    # and the weights kept are that epoch's: their validation F1 is the recorded maximum
    net.load_state_dict(result.best_state)
    net.eval()
    with torch.no_grad():
        pred = net(val.x).argmax(1).numpy()
    assert sk.f1_score(val.y.numpy(), pred, average="macro") == pytest.approx(max(f1))


def test_early_stopping_on_a_metric_to_maximize_stops_after_patience_without_a_rise():
    patience = 2
    _, result, _ = train("val_f1_macro", patience=patience)
    f1 = [row["val_f1_macro"] for row in result.history]
    best, waited = -np.inf, 0  # the rule, replayed on the recorded values
    stop = len(f1)
    for epoch, value in enumerate(f1, start=1):
        best, waited = (value, 0) if value > best else (best, waited + 1)
        if waited >= patience:
            stop = epoch
            break
    assert result.stopped_early and len(result.history) == stop < 20
    assert result.best_epoch == int(np.argmax(f1)) + 1


def test_a_monitor_the_validation_part_cannot_give_is_refused_before_training():
    spec = TrainSpec.model_validate(
        {"epochs": 2, "device": "cpu", "early_stopping": {"monitor": "val_roc_auc"}}
    )
    train_part, val = imbalanced()
    one_class = Split(val.x[val.y == 0], val.y[val.y == 0])
    with pytest.raises(TrainflowError, match="early_stopping.monitor: val_roc_auc.*index.*\\[1\\]"):
        fit(mlp([6], 2, [16]), train_part, one_class, spec, 0, optimizer_factory(spec))
