"""A numeric target trains a regressor (issue 19, part 7): the task decided from the target,
the train task on a small generated table (it learns; the target scaling is fitted on the
training rows and inverted for every figure; early stopping on val_rmse; the mse, huber and
l1 losses), the evaluate task's RMSE/MAE/R²/MAPE, and the refusals of the other task's knobs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from trainflow.errors import DataError, SpecError
from trainflow.spec.after_training import EvaluateSpec
from trainflow.spec.model import MLPParams
from trainflow.spec.pipeline import validate_spec
from trainflow.spec.train import TrainSpec
from trainflow.tables import table_schema
from trainflow.tasks.evaluate import evaluate_model
from trainflow.tasks.ingest import FileSource, ingest
from trainflow.tasks.normalize import NormalizeParams, normalize
from trainflow.tasks.shard import ShardParams, shard
from trainflow.tasks.split import SplitParams, split
from trainflow.tasks.train import train_model

MODEL = MLPParams(type="mlp", hidden_layers=1, units=[32])
WEIGHTS = np.array([3.0, -2.0, 1.0, 0.0])


def regression_csv(path: Path, rows: int = 600, seed: int = 0) -> Path:
    """y = 500 + 40 x.w + noise: far from unit scale, so an unscaled loss would show."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4))
    y = 500 + 40 * (x @ WEIGHTS) / np.linalg.norm(WEIGHTS) + rng.normal(scale=4, size=rows)
    frame = pl.DataFrame({f"x{i}": x[:, i] for i in range(4)}).with_columns(y=pl.Series(y))
    frame.write_csv(path)
    return path


def source(path: Path) -> FileSource:
    return FileSource(type="csv", path=str(path), target="y")


