"""Contract tests over every registry entry: a new entry is tested the day it is added."""

import json
import typing

import polars as pl
import pytest
import torch

from trainflow import registry
from trainflow.engine.model_folder import build_model
from trainflow.engine.training import optimizer_factory
from trainflow.spec.train import TrainSpec
from trainflow.steps import json_state
from trainflow.tables import TableSchema

ALL = {
    "sources": registry.SOURCES,
    "steps": registry.STEPS,
    "models": registry.MODELS,
    "optimizers": registry.OPTIMIZERS,
    "schedules": registry.SCHEDULES,
    "ensembles": registry.ENSEMBLES,
    "quantizers": registry.QUANTIZERS,
    "pruners": registry.PRUNERS,
    "search_samplers": registry.SEARCH_SAMPLERS,
    "search_pruners": registry.SEARCH_PRUNERS,
}
# Every Entry table of registry.py is here (a new kind is tested the day it is added).
assert {id(r) for r in ALL.values()} == {
    id(v)
    for v in vars(registry).values()
    if isinstance(v, dict) and v and all(isinstance(e, registry.Entry) for e in v.values())
}


@pytest.mark.parametrize("kind,name", [(k, n) for k, r in ALL.items() for n in r])
def test_entry_name_is_the_yaml_type(kind, name):
    params = ALL[kind][name].params
    assert name in typing.get_args(params.model_fields["type"].annotation)
    assert params.model_config.get("extra") == "forbid"


FRAME = pl.DataFrame(
    {
        "a": [1.0, None, 3.0, 4.0, 4.0],
        "b": [0.5, 0.1, None, 2.0, 2.0],
        "y": ["p", "q", "p", "q", "q"],
    }
)
# complete and imbalanced, for the training-only steps (samplers need both)
IMBALANCED = pl.DataFrame(
    {
        "a": [float(i % 7) for i in range(30)],
        "b": [float(i * i % 11) for i in range(30)],
        "y": ["p"] * 8 + ["q"] * 22,
    }
)
SCHEMA = TableSchema(target="y", features=["a", "b"], classes=["p", "q"])


# values for the fields a step requires (all others keep their defaults)
REQUIRED_EXAMPLES = {"method": "smote", "fraction": 0.5, "columns": ["a"]}


def params_for(name):
    params = registry.STEPS[name].params
    required = [k for k, f in params.model_fields.items() if f.is_required() and k != "type"]
    return params(type=name, **{k: REQUIRED_EXAMPLES[k] for k in required})


@pytest.mark.parametrize("name", [n for n, e in registry.STEPS.items() if e.fit])
def test_fit_apply_steps_contract(name):
    entry = registry.STEPS[name]
    params = params_for(name)
    # complete data is valid input for every step; gaps only for those that can handle them
    frame = FRAME if name == "clean" else IMBALANCED
    state = entry.fit(frame, SCHEMA, params, 0)
    json.dumps(json_state(state))  # state is stored as JSON beside the artifact
    out, schema = entry.apply(frame, SCHEMA, params, state)
    assert schema.target == "y" and set(schema.features) <= set(out.columns)
    assert out["y"].dtype == pl.Utf8 and set(out["y"].drop_nulls()) <= {"p", "q"}
    if not getattr(params, "train_only", False):
        assert len(out) <= len(frame)  # only training-only steps may add rows
    again, _ = entry.apply(frame, SCHEMA, params, state)
    assert again.equals(out)  # apply is a pure function of (data, params, state)


# The input shapes each architecture takes: images (C, H, W), sequences (steps, channels),
# tabular rows (features,).
SHAPES = {
    "mlp": ([1, 8, 8], [12, 3], [10]),
    "cnn": ([1, 8, 8],),
    **dict.fromkeys(("rnn", "lstm", "gru", "transformer"), ([12, 3], [10])),
}


@pytest.mark.parametrize("name", registry.MODELS)
def test_models_map_inputs_to_class_logits(name):
    params = registry.MODELS[name].params(type=name)
    for shape in SHAPES[name]:
        net = build_model(params, shape, 3)
        x = torch.randn(5, *shape, requires_grad=True)
        out = net(x)
        assert out.shape == (5, 3)
        out.sum().backward()
        assert x.grad.abs().sum() > 0  # every input reaches the logits


