"""compress.quantize auto (issue 18 part 6): every available method is quantized, judged by
the gate and timed on this machine; the fastest that passes is kept and packaged as if its
type had been declared; a method the architecture cannot take is skipped with the reason."""

import json

import numpy as np
import pytest

import trainflow
from tests.flows.helpers import ROOT
from tests.tasks.test_static_int8 import outlier_model
from trainflow.engine.inference import score
from trainflow.engine.model_folder import load_model
from trainflow.errors import SpecError
from trainflow.quantize_auto import pick
from trainflow.reporting.gate_section import gate_lines
from trainflow.spec.compress import GateSpec
from trainflow.spec.model import MLPParams, RecurrentParams
from trainflow.spec.pipeline import load_spec, validate_spec
from trainflow.spec.quantize_auto import AutoQuantizeParams
from trainflow.spec.train import TrainSpec
from trainflow.tasks.ingest import SklearnSource, ingest
from trainflow.tasks.normalize import NormalizeParams, normalize
from trainflow.tasks.package import package_model
from trainflow.tasks.quantize import quantize_model
from trainflow.tasks.shard import ShardParams, shard
from trainflow.tasks.split import SplitParams, split
from trainflow.tasks.train import load_splits, train_model
from trainflow.testrows import raw_test_rows

TRAIN = TrainSpec(lr=1e-3, batch_size=32, epochs=8)
STATIC = {"type": "static_int8", "calibration_batches": 8}
AUTO = AutoQuantizeParams(type="auto", methods=[{"type": "dynamic_int8"}, STATIC], runs=3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    store = str(tmp_path_factory.mktemp("store"))
    table = ingest.fn(SklearnSource(type="sklearn", dataset="breast_cancer"), store)
    raw = split.fn(table, SplitParams(type="split"), 0, store)
    scaled = normalize.fn(raw, NormalizeParams(type="normalize"), 0, store)
    shards = shard.fn(scaled, ShardParams(), store)
    model = MLPParams(type="mlp", hidden_layers=2, units=[64, 32])
    return {
        "store": store,
        "table": table,
        "raw": raw,
        "scaled": scaled,
        "shards": shards,
        "model": train_model.fn(shards, model, TRAIN, 0, store),
    }


def test_auto_times_and_judges_every_method_and_keeps_one_that_passed(trained):
    ref = quantize_model.fn(trained["model"], trained["shards"], AUTO, trained["store"], GateSpec())
    auto = ref.meta["auto"]
    assert [c["type"] for c in auto["candidates"]] == ["dynamic_int8", "static_int8"]
    assert all(c["cpu_ms_per_batch"] > 0 and "passed" in c["gate"] for c in auto["candidates"])
    assert auto["batch_size"] == 256 and auto["threads"] == 1 and auto["fp32_cpu_ms_per_batch"] > 0
    kept = auto["candidates"][auto["chosen_index"]]
    assert kept["gate"]["passed"] and ref.meta["gate"]["passed"]
    assert ref.meta["type"] == auto["chosen"] == kept["type"]
    info = json.loads((ref.path / "model.json").read_text())
    assert info["quantized"] == kept["type"]  # the package rebuilds the kept method
    if kept["type"] == "static_int8":
        assert info["quantize_params"] == kept["params"]
    line = gate_lines("quantize", ref.meta)[0]
    assert "quantize auto, CPU ms per batch of 256 on 1 thread" in line
    assert "(the first declared that passed, unless another is 1.2x faster)" in line
    assert f"kept {auto['chosen']}" in line and "dynamic_int8 " in line and "static_int8 " in line


def test_a_candidate_that_fails_the_gate_is_never_kept(trained):
    """On a network with an outlier unit, plain static int8 (all layers int8, the fastest
    form) fails the gate; the same method with fallback auto keeps layers fp32 and passes."""
    model = outlier_model(trained)
    methods = [STATIC, {**STATIC, "fallback": "auto"}]
    params = AutoQuantizeParams(type="auto", methods=methods, runs=3)
    ref = quantize_model.fn(model, trained["shards"], params, trained["store"], GateSpec())
    harmful, rescued = ref.meta["auto"]["candidates"]
    assert harmful["gate"]["passed"] is False and rescued["gate"]["passed"] is True
    assert ref.meta["auto"]["chosen_index"] == 1 and ref.meta["gate"]["passed"] is True
    assert ref.meta["keep_fp32"] == rescued["params"]["keep_fp32"] != []


def test_a_recurrent_model_skips_static_int8_with_the_reason(trained):
    gru = RecurrentParams(type="gru", hidden=8)
    model = train_model.fn(
        trained["shards"], gru, TRAIN.model_copy(update={"epochs": 2}), 0, trained["store"]
    )
    ref = quantize_model.fn(model, trained["shards"], AUTO, trained["store"])
    dynamic, static = ref.meta["auto"]["candidates"]
    assert "static_int8 takes the mlp and cnn families" in static["skipped"]
    assert "model.type is gru" in static["skipped"] and "cpu_ms_per_batch" not in static
    assert ref.meta["type"] == "dynamic_int8" and "gate" not in ref.meta  # no gate declared
    assert "static_int8 skipped (static_int8 takes" in gate_lines("quantize", ref.meta)[0]


def test_the_kept_package_loads_and_predicts_through_load_model(trained):
    spec = validate_spec(
        {
            "name": "auto",
            "data": {
                "source": {"type": "sklearn", "dataset": "breast_cancer"},
                "steps": [{"type": "split"}, {"type": "normalize"}],
            },
            "model": {"type": "mlp", "hidden_layers": 2, "units": [64, 32]},
            "train": TRAIN.model_dump(),
            "compress": {"quantize": AUTO.model_dump(mode="json")},
        }
    )
    ref = quantize_model.fn(
        trained["model"], trained["shards"], spec.compress.quantize, trained["store"]
    )
    store, table, scaled = trained["store"], trained["table"], trained["scaled"]
    package = package_model.fn("quantize", [ref], None, spec, table, [scaled], store)
    rows = raw_test_rows(table, [scaled], [], trained["raw"], 0)
    loaded = trainflow.load_model(package.path)
    accuracy = float(np.mean(np.asarray(loaded.predict(rows)) == rows["target"].to_numpy()))
    assert accuracy == pytest.approx(ref.meta["after"]["accuracy"], abs=1e-9)
    net, _ = load_model(ref)  # the int8 network itself, rebuilt from best.pt and model.json
    test = load_splits(trained["shards"], ("test",))["test"]
    assert score(net, test, 2)[0]["accuracy"] == ref.meta["after"]["accuracy"]


def timed(*figures_and_verdicts):
    return [
        {
            "type": f"m{i}",
            "cpu_ms_per_batch": ms,
            "gate": {"passed": ok, "drop": 0.0 if ok else 0.5},
        }
        for i, (ms, ok) in enumerate(figures_and_verdicts)
    ]


def test_the_declared_order_wins_unless_another_is_faster_by_the_margin():
    assert pick(timed((1.0, True), (0.9, True)), 1.2) == 0  # 1.11x: within noise, kept first
    assert pick(timed((1.0, True), (0.8, True)), 1.2) == 1  # 1.25x: clearly faster
    assert pick(timed((1.0, True), (0.1, False)), 1.2) == 0  # faster but failed: never kept
    assert pick([{"type": "s", "skipped": "no"}, *timed((1.0, True))], 1.2) == 1


def test_auto_validates_on_a_recurrent_spec_and_needs_a_validation_part():
    spec = load_spec(ROOT / "pipelines" / "sequences_gru.yaml", ["compress.quantize={type: auto}"])
    assert [m.type for m in spec.compress.quantize.methods] == ["dynamic_int8", "static_int8"]
    with pytest.raises(SpecError) as caught:
        load_spec(
            ROOT / "pipelines" / "breast_cancer_mlp.yaml",
            [
                "compress.quantize={type: auto}",
                "data.steps.1.validation=0",
                "train.early_stopping=null",
            ],
        )
    assert "compress.quantize auto judges each method on the validation part" in str(caught.value)
