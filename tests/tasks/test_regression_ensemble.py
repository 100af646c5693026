"""A regression's ensemble averages its fold models' predictions in the target's units
(`ensemble.type: mean`); the kinds that combine class probabilities are refused by name
(issue 19, part 7)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from trainflow.artifacts import ArtifactRef, Store
from trainflow.errors import TrainflowError
from trainflow.spec.ensemble import MeanParams, StackingParams, regression_refusal
from trainflow.tasks.ensemble import ensemble_folds

RNG = np.random.default_rng(0)
TRUTH = RNG.normal(150.0, 60.0, 40)  # the test part's target, in its own units


def fold_model(store: Store, fold: int, preds: np.ndarray, val_loss: float) -> ArtifactRef:
    """A fold model's artifact as tasks/fold.py leaves a regression's: its test
    predictions and the test part's true values, its scores in meta."""
    with store.writer("model") as staging:
        np.save(staging / "test_preds.npy", preds, allow_pickle=False)
        np.save(staging / "test_labels.npy", TRUTH, allow_pickle=False)
        rmse = float(np.sqrt(np.mean((preds - TRUTH) ** 2)))
        (staging / "fold.json").write_text(json.dumps({"fold": fold}))
        return store.commit(
            staging,
            "model",
            count=100,
            schema={"classes": [], "input_shape": [3], "task": "regression"},
            meta={
                "fold": fold,
                # each fold's loss is on its own scaled target: the rmse orders them otherwise
                "val": {"loss": val_loss, "rmse": 30.0 - fold},
                "test": {"rmse": rmse},
            },
        )


@pytest.fixture
def folds(tmp_path):
    store = Store(str(tmp_path))
    noise = [RNG.normal(0, 20.0, len(TRUTH)) + bias for bias in (-15.0, 5.0, 12.0)]
    return str(tmp_path), [fold_model(store, i, TRUTH + n, 400.0 + i) for i, n in enumerate(noise)]


def test_mean_averages_the_fold_predictions_and_scores_them_in_target_units(folds):
    store, refs = folds
    result = ensemble_folds.fn(refs, MeanParams(type="mean"), store)
    preds = [np.load(ref.path / "test_preds.npy") for ref in refs]
    mean = np.mean(np.stack(preds).astype(np.float64), axis=0)
    combined = np.load(result.path / "test_preds.npy")
    np.testing.assert_array_equal(combined, mean)
    truth = TRUTH
    assert result.meta["rmse"] == pytest.approx(mean_squared_error(truth, combined) ** 0.5)
    assert result.meta["mae"] == pytest.approx(mean_absolute_error(truth, combined))
    assert result.meta["r2"] == pytest.approx(r2_score(truth, combined))
    # the errors partly cancel: the mean beats every fold model on the test part
    assert result.meta["rmse"] < min(result.meta["members_rmse"])
    assert result.meta["best_single"]["fold"] == 2  # the lowest validation rmse
    state = json.loads((result.path / "combine.json").read_text())
    assert state == {"kind": "mean", "groups": [0, 0, 0]}
    assert result.meta["task"] == "regression" and result.meta["members"] == 3


def test_classification_ensembles_are_refused_for_a_regression_naming_mean(folds):
    store, refs = folds
    with pytest.raises(TrainflowError, match=r"stacking fits a logistic regression.*type mean"):
        ensemble_folds.fn(refs, StackingParams(type="stacking"), store)
    for kind in ("soft_vote", "hard_vote", "weighted", "soup", "top_k_trials"):
        assert "use ensemble.type mean" in (regression_refusal(kind) or "")
    assert regression_refusal("mean") is None
    from trainflow.errors import SpecError
    from trainflow.spec.pipeline import validate_spec

    declared = {
        "name": "t",
        "task": "regression",
        "data": {
            "source": {"type": "sklearn", "dataset": "diabetes"},
            "steps": [{"type": "split"}],
        },
        "model": {"type": "mlp"},
        "evaluate": {"cv": {"folds": 3}},
    }
    with pytest.raises(SpecError, match="soft_vote averages class probabilities"):
        validate_spec({**declared, "ensemble": {"type": "soft_vote"}})
    assert validate_spec({**declared, "ensemble": {"type": "mean"}}).ensemble.type == "mean"
    # and mean is a regression's: a classifier's fold models average with soft_vote, said
    # at validation where the spec tells the task, else by the ensemble task
    with Store(store).writer("model") as staging:
        (staging / "fold.json").write_text("{}")
        classifier = Store(store).commit(
            staging, "model", 1, {"classes": ["a", "b"], "input_shape": [3]}, {"fold": 0}
        )
    with pytest.raises(TrainflowError, match="holds class labels: use soft_vote"):
        ensemble_folds.fn([classifier], MeanParams(type="mean"), store)
    iris = {**declared, "task": "auto"}
    iris["data"] = {**declared["data"], "source": {"type": "sklearn", "dataset": "iris"}}
    with pytest.raises(SpecError, match="target holds class labels: use soft_vote"):
        validate_spec({**iris, "ensemble": {"type": "mean"}})


