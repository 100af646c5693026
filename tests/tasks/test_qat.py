"""train.qat: quantization-aware training from qat.start_epoch (fake quantization inserted by
torch.ao FX), converted by the quantize step instead of calibrated; its package predicts as the
fake-quantized network did; a run killed across the switch resumes to the same weights; what
it cannot hold is refused at validation (issue 18 part 2)."""

import json
import logging

import numpy as np
import pytest
import torch

import trainflow
from tests.flows.helpers import ROOT, run
from tests.interrupt import after_step
from trainflow import compress
from trainflow.artifacts import Store
from trainflow.engine import checkpoint, qat
from trainflow.engine.model_folder import load_model
from trainflow.errors import SpecError
from trainflow.models.cnn import cnn
from trainflow.spec.after_training import StaticInt8Params
from trainflow.spec.model import CNNParams
from trainflow.spec.pipeline import load_spec
from trainflow.spec.qat import QatSpec
from trainflow.spec.quantize_auto import AutoQuantizeParams
from trainflow.spec.train import TrainSpec
from trainflow.tasks.ingest import SklearnSource, ingest
from trainflow.tasks.normalize import NormalizeParams, normalize
from trainflow.tasks.quantize import quantize_model
from trainflow.tasks.shard import ShardParams, shard
from trainflow.tasks.split import SplitParams, split
from trainflow.tasks.train import load_splits, resume_folder, train_model
from trainflow.testrows import raw_test_rows

pytestmark = pytest.mark.slow  # real trainings

MODEL = CNNParams(type="cnn", channels=[8, 16], hidden=32)  # conv + batch norm + relu: fused
QAT = QatSpec(start_epoch=2, freeze_bn_epoch=3, freeze_observers_epoch=3)
TRAIN = TrainSpec(lr=2e-3, batch_size=64, epochs=3, qat=QAT, checkpoint_interval_s=0)
STATIC = StaticInt8Params(type="static_int8")
FAKE_QUANT = "weight_fake_quant"  # a key only a fake-quantized network's state has


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    store = str(tmp_path_factory.mktemp("store"))
    table = ingest.fn(SklearnSource(type="sklearn", dataset="digits"), store)
    raw = split.fn(table, SplitParams(type="split", validation=0.15, test=0.2), 0, store)
    return shard.fn(
        normalize.fn(raw, NormalizeParams(type="normalize"), 0, store), ShardParams(), store
    )


@pytest.fixture(scope="module")
def trained(shards, tmp_path_factory):
    store = str(tmp_path_factory.mktemp("trained"))
    model = train_model.fn(shards, MODEL, TRAIN, 0, store)
    return {
        "store": store,
        "model": model,
        "quantized": quantize_model.fn(model, shards, STATIC, store),
    }


def test_qat_trains_fake_quantized_from_start_epoch_and_the_package_is_its_conversion(
    shards, trained
):
    best = checkpoint.load(trained["model"].path / "best.pt")
    fp32, _ = load_model(trained["model"])  # best.pt's "model": the declared network's keys
    assert set(best["model"]) == set(fp32.state_dict())
    prepared = best["qat"]  # the fake-quantized state: conv and batch norm fused, ranges learned
    assert any(FAKE_QUANT in k for k in prepared) and "0.bn.running_mean" in prepared
    scales = [v for k, v in prepared.items() if k.endswith(".scale")]
    assert scales and all(bool((s > 0).all() and (s != 1.0).any()) for s in scales)
    assert trained["model"].meta["best_epoch"] >= QAT.start_epoch  # only a QAT epoch converts

    meta = trained["quantized"].meta
    int8, _ = load_model(trained["quantized"])  # the package: the QAT weights in int8 modules
    assert all(
        ".quantized." in type(m).__module__ for m in int8.modules() if "Conv" in type(m).__name__
    )
    net = compress.prepare_qat(fp32, QAT.backend)
    net.load_state_dict(prepared)
    net.eval().apply(torch.ao.quantization.disable_observer)
    test = load_splits(shards, ("test",))["test"]
    with torch.no_grad():
        fake, real = net(test.x), int8(test.x)
    # int8 rounds where fake quantization simulated it: a few borderline rows may flip
    assert (fake.argmax(1) == real.argmax(1)).float().mean() >= 0.95
    assert (fake - real).abs().mean() <= 0.1 * fake.abs().mean()
    accuracy = [float((out.argmax(1) == test.y).float().mean()) for out in (fake, real)]
    assert accuracy[1] == pytest.approx(accuracy[0], abs=0.02)
    assert accuracy[1] == pytest.approx(meta["after"]["accuracy"])
    figures = meta["qat"]  # fp32, PTQ int8 and QAT int8, on validation and test
    assert set(figures) == {"fp32", "ptq_int8", "qat_int8"}
    assert figures["qat_int8"]["test"] == meta["after"]["accuracy"]
    assert all(0.5 < figures[m][p] <= 1 for m in figures for p in ("validation", "test"))


