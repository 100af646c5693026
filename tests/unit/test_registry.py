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

ALL = {"sources": registry.SOURCES, "steps": registry.STEPS, "models": registry.MODELS,
       "optimizers": registry.OPTIMIZERS, "ensembles": registry.ENSEMBLES,
       "quantizers": registry.QUANTIZERS, "pruners": registry.PRUNERS}


@pytest.mark.parametrize("kind,name", [(k, n) for k, r in ALL.items() for n in r])
def test_entry_name_is_the_yaml_type(kind, name):
    params = ALL[kind][name].params
    assert name in typing.get_args(params.model_fields["type"].annotation)
    assert params.model_config.get("extra") == "forbid"


FRAME = pl.DataFrame({"a": [1.0, None, 3.0, 4.0, 4.0], "b": [0.5, 0.1, None, 2.0, 2.0],
                      "y": ["p", "q", "p", "q", "q"]})
# complete and imbalanced, for the training-only steps (samplers need both)
IMBALANCED = pl.DataFrame({"a": [float(i % 7) for i in range(30)],
                           "b": [float(i * i % 11) for i in range(30)],
                           "y": ["p"] * 8 + ["q"] * 22})
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
SHAPES = {"mlp": ([1, 8, 8], [12, 3], [10]), "cnn": ([1, 8, 8],),
          **dict.fromkeys(("rnn", "lstm", "gru", "transformer"), ([12, 3], [10]))}


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
