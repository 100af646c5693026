"""Calibrated probabilities and a decision threshold (issue 16 part 8): temperature scaling
lowers the validation ECE of an overconfident model; a tuned threshold meets min_recall on
validation and maximizes its metric there; the evaluate task applies both to the test part;
a threshold on a target that is not binary is refused."""

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score

from trainflow.calibration import decide, fit_temperature, tune_threshold
from trainflow.engine.data import Split
from trainflow.engine.inference import predict_logits
from trainflow.engine.loop import fit
from trainflow.engine.model_folder import load_model
from trainflow.engine.training import optimizer_factory
from trainflow.errors import SpecError
from trainflow.metrics import ece
from trainflow.models.mlp import mlp
from trainflow.spec.after_training import EvaluateSpec
from trainflow.spec.model import MLPParams
from trainflow.spec.pipeline import load_spec
from trainflow.spec.train import TrainSpec
from trainflow.tasks.evaluate import evaluate_model, positive_class
from trainflow.tasks.ingest import SklearnSource, ingest
from trainflow.tasks.normalize import NormalizeParams, normalize
from trainflow.tasks.shard import ShardParams, shard
from trainflow.tasks.split import SplitParams, split
from trainflow.tasks.train import load_splits, train_model

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[2]


def noisy_labels() -> tuple[Split, Split]:
    """A learnable rule with a fifth of the labels flipped: a wide net trained long on it
    memorizes the flips and is overconfident on rows it has not seen."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(600, 8, generator=g)
    y = (x[:, 0] - x[:, 1] > 0).long()
    flip = torch.rand(600, generator=g) < 0.2
    y = torch.where(flip, 1 - y, y)
    return Split(x[:400], y[:400]), Split(x[400:], y[400:])


@pytest.mark.slow
def test_temperature_scaling_lowers_the_validation_ece_of_an_overconfident_model():
    train, val = noisy_labels()
    spec = TrainSpec(lr=0.01, batch_size=32, epochs=40, device="cpu", checkpoint_every=0)
    torch.manual_seed(0)
    net = mlp([8], 2, [128, 128])
    fit(net, train, val, spec, 0, optimizer_factory(spec))  # the net keeps its last weights
    _, logits = predict_logits(net, val, 256, CPU)
    y = val.y.numpy()
    before = torch.softmax(logits, 1).numpy()
    temperature = fit_temperature(logits, val.y)
    after = torch.softmax(logits / temperature, 1).numpy()
    assert temperature > 1.5  # overconfident: the logits are softened
    assert ece(y, after, after.argmax(1), 2) < 0.6 * ece(y, before, before.argmax(1), 2)
    assert np.array_equal(after.argmax(1), before.argmax(1))  # the classes stay
    # the temperature minimizes the validation log loss: its neighbours do worse
    nll = [
        torch.nn.functional.cross_entropy(logits / t, val.y).item()
        for t in (temperature * 0.9, temperature, temperature * 1.1)
    ]
    assert nll[1] < nll[0] and nll[1] < nll[2]


PROBS = np.random.default_rng(0).random(200)
Y = (np.random.default_rng(1).random(200) < PROBS).astype(int)  # calibrated-ish scores


@pytest.mark.parametrize("min_recall", [0.5, 0.9, 0.97])
def test_the_threshold_meets_min_recall_and_is_the_most_precise_that_does(min_recall):
    probs = np.stack([1 - PROBS, PROBS], 1)
    tuned = tune_threshold(Y, probs, 1, None, min_recall)
    pred = decide(probs, tuned["value"], 1)
    assert recall_score(Y, pred) >= min_recall
    assert tuned["val_recall"] == pytest.approx(recall_score(Y, pred))
    # no other threshold that meets the recall is more precise
    best = max(
        ((Y & (t <= PROBS)).sum() / (t <= PROBS).sum())
        for t in np.unique(PROBS)
        if recall_score(Y, t <= PROBS) >= min_recall
    )
    assert tuned["val_precision"] == pytest.approx(best)


@pytest.mark.parametrize(
    "metric,score",
    [
        ("f1", lambda y, p: f1_score(y, p)),
        ("f1_macro", lambda y, p: f1_score(y, p, average="macro")),
        ("balanced_accuracy", balanced_accuracy_score),
    ],
)
def test_the_threshold_maximizes_its_metric_on_validation(metric, score):
    probs = np.stack([1 - PROBS, PROBS], 1)
    tuned = tune_threshold(Y, probs, 1, metric, None)
    got = score(Y, decide(probs, tuned["value"], 1))
    assert got == pytest.approx(max(score(Y, (t <= PROBS).astype(int)) for t in np.unique(PROBS)))
    assert tuned[f"val_{metric}"] == pytest.approx(got)
    # the positive class may be the first one: the same rule, mirrored
    mirrored = tune_threshold(1 - Y, probs[:, ::-1], 0, metric, None)
    assert mirrored["value"] == pytest.approx(tuned["value"])


def test_a_threshold_for_a_target_that_is_not_binary_is_refused():
    with pytest.raises(SpecError, match="evaluate.threshold: a decision threshold needs a binary"):
        load_spec(
            ROOT / "pipelines" / "breast_cancer_mlp.yaml",
            ["data.source.dataset=iris", "evaluate.threshold.min_recall=0.9"],
        )
    spec = EvaluateSpec(threshold={"metric": "f1"})
    with pytest.raises(SpecError, match="binary target; this one has 3 classes"):
        positive_class(spec, ["a", "b", "c"])  # a file's target: known at the evaluate task
    with pytest.raises(SpecError, match="'yes' is not a class"):
        positive_class(EvaluateSpec(threshold={"metric": "f1", "positive": "yes"}), ["n", "y"])
    with pytest.raises(ValueError, match="one of metric"):
        EvaluateSpec(threshold={"metric": "f1", "min_recall": 0.9})


@pytest.mark.slow
def test_evaluate_applies_the_temperature_and_threshold_fitted_on_validation(tmp_path):
    store = str(tmp_path / "store")
    table = ingest.fn(SklearnSource(type="sklearn", dataset="breast_cancer"), store)
    raw = split.fn(table, SplitParams(type="split", validation=0.3, test=0.2), 0, store)
    shards = shard.fn(
        normalize.fn(raw, NormalizeParams(type="normalize"), 0, store), ShardParams(), store
    )
    net = MLPParams(type="mlp", hidden_layers=1, units=[32])
    model = train_model.fn(shards, net, TrainSpec(epochs=8, device="cpu"), 0, store)
    spec = EvaluateSpec(
        metrics=["roc_auc", "ece"], calibrate="temperature", threshold={"min_recall": 0.99}
    )
    evaluated = evaluate_model.fn(model, shards, store, spec)
    meta = evaluated.meta
    c, t = meta["calibration"], meta["threshold"]
    assert c["val_ece_after"] <= c["val_ece_before"]  # fitted there: never worse
    net, info = load_model(model)
    parts = load_splits(shards, ("val", "test"))
    for name, part in parts.items():
        _, logits = predict_logits(net, part, 256, CPU)
        probs = torch.softmax(logits / c["temperature"], 1).numpy()
        pred = decide(probs, t["value"], info["classes"].index(t["positive"]))
        if name == "val":
            assert recall_score(part.y.numpy(), pred) >= 0.99
        else:  # the test figures are those of the calibrated, thresholded model
            saved = np.load(evaluated.path / "test_probs.npy")
            assert np.abs(saved - probs).max() < 1e-6
            assert np.array_equal(np.load(evaluated.path / "test_pred.npy"), pred)
            assert meta["recall_macro"] == pytest.approx(
                recall_score(part.y.numpy(), pred, average="macro")
            )
            assert c["test_ece_after"] == pytest.approx(meta["ece"])
    assert (evaluated.path / "curves.json").is_file()  # binary: ROC and PR for the report
