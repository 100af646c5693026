"""compress.gate: a compressed model whose validation metric drops too far is judged failed by
its compress task, is not packaged, and the report says by how much (issue 18 part 5)."""

import json
from pathlib import Path

import pytest

from tests.flows.helpers import ROOT, run
from trainflow.errors import SpecError
from trainflow.spec.after_training import DynamicInt8Params, L1UnstructuredParams
from trainflow.spec.compress import GateSpec
from trainflow.spec.model import MLPParams
from trainflow.spec.pipeline import load_spec
from trainflow.spec.train import TrainSpec
from trainflow.tasks.ingest import SklearnSource, ingest
from trainflow.tasks.normalize import NormalizeParams, normalize
from trainflow.tasks.prune import prune_model
from trainflow.tasks.quantize import quantize_model
from trainflow.tasks.shard import ShardParams, shard
from trainflow.tasks.split import SplitParams, split
from trainflow.tasks.train import train_model

SPEC = ROOT / "pipelines" / "breast_cancer_mlp.yaml"
TRAIN = TrainSpec(lr=1e-3, batch_size=32, epochs=8)
# 99 % of the weights gone and no fine-tune: the network forgets what it learned
HARMFUL = L1UnstructuredParams(type="l1_unstructured", sparsity=0.99)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    store = str(tmp_path_factory.mktemp("store"))
    table = ingest.fn(SklearnSource(type="sklearn", dataset="breast_cancer"), store)
    raw = split.fn(table, SplitParams(type="split"), 0, store)
    shards = shard.fn(
        normalize.fn(raw, NormalizeParams(type="normalize"), 0, store), ShardParams(), store
    )
    model = MLPParams(type="mlp", hidden_layers=2, units=[64, 32])
    return {
        "store": store,
        "shards": shards,
        "model": train_model.fn(shards, model, TRAIN, 0, store),
    }


def test_a_harmful_pruning_is_judged_failed_on_the_validation_part(trained):
    gate = GateSpec(max_drop=0.01)
    ref = prune_model.fn(
        trained["model"], trained["shards"], HARMFUL, TRAIN, 0, trained["store"], gate
    )
    verdict = ref.meta["gate"]
    assert verdict["metric"] == "accuracy" and verdict["on"] == "validation"
    assert verdict["passed"] is False
    assert verdict["drop"] == pytest.approx(verdict["baseline"] - verdict["value"])
    assert verdict["drop"] > 0.01
    assert verdict["baseline"] > 0.9  # the trained model's, before pruning in place


def test_a_lossless_enough_quantization_passes_and_an_ungated_one_records_no_verdict(trained):
    int8 = DynamicInt8Params(type="dynamic_int8")
    ref = quantize_model.fn(
        trained["model"], trained["shards"], int8, trained["store"], GateSpec(max_drop=0.05)
    )
    assert ref.meta["gate"]["passed"] is True
    assert abs(ref.meta["gate"]["drop"]) <= 0.05
    ungated = quantize_model.fn(trained["model"], trained["shards"], int8, trained["store"])
    assert "gate" not in ungated.meta


def test_a_gate_on_a_lower_is_better_metric_counts_a_rise_as_the_drop(trained):
    gate = GateSpec(metric="log_loss", max_drop=0.0)
    ref = prune_model.fn(
        trained["model"], trained["shards"], HARMFUL, TRAIN, 0, trained["store"], gate
    )
    verdict = ref.meta["gate"]
    assert verdict["value"] > verdict["baseline"]  # a worse loss
    assert verdict["drop"] == pytest.approx(verdict["value"] - verdict["baseline"])
    assert verdict["passed"] is False


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["compress.gate={metric: roc_auc}"],
            "'roc_auc' is not a metric this run computes (add it to evaluate.metrics); "
            "available: accuracy, balanced_accuracy",
        ),
        (
            ["compress.gate={metric: acuracy}"],
            "'acuracy' is not a metric this run computes; available: accuracy",
        ),
        (["compress={gate: {max_drop: 0.01}}"], "set compress.quantize or compress.prune"),
        (
            ["compress.gate={}", "data.steps.1.validation=0", "train.early_stopping=null"],
            "split.validation is 0, so there is no validation part",
        ),
    ],
)
def test_a_gate_that_cannot_hold_is_a_spec_error(overrides, message):
    with pytest.raises(SpecError) as caught:
        load_spec(SPEC, overrides)
    assert message in str(caught.value)


def test_the_gate_defaults_to_the_early_stopping_metric():
    assert load_spec(SPEC, ["compress.gate={}"]).compress.gate.metric == "accuracy"  # val_loss
    chosen = load_spec(SPEC, ["compress.gate={}", "train.early_stopping.monitor=val_f1_macro"])
    assert chosen.compress.gate.metric == "f1_macro"
    with_auc = ["compress.gate={metric: roc_auc}", "evaluate.metrics=[accuracy, roc_auc]"]
    assert load_spec(SPEC, with_auc).compress.gate.metric == "roc_auc"


@pytest.mark.usefixtures("prefect_engine")
def test_a_model_past_the_gate_gets_no_package_and_the_report_says_by_how_much(tmp_path):
    result, states = run(
        "breast_cancer_mlp",
        tmp_path,
        "train.epochs=8",
        "evaluate.cv=null",
        "ensemble=null",
        "compress.prune.sparsity=0.99",
        "compress.prune.finetune_epochs=0",
        "compress.gate={max_drop: 0.01}",
    )
    assert all(s == "Completed" for names in states.values() for s in names)
    packages = result["packages"]
    assert packages["prune"] is None  # nothing to export, promote or score
    assert packages["quantize"] is not None and Path(packages["quantize"]).is_dir()
    run_dir = Path(result["run_dir"])
    report = (run_dir / "report.md").read_text()
    failed = result["compressed"]["prune"].meta["gate"]
    assert (
        f"gate FAILED: prune (l1_unstructured): accuracy {failed['value']:.4f} vs "
        f"{failed['baseline']:.4f} (the trained model) on the validation part, "
        f"drop {failed['drop']:.4f} > max_drop 0.01: not packaged"
    ) in report
    assert "gate passed: quantize (dynamic_int8): accuracy" in report
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["compress"]["prune"]["gate"]["passed"] is False
