"""train.fit_on: train+validation through the real Prefect engine: the model trains on exactly
the train and validation rows, with the data steps fitted on them, for fit_epochs; the test
part stays unseen; a study's refit runs such a spec and every step after training follows."""

import json
from pathlib import Path

import numpy as np
import optuna
import polars as pl
import pytest
import yaml

from tests.flows.helpers import ALONE, run
from trainflow.caching import canonical
from trainflow.champion import read_pointer
from trainflow.errors import SpecError
from trainflow.spec.fit_on import refit_epochs
from trainflow.spec.pipeline import load_spec
from trainflow.spec.train import TrainSpec
from trainflow.steps import read_parts
from trainflow.study_report import BEST_SPEC

ROOT = Path(__file__).resolve().parents[2]
QUICK = ("train.threads=1", "train.precision=fp32")  # no probes: CI-sized
POOLED = ("train.fit_on=train+validation", "train.fit_epochs=3", *QUICK)


def rows(frame: pl.DataFrame) -> list[tuple]:
    return sorted(frame.rows())


@pytest.mark.usefixtures("prefect_engine")
def test_train_plus_validation_trains_on_both_parts_and_scores_the_untouched_test(tmp_path):
    result, states = run("breast_cancer_mlp", tmp_path, *ALONE, *POOLED)
    data = result["data"]
    raw = read_parts(data["raw_splits"])
    pooled = data["splits"].base()  # normalize's input: the pool task's parts
    assert pooled is not None
    parts = read_parts(pooled)
    # the training part is exactly train + validation, row for row; test is the split's own
    assert rows(parts["train"][0]) == rows(pl.concat([raw["train"][0], raw["val"][0]]))
    assert rows(parts["test"][0]) == rows(raw["test"][0])
    model = result["model"]
    assert model.count == raw["train"][0].height + raw["val"][0].height
    assert model.meta["fit_on"] == "train+validation" and model.meta["val_loss"] is None
    # fit_epochs epochs, no early stopping, the last epoch the model
    assert (model.meta["epochs_run"], model.meta["best_epoch"]) == (3, 3)
    assert not model.meta["stopped_early"]
    epochs = [json.loads(line) for line in (model.path / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs if "val_loss" in e] == [1, 2, 3]
    # normalize's statistics come from the pooled rows, not from the training part alone
    state = json.loads((data["splits"].path / "state.json").read_text())
    schema = raw["train"][1]
    column = schema.features[0]
    both = pl.concat([raw["train"][0], raw["val"][0]])[column].to_numpy()
    assert state["shift"][column] == pytest.approx(np.mean(both))
    assert state["shift"][column] != pytest.approx(raw["train"][0][column].to_numpy().mean())
    # evaluate scored the test part, which no step fitted on and the model never saw
    assert result["evaluation"].count == raw["test"][0].height
    assert states["pool_validation"] == ["Completed"] and states["train"] == ["Completed"]
    # the rerun is served from the cache, the pool task included
    _, again = run("breast_cancer_mlp", tmp_path, *ALONE, *POOLED)
    for task in ("pool_validation", "normalize", "shard", "train", "evaluate"):
        assert again[task] == ["Cached"], (task, again[task])


def test_fit_on_is_in_the_train_tasks_key():
    train = TrainSpec()
    pooled = TrainSpec(fit_on="train+validation", fit_epochs=4)
    assert canonical({"train": train}) != canonical({"train": pooled})
    assert canonical({"train": pooled}) != canonical(
        {"train": TrainSpec(fit_on="train+validation", fit_epochs=5)}
    )


def test_the_refit_trains_the_median_epoch_of_the_best_trials_folds():
    folds = [{"best_epoch": 4}, {"best_epoch": 9}, {"best_epoch": 6}]
    assert refit_epochs(folds, 20) == 6
    assert refit_epochs(folds[:2], 20) == 7  # 6.5, half up
    assert refit_epochs([], 20) == 20  # a study from before folds were recorded


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (["train.fit_on=train+validation"], ["train.early_stopping", "train.fit_epochs"]),
        (["train.fit_epochs=3"], ["train.fit_epochs (3)", "fit_on: train+validation"]),
        (
            [*POOLED[:2], "train.schedule={type: plateau}"],
            ["plateau schedule", "val_loss", "fit_on: train"],
        ),
        ([*POOLED[:2], "train.debug={dead_units: true}"], ["train.debug.dead_units"]),
        ([*POOLED[:2], "evaluate.calibrate=temperature"], ["evaluate.calibrate", "fit_on: train"]),
        (
            [*POOLED[:2], "evaluate.threshold={metric: f1}"],
            ["evaluate.threshold", "validation part"],
        ),
        (
            [*POOLED[:2], "train.swa={start_epoch: 5, lr: 0.01}"],
            ["train.swa.start_epoch (5)", "fit_epochs: 3"],
        ),
    ],
)
def test_knobs_that_need_unseen_validation_rows_are_refused_at_validation(overrides, words):
    with pytest.raises(SpecError) as error:
        load_spec(ROOT / "pipelines" / "breast_cancer_mlp.yaml", overrides)
    message = str(error.value)
    for word in words:
        assert word in message, (word, message)


