"""Per-step metrics, TensorBoard event files and model debugging output."""

import json
import struct

import pytest
import torch
from torch import nn

from tests.interrupt import after_step
from trainflow.engine.data import Split
from trainflow.engine.loop import fit
from trainflow.engine.training import optimizer_factory
from trainflow.errors import TrainflowError
from trainflow.models.mlp import mlp
from trainflow.plots import curves_png
from trainflow.spec.train import TrainSpec


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(160, 6, generator=g)
    return Split(x, (x[:, 0] + x[:, 1] > 0).long()), Split(x[:40], (x[:40, 0] > 0).long())


def run(tmp_path, net=None, **knobs):
    spec = TrainSpec.model_validate(
        {"lr": 0.01, "epochs": 3, "batch_size": 16, "device": "cpu", "checkpoint_every": 0, **knobs}
    )
    train, val = data()
    torch.manual_seed(0)
    net = net or mlp([6], 2, [16, 16])
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return net, fit(net, train, val, spec, 0, optimizer_factory(spec), out), out


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_per_step_rows_with_loss_lr_and_gradient_norm(tmp_path):
    _, result, out = run(
        tmp_path, log={"every_steps": 4}, schedule={"type": "cosine", "warmup": {"steps": 8}}
    )
    logged = rows(out / "metrics.jsonl")
    steps = [r for r in logged if "step" in r]
    assert [r["step"] for r in steps] == list(range(4, 31, 4))  # 10 steps per epoch, 3 epochs
    assert steps[0]["lr"] < steps[1]["lr"]  # warming up
    assert all(r["grad_norm"] > 0 and r["loss"] > 0 for r in steps)
    # each epoch row follows its epoch's step rows; epoch rows are the history
    assert [r for r in logged if "step" not in r] == result.history
    assert [r.get("epoch") for r in logged][:4] == [1, 1, 1, 2]
    assert curves_png(logged).startswith(b"\x89PNG")  # the report's plot reads the mixed log


@pytest.mark.slow
def test_per_step_rows_survive_a_mid_epoch_resume(tmp_path):
    knobs = {"log": {"every_steps": 3}, "checkpoint_every_steps": 1, "checkpoint_interval_s": 0}
    _, _, full = run(tmp_path, **knobs)

    class Crash(Exception):
        pass

    spec = TrainSpec.model_validate(
        {"lr": 0.01, "epochs": 3, "batch_size": 16, "device": "cpu", **knobs}
    )
    train, val = data()

    def kill():
        raise Crash

    for name in ("killed", "resumed"):
        torch.manual_seed(0)
        net = mlp([6], 2, [16, 16])
        (tmp_path / name).mkdir()
        if name == "killed":
            with pytest.raises(Crash), after_step(14, kill):
                fit(net, train, val, spec, 0, optimizer_factory(spec), tmp_path / name)
        else:
            fit(
                net,
                train,
                val,
                spec,
                0,
                optimizer_factory(spec),
                tmp_path / name,
                resume=tmp_path / "killed" / "last.pt",
            )
    assert (tmp_path / "resumed" / "metrics.jsonl").read_bytes() == (
        full / "metrics.jsonl"
    ).read_bytes()


def scalars(folder):
    """(tag, step, value) of every scalar in the TensorBoard event files under `folder`."""
    from tensorboardX.proto.event_pb2 import Event

    found = []
    for path in folder.rglob("events.out.tfevents.*"):
        raw = path.read_bytes()
        at = 0
        while at < len(raw):  # TFRecord: length, crc, payload, crc
            (length,) = struct.unpack("<Q", raw[at : at + 8])
            event = Event.FromString(raw[at + 12 : at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                found.append((value.tag, event.step, value.simple_value))
    return found


def test_tensorboard_event_files(tmp_path):
    board = tmp_path / "tb"
    _, result, _ = run(tmp_path, log={"every_steps": 5, "tensorboard": str(board)})
    found = scalars(board)
    tags = {tag for tag, _, _ in found}
    assert {
        "step/loss",
        "step/lr",
        "step/grad_norm",
        "epoch/val_loss",
        "epoch/train_loss",
        "epoch/samples_per_s",
    } <= tags
    val_losses = [v for tag, _, v in sorted(found, key=lambda t: t[1]) if tag == "epoch/val_loss"]
    assert val_losses == pytest.approx([r["val_loss"] for r in result.history], rel=1e-6)


def test_layer_norms_and_dead_units_per_epoch(tmp_path):
    torch.manual_seed(0)
    net = mlp([6], 2, [16, 16])
    with torch.no_grad():
        net[1].bias[:8] = -100.0  # half of the first layer's units can never fire
    net, _, out = run(tmp_path, net=net, lr=1e-4, debug={"layer_norms": True, "dead_units": True})
    report = rows(out / "debug.jsonl")
    assert [r["epoch"] for r in report] == [1, 2, 3]
    last = report[-1]
    assert last["layers"]["1.weight"]["weight_norm"] == pytest.approx(
        float(net[1].weight.detach().norm()), rel=1e-6
    )
    assert last["layers"]["3.weight"]["grad_norm"] > 0
    assert last["dead_units"]["2"] == pytest.approx(0.5)  # the ReLU after layer 1
    assert last["dead_units"]["4"] < 0.5


class SqrtNet(nn.Module):
    """A model whose backward pass makes NaN: sqrt's gradient at a negative input."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(6, 2)

    def forward(self, x):
        h = self.linear(x)
        return torch.where(h > 0, h.sqrt(), h)


@pytest.mark.filterwarnings("ignore:Error detected in")  # anomaly mode's trace of the op
@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
def test_anomaly_detection_names_the_operation(tmp_path):
    with pytest.raises(TrainflowError, match=r"detect_anomaly.*SqrtBackward0"):
        run(tmp_path, net=SqrtNet(), debug={"detect_anomaly": True})
