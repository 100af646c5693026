"""The search section: every bad path or value is named before a study starts; a trial's
spec is the base spec with the drawn values at their paths."""

import copy
from pathlib import Path

import optuna
import pytest
import yaml

from trainflow import study as studies
from trainflow.errors import SpecError, TrainflowError
from trainflow.spec.pipeline import load_spec, validate_spec

ROOT = Path(__file__).resolve().parents[2]
RAW = yaml.safe_load((ROOT / "pipelines" / "breast_cancer_search.yaml").read_text())


def with_search(**changes) -> dict:
    raw = copy.deepcopy(RAW)
    raw["search"].update(changes)
    return raw


def problem(raw: dict) -> tuple[str, str]:
    with pytest.raises(SpecError) as error:
        validate_spec(raw, "spec.yaml")
    assert len(error.value.problems) == 1, error.value.problems
    return error.value.problems[0]


def test_the_shipped_search_validates():
    spec = load_spec(ROOT / "pipelines" / "breast_cancer_search.yaml")
    assert spec.search.sampler.type == "tpe" and spec.search.pruner.type == "median"
    assert spec.search.objective.goal == "minimize"


def test_a_path_that_is_not_a_spec_field_is_named_with_the_closest_field():
    path, message = problem(
        with_search(space={"train.lrr": {"type": "float", "low": 0.1, "high": 1}})
    )
    assert path == "search.space.train.lrr"
    assert "unknown key 'lrr'" in message and "did you mean `lr`" in message


def test_a_value_outside_the_fields_limits_is_named():
    path, message = problem(
        with_search(space={"model.dropout": {"type": "float", "low": 0.0, "high": 1.5}})
    )
    assert path == "search.space.model.dropout"
    assert "1.5" in message and "model.dropout" in message and "less than 1" in message
    path, message = problem(
        with_search(space={"model.units.4": {"type": "int", "low": 1, "high": 8}})
    )
    assert path == "search.space.model.units.4" and "no list item 4" in message


def test_a_grid_over_a_float_range_needs_a_step():
    raw = with_search(sampler={"type": "grid"})
    path, message = problem(raw)
    assert path == "search.space.train.lr" and "needs a step" in message


def test_range_rules():
    path, message = problem(
        with_search(space={"train.lr": {"type": "float", "low": 0.0, "high": 1.0, "log": True}})
    )
    assert path == "search.space.train.lr" and "log range needs low > 0" in message
    path, message = problem(
        with_search(space={"train.lr": {"type": "float", "low": 1, "high": 0.1}})
    )
    assert path == "search.space.train.lr" and "above high" in message


def test_conditional_parameters():
    models = [
        {"type": "mlp", "hidden_layers": 1, "units": [32]},
        {"type": "mlp", "hidden_layers": 2, "units": [64, 32]},
    ]
    space = {
        "model": {"type": "categorical", "choices": models},
        "model.units.1": {"type": "int", "low": 8, "high": 64, "when": {"model.hidden_layers": 2}},
    }
    spec = validate_spec(with_search(space=space))
    one = studies.variant(optuna.trial.FixedTrial({"model": studies.encode(models[0])}), spec)
    assert one.model.units == [32]  # the conditional parameter is not drawn
    two = studies.variant(
        optuna.trial.FixedTrial({"model": studies.encode(models[1]), "model.units.1": 16}), spec
    )
    assert two.model.units == [64, 16] and two.search is None
    space["model.units.1"]["when"] = {"model.hidden_layers": 3}
    path, message = problem(with_search(space=space))
    assert path == "search.space.model.units.1" and "never holds" in message
    space["model.units.1"]["when"] = {"train.lr": 3}
    path, message = problem(with_search(space=space))
    assert "not an earlier path" in message


def test_an_objective_the_search_cannot_give_is_refused_with_the_closest():
    path, message = problem(with_search(objective={"metric": "val_f1"}))
    assert path == "search.objective.metric" and "val_f1_macro" in message


@pytest.mark.parametrize(
    ("nested", "space", "where", "words"),
    [
        ({"outer_folds": 1}, None, "search.nested.outer_folds", "greater than or equal to 2"),
        ({"outer": 3}, None, "search.nested.outer", "did you mean `outer_folds`"),
        (
            {"outer_folds": 3},
            {"data.steps.1.test": {"type": "categorical", "choices": [0.2, 0.3]}},
            "search.space.data.steps.1.test",
            "the same outer folds of the same rows",
        ),
        (
            {"outer_folds": 3},
            {"seed": {"type": "int", "low": 0, "high": 2}},
            "search.space.seed",
            "the seed that draws the folds",
        ),
    ],
)
def test_a_bad_nested_value_is_one_spec_error(nested, space, where, words):
    # (outer folds the data cannot fill: tests/flows/test_search_nested.py)
    path, message = problem(with_search(nested=nested, **({"space": space} if space else {})))
    assert path == where and words in message, (path, message)
    # a space over a step after the split (re-fitted in every fold) nests
    space = {"data.steps.2.method": {"type": "categorical", "choices": ["standard", "minmax"]}}
    assert validate_spec(with_search(nested={"outer_folds": 3}, space=space), "spec.yaml")


