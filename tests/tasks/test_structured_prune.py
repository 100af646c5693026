"""Structured pruning (issue 18 part 3): whole hidden units and conv channels removed by
L1/L2 norm, the layers rebuilt smaller (fewer parameters and FLOPs), iterative
prune-and-fine-tune steps, and a package that loads and predicts through trainflow.load_model."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import trainflow
from tests.flows.helpers import run
from trainflow import channel_prune, registry
from trainflow.engine.model_folder import build_model
from trainflow.errors import SpecError, TrainflowError
from trainflow.export import export_model
from trainflow.models.multitask import MultiTask
from trainflow.reporting.markdown import compression_sections
from trainflow.spec.pipeline import validate_spec
from trainflow.spec.structured_prune import StructuredPruneParams
from trainflow.spec.train import TrainSpec
from trainflow.tasks.ingest import SklearnSource, ingest
from trainflow.tasks.normalize import NormalizeParams, normalize
from trainflow.tasks.package import package_model
from trainflow.tasks.prune import prune_model
from trainflow.tasks.shard import ShardParams, shard
from trainflow.tasks.split import SplitParams, split
from trainflow.tasks.train import train_model
from trainflow.testrows import raw_test_rows

MLP = ({"type": "mlp", "hidden_layers": 2, "units": [64, 32], "norm": "batch"}, [30])
CNN = ({"type": "cnn", "channels": [8, 16], "hidden": 32}, [1, 8, 8])
HALF = StructuredPruneParams(type="l1_structured", sparsity=0.5)


def built(model: dict, shape: list[int], seed: int = 0) -> tuple[nn.Module, dict]:
    """The registry's network for `model`, with random weights and batch-norm statistics
    (as a trained one has), in eval mode."""
    torch.manual_seed(seed)
    spec = registry.MODELS[model["type"]].params(**model)
    net = build_model(spec, shape, 3)
    for layer in net.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.running_mean.normal_()
            layer.running_var.uniform_(0.5, 2.0)
            layer.weight.data.normal_()
            layer.bias.data.normal_()
    return net.eval(), spec.model_dump()


def producers(net: nn.Module) -> list[nn.Module]:
    return [m for m in net if isinstance(m, (nn.Linear, nn.Conv2d))][:-1]


@pytest.mark.parametrize("case", [MLP, CNN], ids=["mlp", "cnn"])
def test_half_the_units_go_and_the_model_costs_under_half(case):
    model, shape = case
    net, described = built(model, shape)
    small, pruned = channel_prune.prune_in_steps(net, described, shape, HALF)
    assert [m.weight.shape[0] for m in producers(small)] == [
        m.weight.shape[0] // 2 for m in producers(net)
    ]
    widths = pruned["units"] if model["type"] == "mlp" else [*pruned["channels"], pruned["hidden"]]
    assert widths == [m.weight.shape[0] for m in producers(small)]  # what model.json records
    before, after = channel_prune.sizes(net, shape), channel_prune.sizes(small, shape)
    assert before["parameters"] / after["parameters"] >= 1.8
    assert before["flops"] / after["flops"] >= 1.8
    assert small(torch.randn(4, *shape)).shape == (4, 3)


def zero_half(net: nn.Module) -> None:
    """Silence the odd units of every prunable layer: zero weight rows and bias, and the
    following batch norm's scale and shift, so those units emit exactly 0."""
    layers = list(net)
    for index, layer in enumerate(layers):
        if layer in producers(net):
            odd = torch.arange(1, layer.weight.shape[0], 2)
            layer.weight.data[odd] = 0
            layer.bias.data[odd] = 0
            follower = layers[index + 1]
            if isinstance(follower, nn.modules.batchnorm._BatchNorm):
                follower.weight.data[odd] = 0
                follower.bias.data[odd] = 0


