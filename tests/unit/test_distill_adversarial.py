"""Distillation from a teacher and adversarial training (FGSM, PGD)."""

import json

import pytest
import torch
from torch import nn

from trainflow.engine.adversarial import attack, robust_accuracy
from trainflow.engine.data import Split
from trainflow.engine.distill import Distiller
from trainflow.engine.training import train_into
from trainflow.errors import TrainflowError
from trainflow.spec.model import MLPParams
from trainflow.spec.train import Adversarial, TrainSpec

CLASSES = ["a", "b", "c"]


def blobs(n=600, seed=0, shuffle_labels=False):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centers = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
    x = centers[y] + 0.6 * torch.randn(n, 2, generator=g)
    x = torch.cat([x, torch.randn(n, 4, generator=g)], dim=1)  # 4 noise features
    cut = n * 3 // 4
    train_y = y[:cut][torch.randperm(cut, generator=g)] if shuffle_labels else y[:cut]
    return {"train": Split(x[:cut], train_y), "val": Split(x[cut:], y[cut:])}


def train(folder, spec, model=None, data=None):
    folder.mkdir(parents=True, exist_ok=True)
    spec = TrainSpec.model_validate(
        {"device": "cpu", "batch_size": 32, "lr": 0.01, "checkpoint_every": 0, **spec}
    )
    return train_into(
        folder,
        model or MLPParams(type="mlp", hidden_layers=2, units=32),
        spec,
        0,
        data or blobs(),
        [6],
        CLASSES,
    )


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher")
    net, result = train(folder, {"epochs": 20})
    assert result.history[result.best_epoch - 1]["val_accuracy"] > 0.9
    return folder


def test_distillation_loss_mixes_soft_and_hard_terms():
    torch.manual_seed(0)
    teacher = nn.Linear(4, 3)
    x, hard = torch.randn(8, 4), torch.tensor(1.7)
    same = Distiller(teacher, temperature=3.0, alpha=1.0)(hard, teacher(x), x)
    assert same.abs() < 1e-6  # a student equal to its teacher has nothing to learn from it
    assert Distiller(teacher, 3.0, 0.0)(hard, torch.randn(8, 3), x) == hard
    other = torch.randn(8, 3)
    soft = Distiller(teacher, 3.0, 1.0)(hard, other, x)
    assert torch.isclose(Distiller(teacher, 3.0, 0.25)(hard, other, x), 0.25 * soft + 0.75 * hard)


@pytest.mark.slow
def test_a_student_learns_from_the_teacher_when_the_labels_say_nothing(teacher, tmp_path):
    noisy = blobs(shuffle_labels=True)  # training labels shuffled: no signal in them
    small = MLPParams(type="mlp", hidden_layers=1, units=8)
    _, alone = train(tmp_path / "alone", {"epochs": 15}, small, noisy)
    _, taught = train(
        tmp_path / "taught",
        {"epochs": 15, "distill": {"teacher": str(teacher), "temperature": 2.0, "alpha": 1.0}},
        small,
        noisy,
    )
    best = lambda r: max(row["val_accuracy"] for row in r.history)  # noqa: E731
    assert best(alone) < 0.6 and best(taught) > 0.9


def test_a_teacher_that_does_not_fit_the_student_is_named(teacher, tmp_path):
    info = json.loads((teacher / "model.json").read_text())
    other = tmp_path / "four-classes"
    other.mkdir()
    (other / "model.json").write_text(json.dumps({**info, "classes": ["a", "b", "c", "d"]}))
    with pytest.raises(
        TrainflowError,
        match=r"train.distill.teacher: the teacher predicts 4 "
        r"classes .* the student 3",
    ):
        train(tmp_path / "run", {"epochs": 1, "distill": {"teacher": str(other)}})
    with pytest.raises(TrainflowError, match="is not a trainflow model folder"):
        train(tmp_path / "run2", {"epochs": 1, "distill": {"teacher": str(tmp_path)}})


def test_fgsm_and_pgd_stay_in_the_ball_and_raise_the_loss():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    clean = nn.functional.cross_entropy(model(x), y)
    for method in ("fgsm", "pgd"):
        adv = attack(model, x, y, method, 0.1, steps=5 if method == "pgd" else None)
        assert (adv - x).abs().max() <= 0.1 + 1e-6
        assert nn.functional.cross_entropy(model(adv), y) > clean
        assert not adv.requires_grad
    with pytest.raises(ValueError, match="fgsm takes one step"):
        Adversarial(method="fgsm", epsilon=0.1, steps=3)


def weak_features(n=900, weak=30, seed=0):
    """Two strongly separated features and 30 weak ones (0.3 signal, unit noise): a plain
    model leans on the weak ones, which an L-inf attack of 0.3 flips all at once."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centers = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
    strong = centers[y] + 0.6 * torch.randn(n, 2, generator=g)
    signs = torch.randn(3, weak, generator=g).sign()
    x = torch.cat([strong, 0.3 * signs[y] + torch.randn(n, weak, generator=g)], dim=1)
    cut = n * 3 // 4
    return {"train": Split(x[:cut], y[:cut]), "val": Split(x[cut:], y[cut:])}


@pytest.mark.slow
def test_adversarial_training_raises_robust_accuracy(tmp_path):
    data = weak_features()
    spec = {"device": "cpu", "batch_size": 32, "lr": 0.01, "checkpoint_every": 0, "epochs": 12}
    nets = {}
    for name, extra in (
        ("plain", {}),
        ("robust", {"adversarial": {"method": "pgd", "epsilon": 0.3, "steps": 5, "ratio": 0.5}}),
    ):
        (tmp_path / name).mkdir()
        nets[name], _ = train_into(
            tmp_path / name,
            MLPParams(type="mlp", hidden_layers=2, units=32),
            TrainSpec.model_validate({**spec, **extra}),
            0,
            data,
            [32],
            CLASSES,
        )
    x, y = data["val"].x, data["val"].y
    clean = {k: (net(x).argmax(1) == y).float().mean().item() for k, net in nets.items()}
    robust = {k: robust_accuracy(net, x, y, "pgd", 0.3, 5) for k, net in nets.items()}
    assert clean["robust"] >= 0.97 and clean["plain"] >= 0.97  # both fit the clean data
    assert robust["robust"] > robust["plain"] + 0.08  # only one withstands the attack
    info = json.loads((tmp_path / "robust" / "model.json").read_text())
    assert info["adversarial"]["epsilon"] == 0.3  # evaluate reads it for robust accuracy