def test_a_study_whose_refit_cannot_hold_is_refused_before_it_starts():
    with pytest.raises(SpecError) as error:
        load_spec(
            ROOT / "pipelines" / "breast_cancer_search.yaml",
            ["search.refit=true", "evaluate.calibrate=temperature"],
        )
    message = str(error.value)
    assert "search.refit: true trains the best spec on train + validation" in message
    assert "evaluate.calibrate" in message


@pytest.mark.usefixtures("prefect_engine")
def test_a_refit_on_train_plus_validation_is_ensembled_compressed_and_promoted(tmp_path):
    from trainflow.flows.search import search_flow

    spec = load_spec(
        ROOT / "pipelines" / "breast_cancer_search.yaml",
        [
            f"outputs.store={tmp_path / 'store'}",
            f"outputs.runs={tmp_path / 'runs'}",
            "train.epochs=3",
            "train.early_stopping={monitor: val_loss, patience: 1}",
            "evaluate.cv.folds=2",
            "search.n_trials=2",
            "search.pruner=null",
            "search.refit=true",
            "compress={quantize: {type: dynamic_int8}, "
            "prune: {type: l1_unstructured, sparsity: 0.5, finetune_epochs: 1}}",
            *QUICK,
        ],
    )
    result = search_flow(spec)(spec)
    study = optuna.load_study(study_name=result["study"], storage=result["storage"])
    folds = study.best_trial.user_attrs["folds"]
    # best_spec.yaml is the spec the refit ran: train + validation, the folds' median epoch
    written = yaml.safe_load((Path(result["run_dir"]) / BEST_SPEC).read_text())
    assert written["train"]["fit_on"] == "train+validation"
    assert written["train"]["fit_epochs"] == refit_epochs(folds, 3)
    refit = result["refit"]
    model = refit["model"]
    raw = refit["data"]["raw_splits"].meta["parts"]
    assert model.count == raw["train"]["rows"] + raw["val"]["rows"]
    assert model.meta["epochs_run"] == written["train"]["fit_epochs"]
    # its CV folds are still the best trial's (fit_on leaves the folds alone)
    assert [f.meta["val"]["loss"] for f in refit["folds"]] == [f["val"]["loss"] for f in folds]
    assert refit["ensemble"] is not None and refit["packages"]["ensemble"]
    assert set(refit["compressed"]) == {"quantize", "prune"}
    assert refit["packages"]["quantize"] and refit["packages"]["prune"]
    # the champion rule saw the refit's package: the pipeline's first model is promoted
    assert refit["champion"]["promoted"] is True
    pointer = read_pointer(Path(spec.outputs.store).resolve(), spec.name)
    assert pointer is not None and Path(pointer.current or "").name == Path(refit["package"]).name
