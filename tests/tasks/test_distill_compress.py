"""compress.distill (issue 18 part 4): after training, a smaller student learns from the trained
model as teacher through the one training loop and train.distill's loss; it is its own model
artifact whose package predicts, the gate judges it like any compressed model, and the
report puts its size, parameters and accuracy beside the teacher's."""

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

import trainflow
from tests.flows.helpers import ROOT, run
from trainflow.cli import main
from trainflow.engine.model_folder import load_model
from trainflow.errors import SpecError, TrainflowError
from trainflow.reporting.markdown import compression_sections
from trainflow.spec.compress import DistillSpec, GateSpec
from trainflow.spec.pipeline import load_spec, validate_spec
from trainflow.spec.train import TrainSpec
from trainflow.tasks.distill import distill_model
from trainflow.tasks.ingest import ingest
from trainflow.tasks.normalize import NormalizeParams, normalize
from trainflow.tasks.package import package_model
from trainflow.tasks.shard import ShardParams, shard
from trainflow.tasks.split import SplitParams, split
from trainflow.tasks.train import load_splits, train_model
from trainflow.testrows import raw_test_rows

TRAIN = TrainSpec(lr=3e-3, batch_size=32, epochs=20)
TEACHER = {"type": "mlp", "hidden_layers": 2, "units": [64, 64]}
STUDENT = {"type": "mlp", "hidden_layers": 1, "units": 8}