@pytest.mark.parametrize("criterion", ["l1_structured", "l2_structured"])
@pytest.mark.parametrize("case", [MLP, CNN], ids=["mlp", "cnn"])
def test_removing_units_that_emit_zero_leaves_every_output_unchanged(case, criterion):
    model, shape = case
    net, described = built(model, shape, seed=1)
    zero_half(net)
    params = StructuredPruneParams(type=criterion, sparsity=0.5)
    small, _ = channel_prune.prune_in_steps(net, described, shape, params)
    x = torch.randn(64, *shape)
    with torch.no_grad():
        assert torch.allclose(small.eval()(x), net(x), atol=1e-6, rtol=0)
    for layer in producers(small):  # only the silenced units went
        assert layer.weight.flatten(1).abs().sum(1).min() > 0


def test_steps_prune_in_equal_shares_and_fine_tune_after_each():
    assert channel_prune.schedule([64, 32], 0.5, 2) == [[48, 24], [32, 16]]
    model, shape = MLP
    net, described = built(model, shape)
    seen = []
    params = StructuredPruneParams(type="l2_structured", sparsity=0.5, steps=2, finetune_epochs=1)
    small, pruned = channel_prune.prune_in_steps(
        net, described, shape, params, lambda n: seen.append([m.out_features for m in producers(n)])
    )
    assert seen == [[48, 24], [32, 16]] and pruned["units"] == [32, 16]


TRAIN = TrainSpec(lr=2e-3, batch_size=32, epochs=3)
PIPELINE = {
    "mlp": ("breast_cancer", {"type": "mlp", "hidden_layers": 2, "units": [64, 32]}),
    "cnn": ("digits", {"type": "cnn", "channels": [8, 16], "hidden": 32}),
}


@pytest.mark.parametrize("family", ["mlp", "cnn"])
def test_the_pruned_package_is_smaller_and_predicts_through_load_model(family, tmp_path):
    dataset, model = PIPELINE[family]
    store = str(tmp_path / "store")
    table = ingest.fn(SklearnSource(type="sklearn", dataset=dataset), store)
    raw = split.fn(table, SplitParams(type="split"), 0, store)
    scaled = normalize.fn(raw, NormalizeParams(type="normalize"), 0, store)
    shards = shard.fn(scaled, ShardParams(), store)
    spec = validate_spec(
        {
            "name": "pruned",
            "data": {
                "source": {"type": "sklearn", "dataset": dataset},
                "steps": [{"type": "split"}, {"type": "normalize"}],
            },
            "model": model,
            "train": TRAIN.model_dump(),
            "compress": {"prune": {"type": "l1_structured", "steps": 2, "finetune_epochs": 1}},
        }
    )
    trained = train_model.fn(shards, spec.model, TRAIN, 0, store)
    pruned = prune_model.fn(trained, shards, spec.compress.prune, TRAIN, 0, store)
    sizes = pruned.meta["structured"]
    assert sizes["before"]["flops"] / sizes["after"]["flops"] >= 1.8
    assert pruned.meta["steps"] == 2
    assert pruned.meta["after"]["size_bytes"] < pruned.meta["before"]["size_bytes"] / 1.8
    info = json.loads((pruned.path / "model.json").read_text())
    assert info["pruned"] == "l1_structured"
    halved = {"mlp": {"units": [32, 16]}, "cnn": {"channels": [4, 8], "hidden": 16}}[family]
    assert {k: info["model"][k] for k in halved} == halved
    report = "\n".join(compression_sections({"prune": pruned.meta}, None))
    assert f"parameters {sizes['before']['parameters']} -> {sizes['after']['parameters']}" in report
    assert "removed in 2 step(s), fine-tuned 1 epoch(s) after each" in report
    package = package_model.fn("prune", [pruned], None, spec, table, [scaled], store)
    assert package is not None
    rows = raw_test_rows(table, [scaled], [], raw, 0)
    loaded = trainflow.load_model(package.path)
    probs = loaded.predict_proba(rows)
    assert probs.shape == (len(rows), len(loaded.classes))
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    accuracy = float(np.mean(np.asarray(loaded.predict(rows)) == rows["target"].to_numpy()))
    assert accuracy == pytest.approx(pruned.meta["after"]["accuracy"], abs=1e-9)
    check = export_model(package.path, "torchscript", tmp_path / "pruned.pt")["check"]
    assert check["max_abs_difference"] <= check["tolerance"]  # it exports as any model