def train_spec(**knobs) -> TrainSpec:
    base = {"lr": 0.01, "epochs": 40, "batch_size": 32, "device": "cpu", "threads": 1}
    return TrainSpec.model_validate({"precision": "fp32", "checkpoint_every": 0, **base, **knobs})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The generated table ingested (task: auto), split, normalized and sharded."""
    folder = tmp_path_factory.mktemp("regression")
    store = str(folder / "store")
    table = ingest.fn(source(regression_csv(folder / "data.csv")), store, "auto")
    raw = split.fn(table, SplitParams(type="split", strategy="random"), 0, store)
    scaled = normalize.fn(raw, NormalizeParams(type="normalize"), 0, store)
    return store, table, shard.fn(scaled, ShardParams(), store)


def rows(model) -> list[dict]:
    return [json.loads(line) for line in (model.path / "metrics.jsonl").read_text().splitlines()]


def test_a_float_target_is_a_regression_under_auto_with_its_numbers_kept(prepared):
    store, table, shards = prepared
    schema = table_schema(table.path / "all.parquet")
    assert schema.task == "regression" and schema.classes == []
    frame = pl.read_parquet(table.path / "all.parquet")
    assert frame["y"].dtype == pl.Float64 and frame["y"].min() > 300  # the numbers, not labels
    assert shards.data_schema["task"] == "regression"


def test_the_train_task_learns_in_the_targets_units_with_the_scaling_of_train_rows(prepared):
    store, _, shards = prepared
    model = train_model.fn(shards, MODEL, train_spec(), 0, store)
    info = json.loads((model.path / "model.json").read_text())
    assert info["task"] == "regression" and info["loss"]["type"] == "mse"
    # fitted on the training rows alone: their mean and standard deviation
    from trainflow.shards import read_split

    _, y_train = read_split(shards.path, "train")
    assert info["target_scale"]["mean"] == pytest.approx(y_train.mean())
    assert info["target_scale"]["std"] == pytest.approx(y_train.std())
    best = rows(model)[model.meta["best_epoch"] - 1]
    assert best["val_r2"] > 0.95 and best["val_rmse"] < 12  # noise 4, target std ~40
    # the loss is on the scaled target, the figures in the target's units: rmse = sqrt(mse) * std
    assert best["val_rmse"] == pytest.approx(
        np.sqrt(best["val_loss"]) * info["target_scale"]["std"], rel=1e-4
    )
    metrics = evaluate_model.fn(model, shards, store, EvaluateSpec()).meta
    assert set(metrics) >= {"rmse", "mae", "r2", "mape"} and "accuracy" not in metrics
    assert metrics["r2"] > 0.95 and metrics["mape"] < 0.03


def test_without_scaling_the_loss_is_in_the_targets_units(prepared):
    store, _, shards = prepared
    model = train_model.fn(shards, MODEL, train_spec(epochs=2, target_scaling="none"), 0, store)
    info = json.loads((model.path / "model.json").read_text())
    assert info["target_scale"] == {"mean": 0.0, "std": 1.0}
    first = rows(model)[0]
    assert first["val_rmse"] == pytest.approx(np.sqrt(first["val_loss"]), rel=1e-4)


def test_a_streamed_training_part_fits_the_same_scaling_and_trains(prepared):
    store, _, shards = prepared
    spec = train_spec(epochs=3, loader={"mode": "stream", "workers": 0})
    streamed = train_model.fn(shards, MODEL, spec, 0, store)
    in_memory = train_model.fn(shards, MODEL, train_spec(epochs=3), 0, store)
    scale = [
        json.loads((m.path / "model.json").read_text())["target_scale"]
        for m in (streamed, in_memory)
    ]
    assert scale[0]["mean"] == pytest.approx(scale[1]["mean"])
    assert scale[0]["std"] == pytest.approx(scale[1]["std"])
    assert rows(streamed)[-1]["val_rmse"] < rows(streamed)[0]["val_rmse"]


def test_early_stopping_on_val_rmse_keeps_the_epoch_of_the_lowest(prepared):
    store, _, shards = prepared
    spec = train_spec(epochs=60, lr=0.05, early_stopping={"monitor": "val_rmse", "patience": 3})
    model = train_model.fn(shards, MODEL, spec, 0, store)
    history = [row["val_rmse"] for row in rows(model)]
    assert model.meta["stopped_early"] and len(history) < 60
    assert model.meta["best_epoch"] == int(np.argmin(history)) + 1
    assert model.meta["val_rmse"] == min(history)
    assert len(history) - model.meta["best_epoch"] == 3  # patience epochs without a better one


@pytest.mark.parametrize("loss", [{"type": "l1"}, {"type": "huber", "delta": 0.05}])
def test_the_l1_and_huber_losses_train_and_are_what_val_loss_reports(prepared, loss):
    store, _, shards = prepared
    model = train_model.fn(shards, MODEL, train_spec(loss=loss), 0, store)
    info = json.loads((model.path / "model.json").read_text())
    assert info["loss"]["type"] == loss["type"]
    best = rows(model)[model.meta["best_epoch"] - 1]
    assert best["val_r2"] > 0.95
    std = info["target_scale"]["std"]
    if loss["type"] == "l1":  # mean |error| on the scaled target, times its std: the MAE
        assert best["val_mae"] == pytest.approx(best["val_loss"] * std, rel=1e-4)
    else:  # huber at delta d: d |e| - d²/2 <= loss(e) <= d |e| (mse/2 would lie above)
        d, scaled_mae = 0.05, best["val_mae"] / std
        assert d * scaled_mae - d * d / 2 - 1e-6 <= best["val_loss"] <= d * scaled_mae + 1e-6


# ---- the task and its knobs ---------------------------------------------------------------


def pipeline(task: str = "auto", dataset: str | None = None, **sections) -> dict:
    src = {"type": "sklearn", "dataset": dataset} if dataset else None
    return {
        "name": "r",
        "task": task,
        "data": {
            "source": src or {"type": "csv", "path": "data.csv", "target": "y"},
            "steps": sections.pop("steps", [{"type": "split"}]),
        },
        "model": {"type": "mlp"},
        **sections,
    }


@pytest.mark.parametrize(
    "sections,named",
    [
        ({"train": {"label_smoothing": 0.1}}, "train.label_smoothing"),
        ({"train": {"class_weights": "balanced"}}, "train.class_weights"),
        ({"train": {"loss": {"type": "cross_entropy"}}}, "train.loss.type"),
        ({"evaluate": {"calibrate": "temperature"}}, "evaluate.calibrate"),
        ({"evaluate": {"metrics": ["accuracy"]}}, "accuracy is a classification metric"),
        (
            {"train": {"early_stopping": {"monitor": "val_accuracy"}}},
            "val_accuracy is a classification metric",
        ),
        ({"steps": [{"type": "split"}, {"type": "resample", "method": "smote"}]}, "data.steps.1"),
        ({"compress": {"quantize": {"type": "dynamic_int8"}}}, "compress.quantize"),
    ],
)
def test_a_classifiers_knob_on_a_regression_is_refused_naming_it(sections, named):
    with pytest.raises(SpecError) as err:
        validate_spec(pipeline("regression", **sections))
    assert named in str(err.value) and "regression" in str(err.value)


@pytest.mark.parametrize(
    "sections,named",
    [
        ({"train": {"loss": {"type": "mse"}}}, "mse is a regression loss"),
        ({"evaluate": {"metrics": ["rmse"]}}, "rmse is a regression metric"),
        (
            {"train": {"early_stopping": {"monitor": "val_rmse"}}},
            "val_rmse is a regression metric and this is a classification: monitor one of "
            "val_loss, val_accuracy",
        ),
    ],
)
def test_a_regressions_knob_on_a_classifier_is_refused_naming_it(sections, named):
    with pytest.raises(SpecError, match=named):
        validate_spec(pipeline("auto", dataset="iris", **sections))
    validate_spec(pipeline("auto", dataset="diabetes", **sections))  # (a regression takes it)


def test_a_scikit_learn_dataset_tells_its_task():
    with pytest.raises(SpecError, match="diabetes dataset's target holds numbers: set task: reg"):
        validate_spec(pipeline("classification", dataset="diabetes"))
    with pytest.raises(SpecError, match="iris dataset's target holds class labels"):
        validate_spec(pipeline("regression", dataset="iris"))


def test_a_float_target_under_task_classification_is_refused_naming_task_regression(tmp_path):
    with pytest.raises(DataError, match="looks like a regression target.*set task: regression"):
        ingest.fn(source(regression_csv(tmp_path / "d.csv")), str(tmp_path), "classification")


def test_a_text_target_under_task_regression_names_the_column_and_a_value(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("x,y\n" + "\n".join(f"{i},{v}" for i, v in enumerate(["1.5", "2", "high"])))
    with pytest.raises(DataError) as err:
        ingest.fn(source(path), str(tmp_path / "store"), "regression")
    message = str(err.value)
    assert "column 'y' holds text, such as 'high' (data row 3" in message
    assert "set task: classification" in message


def test_preflight_refuses_a_classifiers_knob_once_task_auto_has_read_the_target(tmp_path):
    from trainflow.preflight import check_data

    spec = validate_spec(
        {
            **pipeline("auto", evaluate={"metrics": ["accuracy", "rmse"]}),
            "data": {
                "source": {**source(regression_csv(tmp_path / "d.csv")).model_dump()},
                "steps": [{"type": "split"}],
            },
            "train": {"label_smoothing": 0.1},
        }
    )  # (a file's task is the data's to tell: validation takes it)
    with pytest.raises(SpecError) as err:
        check_data(spec)
    message = str(err.value)
    assert "(a regression by its target)" in message
    assert "train.label_smoothing" in message and "accuracy is a classification metric" in message