def test_quantize_auto_converts_the_qat_network_as_its_static_int8(shards, trained):
    auto = AutoQuantizeParams(type="auto", methods=[STATIC], runs=1)
    ref = quantize_model.fn(trained["model"], shards, auto, trained["store"])
    assert ref.meta["auto"]["chosen"] == "static_int8" and "qat" in ref.meta
    x = load_splits(shards, ("test",))["test"].x
    with torch.no_grad():  # the same int8 network as the declared static_int8's: no PTQ
        chosen, declared = (load_model(r)[0](x) for r in (ref, trained["quantized"]))
    assert torch.equal(chosen, declared)


def test_only_training_batches_move_the_ranges_and_frozen_observers_hold_them():
    net = qat.prepare(cnn([1, 8, 8], 10, [4, 8], hidden=16), QAT)
    x = torch.randn(32, 1, 8, 8)

    def ranges() -> list[torch.Tensor]:
        return [
            v.clone() for k, v in net.state_dict().items() if k.endswith(("min_val", "max_val"))
        ]

    net.train()(x)
    trained = ranges()
    with torch.no_grad():
        net.eval()(3 * x)  # validation rows: fake-quantized, never observed
    assert all(torch.equal(a, b) for a, b in zip(trained, ranges()))
    net.train()(3 * x)
    assert not all(torch.equal(a, b) for a, b in zip(trained, ranges()))
    moved = ranges()
    qat.observing(net).allowed = False  # from qat.freeze_observers_epoch on
    net.train()(5 * x)
    assert all(torch.equal(a, b) for a, b in zip(moved, ranges()))


def stopped_then_resumed(shards, spec, step, tmp_path, caplog):
    """An uninterrupted run, and one stopped right after optimizer step `step(per_epoch)`
    and run again: (whole, resumed, the stopped run's last.pt, the resumed run's log)."""
    caplog.set_level(logging.INFO, logger="trainflow")
    whole = train_model.fn(shards, MODEL, spec, 0, str(tmp_path / "whole"))
    per_epoch = json.loads((whole.path / "metrics.jsonl").read_text().splitlines()[0])["steps"]
    store = str(tmp_path / "stopped")

    def kill() -> None:
        raise KeyboardInterrupt  # as a cancelled run

    with pytest.raises(KeyboardInterrupt), after_step(step(per_epoch), kill):
        train_model.fn(shards, MODEL, spec, 0, store)
    folder = resume_folder(Store(store), shards, MODEL, spec, 0)
    saved = checkpoint.load(folder / "last.pt")
    caplog.clear()
    return whole, train_model.fn(shards, MODEL, spec, 0, store), saved, caplog.messages


def same_model(a, b) -> bool:
    x, y = (checkpoint.load(ref.path / "best.pt") for ref in (a, b))
    pieces = [(x[p], y[p]) for p in ("model", "qat")]
    same = all(torch.equal(u[k], v[k]) for u, v in pieces for k in u)
    return same and all(set(u) == set(v) for u, v in pieces) and a.meta == b.meta


def test_a_run_killed_inside_a_qat_epoch_resumes_to_the_same_weights(shards, tmp_path, caplog):
    spec = TRAIN.model_copy(update={"checkpoint_every_steps": 4})
    whole, resumed, saved, said = stopped_then_resumed(
        shards, spec, lambda per_epoch: per_epoch + 9, tmp_path, caplog
    )
    assert saved["epoch"] == QAT.start_epoch and saved["position"]  # mid-epoch, after the switch
    assert any(FAKE_QUANT in k for k in saved["model"])  # the state holds the prepared network
    assert any("resuming from epoch 2" in m for m in said)
    assert same_model(whole, resumed)


def test_a_run_killed_before_the_switch_switches_on_resume_to_the_same_weights(
    shards, tmp_path, caplog
):
    whole, resumed, saved, said = stopped_then_resumed(
        shards, TRAIN, lambda per_epoch: per_epoch + 1, tmp_path, caplog
    )
    assert saved["epoch"] == 1 and not any(FAKE_QUANT in k for k in saved["model"])
    assert any("resuming from epoch 2" in m for m in said)
    assert same_model(whole, resumed)