def write_table(path, rows: int = 1200, seed: int = 0) -> None:
    """Three classes from a fixed random tanh network of 8 features, 10 % of labels noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 8))
    y = np.argmax(np.tanh(x @ rng.normal(size=(8, 16))) @ rng.normal(size=(16, 3)), axis=1)
    flip = rng.random(rows) < 0.1
    y[flip] = rng.integers(0, 3, flip.sum())
    frame = pl.DataFrame({f"f{i}": x[:, i] for i in range(8)})
    frame.with_columns(pl.Series("label", [f"c{k}" for k in y])).write_csv(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distill")
    write_table(folder / "table.csv")
    store = str(folder / "store")
    spec = validate_spec(
        {
            "name": "distilled",
            "data": {
                "source": {"type": "csv", "path": str(folder / "table.csv"), "target": "label"},
                "steps": [{"type": "split"}, {"type": "normalize"}],
            },
            "model": TEACHER,
            "train": TRAIN.model_dump(),
            "compress": {"distill": {"model": STUDENT, "epochs": 20}},
        }
    )
    table = ingest.fn(spec.data.source, store)
    raw = split.fn(table, SplitParams(type="split"), 0, store)
    scaled = normalize.fn(raw, NormalizeParams(type="normalize"), 0, store)
    shards = shard.fn(scaled, ShardParams(), store)
    model = train_model.fn(shards, spec.model, TRAIN, 0, store)
    student = distill_model.fn(model, shards, spec.compress.distill, TRAIN, 0, store)
    return {
        "spec": spec,
        "store": store,
        "table": table,
        "raw": raw,
        "scaled": scaled,
        "shards": shards,
        "model": model,
        "student": student,
    }


def test_the_student_is_smaller_and_reaches_the_teacher(trained):
    meta = trained["student"].meta
    sizes = meta["sizes"]
    assert sizes["before"]["parameters"] / sizes["after"]["parameters"] >= 5
    assert sizes["before"]["flops"] > sizes["after"]["flops"]
    assert meta["after"]["size_bytes"] < meta["before"]["size_bytes"] / 3
    # the student's architecture is what its own artifact rebuilds
    info = json.loads((trained["student"].path / "model.json").read_text())
    assert {k: info["model"][k] for k in STUDENT} == STUDENT
    assert meta["after"]["accuracy"] >= meta["before"]["accuracy"] - 0.03
    # ...and no worse than the same student trained from scratch on the same data
    scratch = train_model.fn(
        trained["shards"], trained["spec"].compress.distill.model, TRAIN, 0, trained["store"]
    )
    test = load_splits(trained["shards"], ("test",))["test"]
    with torch.no_grad():
        alone = (load_model(scratch)[0](test.x).argmax(1) == test.y).float().mean().item()
    assert meta["after"]["accuracy"] >= alone - 0.02


def test_the_teacher_alone_can_teach_the_student(trained):
    """alpha 1: the soft targets are the whole loss, so what the student knows it learned
    from the trained model (it agrees with it on most test rows and nearly matches it)."""
    soft = DistillSpec(model=STUDENT, epochs=20, alpha=1.0)
    ref = distill_model.fn(trained["model"], trained["shards"], soft, TRAIN, 0, trained["store"])
    test = load_splits(trained["shards"], ("test",))["test"]
    with torch.no_grad():
        teacher = load_model(trained["model"])[0](test.x).argmax(1)
        student = load_model(ref)[0](test.x).argmax(1)
    assert (student == teacher).float().mean().item() >= 0.9
    assert ref.meta["after"]["accuracy"] >= ref.meta["before"]["accuracy"] - 0.05


def test_the_student_package_predicts_through_load_model_and_the_cli(trained, tmp_path):
    t = trained
    package = package_model.fn(
        "distill", [t["student"]], None, t["spec"], t["table"], [t["scaled"]], t["store"]
    )
    assert package is not None
    rows = raw_test_rows(t["table"], [t["scaled"]], [], t["raw"], 0)
    loaded = trainflow.load_model(package.path)
    accuracy = float(np.mean(np.asarray(loaded.predict(rows)) == rows["label"].to_numpy()))
    assert accuracy == pytest.approx(t["student"].meta["after"]["accuracy"], abs=1e-9)
    rows.drop("label").write_csv(tmp_path / "rows.csv")
    output = tmp_path / "predictions.csv"
    assert (
        main(["predict", str(package.path), str(tmp_path / "rows.csv"), "--output", str(output)])
        == 0
    )
    assert pl.read_csv(output)["prediction"].to_list() == loaded.predict(rows).tolist()


def test_a_bad_student_is_refused_by_the_gate_and_the_report_names_it(trained):
    t = trained
    tiny = DistillSpec(model={"type": "mlp", "hidden_layers": 1, "units": 1}, epochs=1)
    gate = GateSpec(max_drop=0.01)
    ref = distill_model.fn(t["model"], t["shards"], tiny, TRAIN, 0, t["store"], gate)
    verdict = ref.meta["gate"]
    assert verdict["passed"] is False and verdict["drop"] > 0.01
    assert verdict["baseline"] == pytest.approx(t["model"].meta["val_accuracy"])  # the teacher's
    package = package_model.fn(
        "distill", [ref], None, t["spec"], t["table"], [t["scaled"]], t["store"]
    )
    assert package is None  # so nothing to export, promote or score
    report = "\n".join(compression_sections({"distill": ref.meta}, None))
    assert (
        f"gate FAILED: distill (mlp): accuracy {verdict['value']:.4f} vs "
        f"{verdict['baseline']:.4f} (the trained model) on the validation part, "
        f"drop {verdict['drop']:.4f} > max_drop 0.01: not packaged"
    ) in report
    sizes = ref.meta["sizes"]
    assert f"parameters {sizes['before']['parameters']} -> {sizes['after']['parameters']}" in report


@pytest.mark.parametrize(
    ("student", "message"),
    [
        (
            {"type": "mlp", "hidden_layers": 3, "units": 128},
            r"the mlp student has \d+ parameters and the trained model \d+: distillation "
            r"compresses only into a smaller student",
        ),
        (
            {"type": "cnn", "channels": [2], "hidden": 4},
            r"compress.distill.model: a cnn student cannot read the trained model's inputs "
            r"\(shape \[8\]\): cnn needs image inputs",
        ),
    ],
    ids=["larger", "wrong-input"],
)
def test_a_student_that_cannot_replace_the_teacher_is_refused(trained, student, message):
    params = DistillSpec(model=student, epochs=1)
    with pytest.raises(TrainflowError, match=message):
        distill_model.fn(trained["model"], trained["shards"], params, TRAIN, 0, trained["store"])


def test_the_task_run_alone_on_a_spec_without_the_section_says_what_to_add(trained):
    with pytest.raises(TrainflowError, match="the spec has no compress.distill"):
        distill_model.fn(trained["model"], trained["shards"], None, TRAIN, 0, trained["store"])


SPEC = ROOT / "pipelines" / "breast_cancer_mlp.yaml"
SMALL = "compress.distill={model: {type: mlp, hidden_layers: 1, units: 8}, epochs: 3}"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["compress.distill={model: {type: mlp, units: 8}, epochs: 0}"],
            "compress.distill.epochs is 0: the student would not train",
        ),
        (
            ["compress={distill: {model: {type: mlp}, epochs: 2, quantize: true}}"],
            "compress.distill.quantize quantizes the student with compress.quantize, and the "
            "spec has no compress.quantize",
        ),
        (
            [
                "compress.distill={model: {type: mlp, hidden_layers: 2, units: [64, 32], "
                "activation: relu, dropout: 0.2}, epochs: 2}"
            ],
            "compress.distill.model is the trained model's architecture",
        ),
        (
            [
                "compress.distill={model: {type: gru, hidden: 8}, epochs: 3, quantize: true}",
                "compress.quantize={type: static_int8}",
            ],
            "compress.distill.model.type is gru",
        ),
    ],
    ids=["epochs-0", "quantize-without-quantizer", "same-as-teacher", "static-int8-of-a-gru"],
)
def test_a_distill_section_that_cannot_hold_is_a_spec_error(overrides, message):
    with pytest.raises(SpecError) as caught:
        load_spec(SPEC, overrides)
    assert message in str(caught.value)


def test_a_gate_over_distillation_alone_is_valid():
    spec = load_spec(SPEC, ["compress={}", SMALL, "compress.gate={max_drop: 0.02}"])
    assert spec.compress.gate.max_drop == 0.02 and spec.compress.distill.epochs == 3


@pytest.mark.usefixtures("prefect_engine")
def test_a_pipeline_distills_quantizes_the_student_and_a_rerun_is_cached(tmp_path):
    overrides = (
        "train.epochs=6",
        "evaluate.cv=null",
        "ensemble=null",
        "compress.prune=null",
        SMALL,
        "compress.distill.quantize=true",
        "compress.gate={max_drop: 1.0}",
    )
    result, states = run("breast_cancer_mlp", tmp_path, *overrides)
    assert states["distill"] == ["Completed"] and states["quantize"] == ["Completed"]
    distilled, quantized = result["compressed"]["distill"], result["compressed"]["quantize"]
    # the int8 model is the student's, gated from the trained model (the teacher)
    assert quantized.meta["of"] == "distill"
    assert quantized.meta["before"] == distilled.meta["after"]
    assert quantized.meta["gate"]["baseline"] == distilled.meta["gate"]["baseline"]
    info = json.loads((quantized.path / "model.json").read_text())
    assert info["quantized"] == "dynamic_int8" and info["model"]["units"] == 8
    packages = result["packages"]
    for kind in ("distill", "quantize"):
        assert trainflow.load_model(packages[kind]).info.kind == kind
    text = (Path(result["run_dir"]) / "report.md").read_text()
    assert "## Compression: distill (mlp)" in text
    assert "before: the trained model (teacher); after: the mlp student" in text
    assert "quantized: the distilled student (compress.distill.quantize)" in text
    again, states = run("breast_cancer_mlp", tmp_path, *overrides)
    assert states["distill"] == ["Cached"] and states["quantize"] == ["Cached"]
    assert again["compressed"]["distill"].fingerprint == distilled.fingerprint