def test_a_search_needs_folds_and_a_budget():
    raw = with_search()
    raw["evaluate"], raw["ensemble"] = {}, None
    assert problem(raw) == ("search", "each trial is cross-validated: set evaluate.cv.folds")
    raw = with_search()
    del raw["search"]["n_trials"], raw["search"]["timeout_s"]
    assert "budget" in problem(raw)[1]


def test_trial_n_draws_with_seed_plus_n():
    spec = validate_spec(with_search(sampler={"type": "random", "seed": 7}))
    assert studies.sampler_for(spec.search, spec.seed, 3).seed == 10


@pytest.mark.parametrize(
    "url", ["sqlite:////no/such/folder/study.db", "postgresql://me:secret@127.0.0.1:1/db"]
)
def test_a_storage_that_cannot_be_reached_is_named(tmp_path, url):
    spec = validate_spec(with_search(storage=url))
    with pytest.raises(TrainflowError) as error:
        studies.open_study(spec, str(tmp_path))
    message = str(error.value)
    assert message.startswith("search.storage: cannot open the study's database")
    assert "secret" not in message


def test_any_metric_of_the_table_is_an_objective_and_a_pruner_needs_it_per_epoch():
    spec = validate_spec(with_search(objective={"metric": "val_roc_auc"}, pruner=None))
    assert spec.search.objective.goal == "maximize"
    assert (
        validate_spec(
            with_search(objective={"metric": "val_ece"}, pruner=None)
        ).search.objective.goal
        == "minimize"
    )
    path, message = problem(with_search(objective={"metric": "val_f1_macro"}))
    assert path == "search.pruner" and "train.early_stopping.monitor" in message
    raw = with_search(objective={"metric": "val_f1_macro"})
    raw["train"]["early_stopping"]["monitor"] = "val_f1_macro"
    validate_spec(raw)


def toy_value(raw: dict) -> float:
    """A deterministic stand-in for a trial's CV value (the sampler's view is all that counts)."""
    return (raw["train"]["lr"] - 0.003) ** 2 + raw["model"]["units"][0] / 1e4


def draws(spec, tmp_path, stop_after: int | None = None) -> list:
    """Ask/tell trials as the search flow does, reopening the study (a new process's view)
    after `stop_after` trials."""
    from trainflow.study import base_raw

    study = studies.open_study(spec, str(tmp_path))
    for number in range(4):
        if number == stop_after:
            study = studies.open_study(spec, str(tmp_path))  # a fresh sampler, as after a crash
        trial = studies.ask(study, spec)
        raw = studies.suggest(trial, spec.search, base_raw(spec))
        for step in range(3):  # the pruner is consulted as the trial task does
            trial.report(toy_value(raw) + 0.1 / (step + 1), step)
            trial.should_prune()
        study.tell(trial.number, toy_value(raw))
    return [(t.params, t.value) for t in study.get_trials()]


COMBINATIONS = [(sampler, "median") for sampler in ("grid", "random", "tpe", "cmaes", "gp")] + [
    ("tpe", pruner) for pruner in (None, "successive_halving", "hyperband")
]


@pytest.mark.parametrize("sampler,pruner", COMBINATIONS)
def test_every_sampler_and_pruner_drives_a_study_that_a_restart_does_not_change(
    tmp_path, sampler, pruner
):
    space = {
        "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "step": 1e-4},
        "model.units.0": {"type": "int", "low": 16, "high": 64, "step": 16},
    }
    raw = with_search(
        space=space,
        sampler={
            "type": sampler,
            "seed": 1,
            **({} if sampler in ("grid", "random") else {"n_startup_trials": 2}),
        },
        pruner={"type": pruner} if pruner else None,
    )
    first = draws(validate_spec(raw), tmp_path / "a")
    again = draws(validate_spec(raw), tmp_path / "b", stop_after=2)
    assert first == again  # trial n draws with seed + n: a restart changes no draw
    if sampler == "grid":
        assert len({str(p) for p, _ in first}) == 4  # four different points of the grid


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_trial_killed_between_its_draws_draws_the_rest_as_it_would_have(tmp_path, sampler):
    from trainflow.study import base_raw

    raw = with_search(sampler={"type": sampler, "seed": 2}, pruner=None)
    spec = validate_spec(raw)
    whole = studies.open_study(spec, str(tmp_path / "a"))
    trial = studies.ask(whole, spec)
    studies.suggest(trial, spec.search, base_raw(spec))
    killed = studies.open_study(spec, str(tmp_path / "b"))
    partial = studies.ask(killed, spec)
    partial.suggest_float("train.lr", 1e-4, 3e-2, log=True)  # then the process died
    again = studies.open_study(spec, str(tmp_path / "b"))
    resumed = studies.rerun(again, spec, again.get_trials()[0])
    studies.suggest(resumed, spec.search, base_raw(spec))
    assert again.get_trials()[0].params == whole.get_trials()[0].params
