"""compress.quantize static_int8: int8 weights and activations calibrated on training batches,
for the mlp and cnn families; its package loads and predicts through trainflow.load_model
(issue 18 part 1)."""

import json

import numpy as np
import pytest
import torch

import trainflow
from tests.flows.helpers import ROOT, run
from trainflow.artifacts import ArtifactRef, Store
from trainflow.engine import checkpoint
from trainflow.engine.inference import score
from trainflow.engine.model_folder import WEIGHTS, describe, load_model
from trainflow.errors import SpecError, TrainflowError
from trainflow.reporting.gate_section import gate_lines
from trainflow.spec.after_training import StaticInt8Params
from trainflow.spec.compress import GateSpec
from trainflow.spec.model import MLPParams
from trainflow.spec.pipeline import load_spec
from trainflow.spec.train import TrainSpec
from trainflow.tasks.ingest import SklearnSource, ingest
from trainflow.tasks.normalize import NormalizeParams, normalize
from trainflow.tasks.quantize import quantize_model
from trainflow.tasks.shard import ShardParams, shard
from trainflow.tasks.split import SplitParams, split
from trainflow.tasks.train import load_splits, train_model
from trainflow.testrows import raw_test_rows

STATIC = StaticInt8Params(type="static_int8", calibration_batches=8)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    store = str(tmp_path_factory.mktemp("store"))
    table = ingest.fn(SklearnSource(type="sklearn", dataset="breast_cancer"), store)
    raw = split.fn(table, SplitParams(type="split"), 0, store)
    shards = shard.fn(
        normalize.fn(raw, NormalizeParams(type="normalize"), 0, store), ShardParams(), store
    )
    model = MLPParams(type="mlp", hidden_layers=2, units=[64, 32])
    spec = TrainSpec(lr=1e-3, batch_size=32, epochs=8)
    return {
        "store": store,
        "shards": shards,
        "model": train_model.fn(shards, model, spec, 0, store),
    }


def test_static_int8_quantizes_weights_and_activations_and_keeps_accuracy(trained):
    ref = quantize_model.fn(trained["model"], trained["shards"], STATIC, trained["store"])
    assert ref.meta["type"] == "static_int8"
    assert ref.meta["linear_weights_smaller_x"] >= 3.5
    assert ref.meta["after"]["accuracy"] >= ref.meta["before"]["accuracy"] - 0.01
    net, _ = load_model(ref)  # rebuilt from best.pt (weights_only) and model.json
    linears = [m for m in net.children() if "Linear" in type(m).__name__]
    assert len(linears) == 3 and all(".quantized." in type(m).__module__ for m in linears)
    assert all(m.weight().qscheme() == torch.per_channel_affine for m in linears)
    ranges = net.state_dict()
    assert ranges["0_scale_0"] > 0 and ranges["0_scale_0"] != 1.0  # the input's, calibrated
    test = load_splits(trained["shards"], ("test",))["test"]
    assert score(net, test, 2)[0]["accuracy"] == ref.meta["after"]["accuracy"]


def test_calibration_with_fewer_batches_than_declared_is_refused(trained):
    wanted = STATIC.model_copy(update={"calibration_batches": 1000})
    with pytest.raises(TrainflowError) as caught:
        quantize_model.fn(trained["model"], trained["shards"], wanted, trained["store"])
    message = str(caught.value)
    assert "calibration_batches is 1000 batches of 32 rows" in message
    assert "the training part has 369 rows, 11 such batches" in message


def test_static_int8_of_a_recurrent_model_is_refused_at_validation():
    with pytest.raises(SpecError) as caught:
        load_spec(
            ROOT / "pipelines" / "sequences_gru.yaml", ["compress.quantize={type: static_int8}"]
        )
    assert "static_int8 takes the mlp and cnn families" in str(caught.value)
    assert "model.type is gru: use type dynamic_int8" in str(caught.value)


@pytest.mark.usefixtures("prefect_engine")
def test_a_static_int8_cnn_package_loads_and_predicts_through_the_model_package(tmp_path):
    result, states = run(
        "digits_cnn",
        tmp_path,
        "train.epochs=3",
        "evaluate.cv=null",
        "ensemble=null",
        "compress={quantize: {type: static_int8, calibration_batches: 8}}",
    )
    assert set(states["quantize"]) == {"Completed"}
    quantized = result["compressed"]["quantize"].meta
    assert quantized["after"]["accuracy"] >= quantized["before"]["accuracy"] - 0.02
    spec = load_spec(ROOT / "pipelines" / "digits_cnn.yaml")
    data = result["data"]
    raw = raw_test_rows(
        data["ingested"], data["steps"], spec.data.pre_split, data["raw_splits"], spec.seed
    )
    model = trainflow.load_model(result["packages"]["quantize"])
    predicted = model.predict(raw)
    accuracy = float(np.mean(predicted == raw["target"].to_numpy()))
    assert accuracy == pytest.approx(quantized["after"]["accuracy"])


def outlier_model(trained: dict) -> ArtifactRef:
    """The trained network with one hidden unit's activation 10^4 times larger and its
    outgoing weights 10^4 times smaller: the same function in fp32 (ReLU commutes with a
    positive scale), and an activation range whose per-tensor int8 step erases the others."""
    net, info = load_model(trained["model"])
    with torch.no_grad():
        net[1].weight[0] *= 1e4
        net[1].bias[0] *= 1e4
        net[3].weight[:, 0] /= 1e4
    store = Store(trained["store"])
    with store.writer("model") as staging:
        checkpoint.save(staging / WEIGHTS, {"model": net.state_dict()})
        describe(staging, info["model"], info["input_shape"], info["classes"])
        return store.commit(staging, "model", schema=trained["model"].data_schema, meta={})


def test_fallback_auto_keeps_the_costliest_layers_in_fp32_until_the_gate_holds(trained):
    model, gate = outlier_model(trained), GateSpec(max_drop=0.01)
    plain = quantize_model.fn(model, trained["shards"], STATIC, trained["store"], gate)
    assert plain.meta["gate"]["passed"] is False  # the outlier unit ruins int8 activations
    auto = STATIC.model_copy(update={"fallback": "auto"})
    ref = quantize_model.fn(model, trained["shards"], auto, trained["store"], gate)
    assert ref.meta["gate"]["passed"] is True
    kept = json.loads((ref.path / "model.json").read_text())["quantize_params"]["keep_fp32"]
    assert kept and set(kept) <= {"1", "3", "5"} and ref.meta["keep_fp32"] == kept
    assert f"(layers kept in fp32: {', '.join(kept)})" in gate_lines("quantize", ref.meta)[0]
    net, _ = load_model(ref)  # rebuilt with the same layers in fp32
    linears = {n: type(m).__module__ for n, m in net.named_children() if "Linear" in repr(m)}
    assert {n for n, where in linears.items() if ".quantized." not in where} == set(kept)
    test = load_splits(trained["shards"], ("test",))["test"]
    assert score(net, test, 2)[0]["accuracy"] == ref.meta["after"]["accuracy"]


def test_fallback_auto_without_a_gate_is_a_spec_error():
    with pytest.raises(SpecError) as caught:
        load_spec(
            ROOT / "pipelines" / "breast_cancer_mlp.yaml",
            ["compress.quantize={type: static_int8, fallback: auto}"],
        )
    assert "fallback auto keeps layers in fp32 until compress.gate holds" in str(caught.value)