def spec_with(model: dict, prune: dict) -> dict:
    return {
        "name": "refused",
        "data": {
            "source": {"type": "sklearn", "dataset": "breast_cancer"},
            "steps": [{"type": "split"}],
        },
        "model": model,
        "compress": {"prune": prune},
    }


@pytest.mark.parametrize(
    ("model", "prune", "message"),
    [
        (
            {"type": "mlp", "units": 8},
            {"type": "l1_structured", "sparsity": 1.0},
            r"sparsity 1.0 removes every unit of each pruned layer",
        ),
        (
            {"type": "mlp", "hidden_layers": 2, "units": [1, 8]},
            {"type": "l2_structured", "sparsity": 0.5},
            r"removes all 1 units of hidden layer 0 \(a whole layer\)",
        ),
        (
            {"type": "transformer"},
            {"type": "l1_structured"},
            r"model.type is transformer, whose layers' outputs are shared",
        ),
        (
            {"type": "gru"},
            {"type": "l1_structured"},
            r"model.type is gru, whose layers' outputs are shared",
        ),
        (
            {"type": "mlp", "spectral_norm": True},
            {"type": "l1_structured"},
            r"model.spectral_norm's power-iteration vectors",
        ),
    ],
    ids=["sparsity_1", "whole_layer", "transformer", "recurrent", "spectral_norm"],
)
def test_what_structured_pruning_cannot_do_is_refused_at_validation(model, prune, message):
    with pytest.raises(SpecError, match=message) as caught:
        validate_spec(spec_with(model, prune))
    assert "1 problem(s)" in str(caught.value) and "compress" in str(caught.value)


def test_a_network_that_is_not_a_plain_sequence_is_refused_when_pruned():
    model, shape = MLP
    net, described = built(model, shape)
    with pytest.raises(TrainflowError, match=r"a MultiTask .*use compress.prune type l1_unst"):
        channel_prune.prune_in_steps(MultiTask(net, {"aux": 2}), described, shape, HALF)


def test_unstructured_pruning_still_reports_sparsity_and_keeps_the_widths():
    model, shape = MLP
    net, _ = built(model, shape)
    params = registry.PRUNERS["l1_unstructured"].params(type="l1_unstructured", sparsity=0.5)
    targets = registry.PRUNERS["l1_unstructured"].impl(net, params)
    trainflow.compress.make_permanent(targets)
    assert [m.out_features for m in producers(net)] == [64, 32]  # no layer is smaller
    assert channel_prune.parameters(net) == channel_prune.parameters(built(model, shape)[0])


@pytest.mark.usefixtures("prefect_engine")
def test_a_pipeline_run_prunes_packages_and_reports_the_smaller_model(tmp_path):
    result, states = run(
        "breast_cancer_mlp",
        tmp_path,
        "train.epochs=6",
        "evaluate.cv.folds=2",
        "compress.prune.type=l2_structured",
        "compress.prune.steps=2",
        "compress.prune.finetune_epochs=2",
    )
    assert all(s == "Completed" for names in states.values() for s in names)
    run_dir = Path(result["run_dir"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    pruned = metrics["compress"]["prune"]
    assert (
        pruned["structured"]["after"]["parameters"] * 1.8
        <= (pruned["structured"]["before"]["parameters"])
    )
    assert pruned["after"]["accuracy"] >= pruned["before"]["accuracy"] - 0.05
    report = (run_dir / "report.md").read_text()
    assert "## Compression: prune (l2_structured)" in report and "FLOPs per sample" in report
    info = json.loads((Path(metrics["models"]["prune"]) / "model.json").read_text())
    assert info["model"]["units"] == [32, 16] and info["pruned"] == "l2_structured"
