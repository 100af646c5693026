"""Transfer learning: warm start, a new head, freezing and gradual unfreezing."""

import pytest
import torch

from trainflow.caching import canonical
from trainflow.engine.data import Split
from trainflow.engine.model_folder import build_model
from trainflow.engine.training import train_into
from trainflow.errors import TrainflowError
from trainflow.spec.model import CNNParams, MLPParams
from trainflow.spec.train import TrainSpec

MLP = MLPParams(type="mlp", hidden_layers=2, units=16)


def data(classes=3, n=240, features=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = (x[:, :classes].argmax(1)).long()
    cut = n * 3 // 4
    return {"train": Split(x[:cut], y[:cut]), "val": Split(x[cut:], y[cut:])}


def train(folder, spec, classes=3, model=MLP, on_epoch=None, shape=(6,), splits=None):
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"c{i}" for i in range(classes)]
    return train_into(
        folder,
        model,
        TrainSpec.model_validate(
            {"device": "cpu", "batch_size": 32, "checkpoint_every": 0, **spec}
        ),
        0,
        splits or data(classes),
        list(shape),
        names,
        on_epoch,
    )


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pretrained")
    net, _ = train(folder, {"epochs": 15, "lr": 0.01})
    return folder, net


def test_warm_start_begins_where_the_pretrained_model_ended(pretrained, tmp_path):
    folder, base = pretrained
    rows = {}
    for start in ("cold", "warm"):
        extra = {"pretrained": {"path": str(folder)}} if start == "warm" else {}
        seen = []
        train(tmp_path / start, {"epochs": 1, "lr": 1e-5, **extra}, on_epoch=seen.append)
        rows[start] = seen[0]
    assert rows["warm"]["val_loss"] < rows["cold"]["val_loss"] * 0.6
    # a plain state dict file works the same as a trainflow model folder
    torch.save(base.state_dict(), tmp_path / "plain.pt")
    net, _ = train(
        tmp_path / "plain",
        {
            "epochs": 1,
            "lr": 1e-9,
            "optimizer": {"type": "sgd", "momentum": 0.0},
            "pretrained": {"path": str(tmp_path / "plain.pt")},
        },
    )
    assert all(
        torch.allclose(a, b, atol=1e-6)
        for a, b in zip(net.state_dict().values(), base.state_dict().values())
    )


def test_a_new_head_for_a_new_number_of_classes(pretrained, tmp_path):
    folder, base = pretrained
    spec = {
        "epochs": 1,
        "lr": 1e-9,
        "optimizer": {"type": "sgd", "momentum": 0.0},
        "pretrained": {"path": str(folder)},
    }
    with pytest.raises(
        TrainflowError,
        match=r"shapes differ.*5\.weight \(3, 16\) vs \(2, 16\)"
        r".*replace_head: true",
    ):
        train(tmp_path / "a", spec, classes=2, splits=data(2))
    spec["pretrained"]["replace_head"] = True
    net, _ = train(tmp_path / "b", spec, classes=2, splits=data(2))
    assert torch.allclose(net[1].weight, base[1].weight, atol=1e-6)  # the body is pretrained
    assert net[-1].weight.shape == (2, 16)


def test_mismatched_keys_are_listed(tmp_path):
    other = build_model(MLPParams(type="mlp", hidden_layers=1, units=16, norm="layer"), [6], 3)
    torch.save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(TrainflowError) as error:
        train(tmp_path / "run", {"epochs": 1, "pretrained": {"path": str(tmp_path / "other.pt")}})
    message = str(error.value)
    assert "train.pretrained: the pretrained weights do not fit the model" in message
    # one hidden layer + a layer norm: Linear 1, LayerNorm 2, Linear 4 against Linear 1, 3, 5
    assert "missing keys (4): 3.bias, 3.weight, 5.bias, 5.weight" in message
    assert "unexpected keys (4): 2.bias, 2.weight, 4.bias, 4.weight" in message
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(TrainflowError, match="train.pretrained.path: cannot load .*junk.pt"):
        train(tmp_path / "junk", {"epochs": 1, "pretrained": {"path": str(tmp_path / "junk.pt")}})


def test_frozen_layers_do_not_train_until_unfrozen(tmp_path):
    snapshots = []
    holder = {}

    def snap(row):
        snapshots.append({k: v.clone() for k, v in holder["net"].state_dict().items()})

    import trainflow.engine.training as training

    real = training.build_model

    def keep(*args):  # hold on to the network being trained, to look at it per epoch
        holder["net"] = real(*args)
        return holder["net"]

    training.build_model = keep
    try:
        train(
            tmp_path / "run",
            {"epochs": 4, "lr": 0.01, "freeze": ["1.*", "3.*"], "unfreeze": {3: ["3.*"]}},
            on_epoch=snap,
        )
    finally:
        training.build_model = real
    first, second, third = snapshots[0], snapshots[1], snapshots[2]
    assert torch.equal(first["1.weight"], third["1.weight"])  # frozen throughout
    assert torch.equal(first["3.weight"], second["3.weight"])  # frozen in epochs 1-2 ...
    assert not torch.equal(second["3.weight"], third["3.weight"])  # ... trains from epoch 3
    assert not torch.equal(first["5.weight"], second["5.weight"])  # the head always trains


def test_frozen_batch_norm_keeps_its_statistics(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 8, 8, generator=g) + 3.0  # far from BatchNorm's initial mean 0
    y = (x.mean((1, 2, 3)) > 3.0).long()
    splits = {"train": Split(x[:48], y[:48]), "val": Split(x[48:], y[48:])}
    model = CNNParams(type="cnn", channels=[4], hidden=8)
    net, _ = train(
        tmp_path / "run",
        {"epochs": 2, "freeze": ["0.*", "1.*"]},
        classes=2,
        model=model,
        shape=(1, 8, 8),
        splits=splits,
    )
    assert torch.equal(net[1].running_mean, torch.zeros(4))


def test_freeze_globs_must_match_and_warm_needs_weights(tmp_path):
    with pytest.raises(
        TrainflowError,
        match=r"train.freeze: \['encoder.\*'\] match no "
        r"parameter; the model's parameters are \['1.weight'",
    ):
        train(tmp_path / "a", {"epochs": 1, "freeze": ["encoder.*"]})
    with pytest.raises(TrainflowError, match=r"train.unfreeze: \['5.\*'\] are not in"):
        train(tmp_path / "b", {"epochs": 1, "freeze": ["1.*"], "unfreeze": {2: ["5.*"]}})
    # `start` repeated what `pretrained` says and was removed: a spec that sets it is told so
    for start in ("warm", "cold"):
        with pytest.raises(
            ValueError,
            match=r"train.start .* was removed: `pretrained` alone "
            r"says how training starts. Delete `start`",
        ):
            TrainSpec(start=start, pretrained={"path": "x.pt"})
    assert TrainSpec(pretrained={"path": "x.pt"}).pretrained.path == "x.pt"


def test_the_pretrained_file_is_part_of_the_cache_key(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"a": torch.zeros(2)}, path)
    spec = TrainSpec(pretrained={"path": str(path)})
    before = canonical(spec)  # the spec's part of the train task's cache key
    torch.save({"a": torch.ones(2)}, path)
    assert canonical(spec) != before
