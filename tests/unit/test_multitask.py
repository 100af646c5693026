"""Multi-task heads over a shared trunk, and parameter sharing between layers."""

import polars as pl
import pytest
import torch

from trainflow.engine.checks import check_model_and_training
from trainflow.engine.data import Split
from trainflow.engine.loop import fit
from trainflow.engine.model_folder import build_model
from trainflow.engine.training import optimizer_factory
from trainflow.errors import DataError, TrainflowError
from trainflow.models.multitask import MultiTask
from trainflow.spec.model import MLPParams, RecurrentParams
from trainflow.spec.train import TrainSpec
from trainflow.tables import TableSchema, to_arrays

AUX = {"parity": ["even", "odd"], "sign": ["neg", "pos"]}


def data(n=600):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    main = (x[:, 0] + x[:, 1] > 0).long()
    parity = (x[:, 2] > 0).long()  # learnable from the same inputs
    sign = (x[:, 3] * x[:, 4] > 0).long()
    labels = torch.stack([main, parity, sign], dim=1).numpy()
    cut = n * 3 // 4
    return (
        Split.from_arrays(x[:cut].numpy(), labels[:cut]),
        Split.from_arrays(x[cut:].numpy(), labels[cut:]),
    )


def test_heads_share_the_trunk_and_the_main_head_is_the_default_output():
    torch.manual_seed(0)
    net = build_model(MLPParams(type="mlp", hidden_layers=2, units=16), [6], 3, AUX)
    assert isinstance(net, MultiTask)
    x = torch.randn(5, 6)
    main, heads = net(x, heads=True)
    assert torch.equal(main, net(x)) and main.shape == (5, 3)
    assert {k: v.shape for k, v in heads.items()} == {"parity": (5, 2), "sign": (5, 2)}
    heads["parity"].sum().backward()  # an auxiliary loss trains the shared trunk
    assert net.model[1].weight.grad.abs().sum() > 0
    assert net.model[5].weight.grad is None  # but not the main head


def train(task_weights, epochs=12):
    train_split, val = data()
    spec = TrainSpec(
        lr=0.01,
        epochs=epochs,
        batch_size=32,
        device="cpu",
        checkpoint_every=0,
        task_weights=task_weights,
    )
    torch.manual_seed(0)
    net = build_model(MLPParams(type="mlp", hidden_layers=2, units=32), [6], 2, AUX)
    return fit(net, train_split, val, spec, 0, optimizer_factory(spec))


@pytest.mark.slow
def test_each_head_learns_its_target_by_its_loss_weight():
    taught = train({})  # weight 1 each
    last = taught.history[-1]
    assert last["val_accuracy"] > 0.9 and last["val_parity_accuracy"] > 0.9
    assert last["val_sign_accuracy"] > 0.7  # a product of two inputs: harder, still learned
    ignored = train({"parity": 0.0, "sign": 0.0})
    assert ignored.history[-1]["val_parity_accuracy"] < 0.7  # weight 0: an untrained head
    assert ignored.history[-1]["val_accuracy"] > 0.9


def test_task_weights_must_name_auxiliary_targets_and_rule_out_tbptt():
    with pytest.raises(
        TrainflowError,
        match=r"train.task_weights: \['parrity'\] are not "
        r"auxiliary targets.*\['parity', 'sign'\]",
    ):
        check_model_and_training(
            MLPParams(type="mlp"), TrainSpec(task_weights={"parrity": 1}), [6], AUX
        )
    with pytest.raises(TrainflowError, match="train.tbptt: multi-task"):
        check_model_and_training(RecurrentParams(type="gru"), TrainSpec(tbptt=4), [12, 2], AUX)


def test_a_row_without_an_auxiliary_label_is_named():
    schema = TableSchema(
        target="y", features=["a"], classes=["0", "1"], aux_targets={"kind": ["p", "q"]}
    )
    df = pl.DataFrame({"a": [1.0, 2.0], "y": ["0", "1"], "kind": ["p", None]})
    with pytest.raises(DataError, match="aux target 'kind': 1 row"):
        to_arrays(df, schema)
    ok = pl.DataFrame({"a": [1.0, 2.0], "y": ["0", "1"], "kind": ["q", "p"]})
    x, y = to_arrays(ok, schema)
    assert y.tolist() == [[0, 1], [1, 0]]


def test_shared_layers_are_one_tensor_and_stay_equal_through_training():
    params = MLPParams(type="mlp", hidden_layers=3, units=16, share=[["3", "5"]])
    torch.manual_seed(0)
    net = build_model(params, [6], 2)
    assert net[3].weight is net[5].weight and net[3].bias is net[5].bias
    owned = sum(p.numel() for p in net.parameters())
    unshared = sum(
        p.numel()
        for p in build_model(MLPParams(type="mlp", hidden_layers=3, units=16), [6], 2).parameters()
    )
    assert owned == unshared - 16 * 16 - 16  # one layer's weights fewer to learn
    train_split, val = data()
    spec = TrainSpec(lr=0.01, epochs=2, batch_size=32, device="cpu", checkpoint_every=0)
    fit(
        net,
        Split(train_split.x, train_split.y),
        Split(val.x, val.y),
        spec,
        0,
        optimizer_factory(spec),
    )
    assert torch.equal(net[3].weight, net[5].weight)
    state = net.state_dict()  # both names load back into a fresh tied model
    fresh = build_model(params, [6], 2)
    fresh.load_state_dict(state)
    assert fresh[3].weight is fresh[5].weight and torch.equal(fresh[5].weight, net[5].weight)


def test_sharing_names_bad_modules_and_shapes():
    with pytest.raises(TrainflowError, match=r"model.share: no module named \['9'\]"):
        build_model(MLPParams(type="mlp", hidden_layers=2, units=16, share=[["1", "9"]]), [6], 2)
    with pytest.raises(
        TrainflowError,
        match=r"share: 1.weight \(16, 6\) cannot be shared with "
        r"3.weight \(16, 16\)",
    ):
        build_model(MLPParams(type="mlp", hidden_layers=2, units=16, share=[["1", "3"]]), [6], 2)
    with pytest.raises(ValueError, match="at least two modules"):
        MLPParams(type="mlp", share=[["1"]])
