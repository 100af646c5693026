"""Sequence architectures, initialization per layer type, and truncated BPTT."""

import pytest
import torch
from torch import nn

from trainflow.engine.checks import check_model_and_training
from trainflow.engine.model_folder import build_model
from trainflow.engine.update import Update
from trainflow.errors import TrainflowError
from trainflow.spec.model import RecurrentParams, TransformerParams
from trainflow.spec.train import TrainSpec


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_recurrent_models_carry_their_state_across_calls(cell):
    net = build_model(RecurrentParams(type=cell, hidden=8, layers=2), [10, 3], 4).eval()
    x = torch.randn(2, 10, 3)
    whole = net(x)
    _, state = net(x[:, :6], return_state=True)
    assert torch.allclose(net(x[:, 6:], state=state), whole, atol=1e-6)
    assert not torch.allclose(net(x[:, 6:]), whole, atol=1e-3)  # the state matters


def test_transformer_pools_by_cls_or_mean_and_reads_every_token():
    for pooling in ("cls", "mean"):
        net = build_model(
            TransformerParams(
                type="transformer", d_model=16, heads=2, layers=1, pooling=pooling, dropout=0.0
            ),
            [6, 2],
            3,
        ).eval()
        x = torch.randn(4, 6, 2)
        changed = x.clone()
        changed[:, 0] += 1.0  # the first step changes the output (attention sees all steps)
        assert not torch.allclose(net(x), net(changed))
    with pytest.raises(ValueError, match="divisible by heads"):
        TransformerParams(type="transformer", d_model=10, heads=4)


def test_init_per_layer_type():
    params = RecurrentParams(
        type="lstm", hidden=6, init={"recurrent": "orthogonal", "linear": "xavier_uniform"}
    )
    net = build_model(params, [5, 4], 3)
    weight_hh = net.rnn.weight_hh_l0.detach()
    for gate in weight_hh.chunk(4):  # each gate's square block is orthogonal
        assert torch.allclose(gate @ gate.T, torch.eye(6), atol=1e-5)
    assert torch.count_nonzero(net.rnn.bias_ih_l0) == 0
    assert torch.count_nonzero(net.head.bias) == 0
    bound = (6 / (6 + 3)) ** 0.5  # xavier uniform's bound for a 6 -> 3 layer
    assert net.head.weight.abs().max() <= bound
    # Only the declared layer types change: without a recurrent entry, PyTorch's own init stays.
    torch.manual_seed(0)
    plain = build_model(RecurrentParams(type="lstm", hidden=6), [5, 4], 3)
    torch.manual_seed(0)
    linear_only = build_model(
        RecurrentParams(type="lstm", hidden=6, init={"linear": "orthogonal"}), [5, 4], 3
    )
    assert torch.equal(plain.rnn.weight_hh_l0, linear_only.rnn.weight_hh_l0)
    assert not torch.equal(plain.head.weight, linear_only.head.weight)


def grads(net, update, x, y):
    net.zero_grad()
    x = x.clone().requires_grad_(True)
    out = update.forward(net, x)
    nn.functional.cross_entropy(out, y).backward()
    return out.detach(), x.grad, net.rnn.weight_hh_l0.grad.clone()


def test_tbptt_stops_gradients_window_steps_from_the_end():
    torch.manual_seed(0)
    net = build_model(RecurrentParams(type="gru", hidden=8), [20, 2], 3)
    x, y = torch.randn(4, 20, 2), torch.tensor([0, 1, 2, 0])
    full_out, full_x, full_w = grads(net, Update(), x, y)
    out, x_grad, w_grad = grads(net, Update(tbptt=5), x, y)
    assert torch.allclose(out, full_out, atol=1e-6)  # the same prediction...
    assert x_grad[:, :15].abs().sum() == 0  # ...but no gradient reaches steps before the window
    assert x_grad[:, 15:].abs().sum() > 0 and full_x[:, :15].abs().sum() > 0
    assert torch.allclose(x_grad[:, 19], full_x[:, 19], atol=1e-6)  # the last step: exact
    assert not torch.allclose(w_grad, full_w)  # the recurrent weights see a truncated gradient


def test_tbptt_needs_a_recurrent_model_and_a_shorter_window():
    train = TrainSpec(tbptt=8)
    with pytest.raises(TrainflowError, match=r"train.tbptt.*recurrent.*'transformer'"):
        check_model_and_training(TransformerParams(type="transformer"), train, [16, 2])
    with pytest.raises(TrainflowError, match=r"window \(8 steps\) is not shorter.*\(8 steps\)"):
        check_model_and_training(RecurrentParams(type="lstm"), train, [8, 2])
    with pytest.raises(TrainflowError, match="bidirectional"):
        check_model_and_training(RecurrentParams(type="lstm", bidirectional=True), train, [16, 2])
    check_model_and_training(RecurrentParams(type="lstm"), train, [16, 2])  # fine