def test_early_stopping_before_start_epoch_brings_the_switch_forward(shards, tmp_path):
    # min_delta 10: no epoch improves on the first, so patience 1 runs out after epoch 2
    early = {"monitor": "val_loss", "patience": 1, "min_delta": 10.0}
    spec = TRAIN.model_copy(
        update={"epochs": 4, "qat": QatSpec(start_epoch=4), "early_stopping": early}
    )
    spec = TrainSpec.model_validate(spec.model_dump())
    ref = train_model.fn(shards, MODEL, spec, 0, str(tmp_path))
    # fake quantization from epoch 3, not 4; best-epoch tracking restarted there
    assert ref.meta["best_epoch"] == 3 and ref.meta["epochs_run"] == 4
    assert any(FAKE_QUANT in k for k in checkpoint.load(ref.path / "best.pt")["qat"])


@pytest.mark.usefixtures("prefect_engine")
def test_a_qat_cnn_package_loads_and_predicts_through_the_model_package(tmp_path):
    result, states = run(
        "digits_cnn",
        tmp_path,
        "train.epochs=3",
        "train.qat={start_epoch: 2}",
        "evaluate.cv=null",
        "ensemble=null",
        "compress={quantize: {type: static_int8, calibration_batches: 8}, "
        "prune: {type: l1_unstructured, sparsity: 0.5, finetune_epochs: 1}}",
    )
    assert set(states["quantize"]) == {"Completed"}
    assert set(states["prune"]) == {"Completed"}  # its fp32 fine-tune: no fake quantization
    quantized = result["compressed"]["quantize"].meta
    assert quantized["qat"]["qat_int8"]["test"] == quantized["after"]["accuracy"]
    spec = load_spec(ROOT / "pipelines" / "digits_cnn.yaml")
    data = result["data"]
    raw = raw_test_rows(
        data["ingested"], data["steps"], spec.data.pre_split, data["raw_splits"], spec.seed
    )
    predicted = trainflow.load_model(result["packages"]["quantize"]).predict(raw)
    accuracy = float(np.mean(predicted == raw["target"].to_numpy()))
    assert accuracy == pytest.approx(quantized["after"]["accuracy"])
    report = next((tmp_path / "runs").rglob("report.md")).read_text()
    assert "quantization-aware training, accuracy on validation / test: fp32 " in report
    assert "PTQ int8 " in report and "QAT int8 (packaged) " in report


@pytest.mark.parametrize(
    ("pipeline", "overrides", "said"),
    [
        (
            "sequences_gru",
            ["train.qat={start_epoch: 1}", "compress.quantize={type: dynamic_int8}"],
            "train.qat trains for static int8, which takes the mlp and cnn families; "
            "model.type is gru",
        ),
        (
            "digits_cnn",
            ["train.qat={start_epoch: 41}", "compress.quantize={type: static_int8}"],
            "qat.start_epoch (41) is after the last epoch (epochs: 40)",
        ),
        (
            "digits_cnn",
            ["train.qat={start_epoch: 5, freeze_observers_epoch: 3}"],
            "qat.freeze_observers_epoch (3) is before qat.start_epoch (5)",
        ),
        (
            "digits_cnn",
            ["train.qat={start_epoch: 2}", "train.distributed={strategy: ddp}"],
            "qat is built for one process training the network itself, and "
            "train.distributed (ddp) is set",
        ),
        (
            "digits_cnn",
            ["train.qat={start_epoch: 2}", "train.precision=bf16"],
            "qat trains with fake quantization in fp32 (torch.ao's fake-quant kernels take no "
            "bf16), and train.precision is bf16",
        ),
        (
            "digits_cnn",
            [
                "train.qat={start_epoch: 2}",
                "compress.quantize={type: auto, methods: [{type: dynamic_int8}]}",
            ],
            "train.qat trains for the static int8 conversion and compress.quantize is auto: "
            "set compress.quantize to {type: static_int8} (or auto with static_int8 among",
        ),
        (
            "digits_cnn",
            ["train.qat={start_epoch: 2}"],  # the pipeline's compress.quantize: dynamic_int8
            "train.qat trains for the static int8 conversion and compress.quantize is dynamic_int8",
        ),
    ],
)
def test_what_qat_cannot_hold_is_refused_at_validation(pipeline, overrides, said):
    with pytest.raises(SpecError) as caught:
        load_spec(ROOT / "pipelines" / f"{pipeline}.yaml", overrides)
    assert said in str(caught.value)