def test_regression_folds_score_in_target_units_and_their_mean_ensembles(tmp_path):
    """Three real fold models of scikit-learn's diabetes table: each fold's figures are its
    saved predictions' (scikit-learn's rmse, in the target's units), the CV summary reads
    rmse, mae, r2 and mape, and `mean` averages the folds' test predictions."""
    from trainflow.spec.pipeline import validate_spec
    from trainflow.tasks.fold import train_fold
    from trainflow.tasks.ingest import ingest
    from trainflow.tasks.report import cv_summary
    from trainflow.tasks.split import split

    spec = validate_spec(
        {
            "name": "diabetes_cv",
            "task": "regression",
            "data": {
                "source": {"type": "sklearn", "dataset": "diabetes"},
                "steps": [{"type": "split"}, {"type": "normalize", "method": "standard"}],
            },
            "model": {"type": "mlp", "hidden_layers": 1, "units": [16]},
            "train": {"epochs": 4, "lr": 0.01},
            "evaluate": {"cv": {"folds": 3}},
            "ensemble": {"type": "mean"},
        }
    )
    store = str(tmp_path)
    splits = split.fn(ingest.fn(spec.data.source, store), spec.data.steps[0], 0, store)
    folds = [
        train_fold.fn(splits, f, 3, spec.data.post_split, spec.model, spec.train, 0, store)
        for f in range(3)
    ]
    target = np.load(folds[0].path / "test_labels.npy")
    assert target.dtype == np.float64 and target.min() >= 25  # the progression score itself
    for ref in folds:
        assert ref.data_schema["task"] == "regression"
        preds = np.load(ref.path / "test_preds.npy")
        assert ref.meta["test"]["rmse"] == pytest.approx(mean_squared_error(target, preds) ** 0.5)
        held, truth = np.load(ref.path / "val_preds.npy"), np.load(ref.path / "val_labels.npy")
        assert ref.meta["val"]["mae"] == pytest.approx(mean_absolute_error(truth, held), rel=1e-5)
    summary = cv_summary(folds)
    assert summary["metrics"] == ["rmse", "mae", "r2", "mape"]
    assert summary["mean"]["rmse"] == pytest.approx(
        np.mean([ref.meta["val"]["rmse"] for ref in folds])
    )
    result = ensemble_folds.fn(folds, spec.ensemble, store)
    mean = np.mean([np.load(ref.path / "test_preds.npy") for ref in folds], axis=0)
    assert result.meta["rmse"] == pytest.approx(mean_squared_error(target, mean) ** 0.5)
    assert 20 < result.meta["rmse"] < 120  # the target's units (its std is about 77)


def test_preflight_refuses_a_classification_ensemble_once_task_auto_has_read_a_float_target(
    tmp_path,
):
    from trainflow.errors import SpecError
    from trainflow.preflight import check_data
    from trainflow.spec.pipeline import validate_spec

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    lines = ["a,b,c,y", *(f"{r[0]},{r[1]},{r[2]},{100 + 30 * r.sum():.3f}" for r in x)]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    spec = validate_spec(
        {
            "name": "t",
            "data": {
                "source": {"type": "csv", "path": str(tmp_path / "d.csv"), "target": "y"},
                "steps": [{"type": "split"}],
            },
            "model": {"type": "mlp"},
            "evaluate": {"cv": {"folds": 3}},
            "ensemble": {"type": "soft_vote"},
        }
    )  # task: auto on a file: the data tells, so validation lets it through
    with pytest.raises(SpecError) as err:
        check_data(spec)
    assert "(a regression by its target)" in str(err.value)
    assert "ensemble.type soft_vote averages class probabilities" in str(err.value)