@pytest.mark.parametrize("name", registry.OPTIMIZERS)
def test_optimizers_take_a_step(name):
    spec = TrainSpec.model_validate({"optimizer": {"type": name}, "lr": 0.1})
    net = torch.nn.Linear(3, 2)
    before = net.weight.detach().clone()
    optimizer = optimizer_factory(spec)(net)
    net(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    assert not torch.equal(before, net.weight)


@pytest.mark.parametrize("kind,name", [(k, n) for k, r in ALL.items() for n in r])
def test_entry_params_live_in_the_spec_and_its_implementation_resolves(kind, name):
    entry = ALL[kind][name]
    assert entry.params.__module__.startswith("trainflow.spec.")
    assert callable(entry.impl) or hasattr(entry.impl, "load")
    if entry.stateful:
        assert callable(entry.fit) and callable(entry.apply)


@pytest.mark.parametrize("name", registry.SCHEDULES)
def test_schedules_move_the_learning_rate(name):
    required = {"multi_step": {"milestones": [1]}}.get(name, {})
    spec = TrainSpec.model_validate({"schedule": {"type": name, **required}, "lr": 0.1})
    net = torch.nn.Linear(3, 2)
    optimizer = optimizer_factory(spec)(net)
    from trainflow.engine import schedule

    per_step, per_epoch = schedule.build(spec.schedule, optimizer, spec.lr, 4, 40)
    rates = []
    for _ in range(40):
        optimizer.step()
        if per_step is not None:
            per_step.step()
        rates.append(optimizer.param_groups[0]["lr"])
    if spec.schedule.per_epoch:
        assert per_step is None
        for _ in range(spec.schedule.patience + 2):
            per_epoch.step(1.0)  # no improvement: the rate drops
        rates.append(optimizer.param_groups[0]["lr"])
    assert len(set(rates)) > 1, rates


SOURCES = {"sklearn": {"dataset": "iris"}, "sequences": {"samples": 30, "length": 6}}


def write_source(name, tmp_path):
    """A tiny source of each type (files written under tmp_path)."""
    if name in SOURCES:
        return {"type": name, **SOURCES[name]}
    if name == "image_folder":
        import cv2
        import numpy as np

        for label in ("a", "b"):
            (tmp_path / label).mkdir()
            for i in range(2):
                cv2.imwrite(str(tmp_path / label / f"{i}.png"), np.full((4, 4), i * 80, "uint8"))
        return {"type": name, "path": str(tmp_path)}
    frame = pl.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "y": ["p", "q", "p", "q"]})
    path = tmp_path / f"t.{name}"
    frame.write_csv(path) if name == "csv" else frame.write_parquet(path)
    return {"type": name, "path": str(path), "target": "y"}


@pytest.mark.parametrize("name", registry.SOURCES)
def test_sources_read_a_table_and_its_labels(name, tmp_path):
    entry = registry.SOURCES[name]
    source = entry.params.model_validate(write_source(name, tmp_path))
    table, schema = entry.impl.load(source)
    table = table.lazy().collect()
    labels = entry.impl.read_labels(source)
    assert len(table) == len(labels) > 0 and schema.target in table.columns
    assert sorted(labels.cast(pl.Utf8).unique()) == sorted(schema.classes)
    assert set(schema.features) <= set(table.columns)


def test_resample_option_names_are_the_samplers_own():
    """spec/steps.py writes the options out (so the spec need not import imbalanced-learn):
    they must be what each imbalanced-learn class takes."""
    import inspect

    from trainflow.spec.steps import RESERVED, SAMPLERS, sampler_class

    for method, (_, options) in SAMPLERS.items():
        taken = set(inspect.signature(sampler_class(method)).parameters) - set(RESERVED)
        assert taken == set(options), method


PLACES = {
    "sources": "data.source",
    "steps": "data.steps.0",
    "models": "model",
    "optimizers": "train.optimizer",
    "schedules": "train.schedule",
    "ensembles": "ensemble",
    "quantizers": "compress.quantize",
    "pruners": "compress.prune",
    "search_samplers": "search.sampler",
    "search_pruners": "search.pruner",
}


@pytest.mark.parametrize("kind", ALL)
def test_the_spec_accepts_exactly_the_registered_names(kind):
    """The spec's union of a kind is built from the registry: an unregistered `type` there
    is refused with a message that names every registered one."""
    from pathlib import Path

    from trainflow.errors import SpecError
    from trainflow.spec.pipeline import load_spec

    spec = Path(__file__).resolve().parents[2] / "pipelines" / "breast_cancer_mlp.yaml"
    with pytest.raises(SpecError) as error:
        load_spec(spec, [f"{PLACES[kind]}={{type: not_registered}}"])
    message = str(error.value)
    assert PLACES[kind] in message
    for name in ALL[kind]:
        assert f"'{name}'" in message, (name, message)


@pytest.mark.parametrize("name", registry.task_names())
def test_tasks_table_matches_each_task(name):
    """registry.TASKS serves the CLI, the flows' options and `orchestration.steps`: each
    entry is a Prefect task of that name whose parameters are the ones the table names."""
    import inspect

    from trainflow.spec.orchestration import TASK_NAMES
    from trainflow.spec.pipeline import PipelineSpec

    task = registry.task(name)
    assert task.impl.name == name and name in TASK_NAMES
    parameters = inspect.signature(task.impl.fn).parameters
    for parameter in [*(task.inputs or ()), *task.reads]:
        assert parameter.lstrip("*") in parameters, parameter
    for section in task.reads.values():
        model = PipelineSpec
        for key in section.split(".")[:1]:
            assert key in model.model_fields, section
