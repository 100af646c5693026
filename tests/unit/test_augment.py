"""Augmentation: albumentations by name, seeded per epoch and worker; tabular noise."""

import pytest
import torch

from trainflow.engine.augment import Augmenter, augmentation_seed, preview_png
from trainflow.engine.data import Split
from trainflow.engine.loop import fit
from trainflow.engine.training import optimizer_factory
from trainflow.spec.augment import AugmentSpec, TransformSpec
from trainflow.spec.train import TrainSpec

ERASING = AugmentSpec(
    transforms=[
        TransformSpec(name="Erasing", params={"p": 1.0}),
        TransformSpec(name="HorizontalFlip", params={"p": 0.5}),
    ]
)
IMAGES = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def test_same_seed_same_augmented_samples():
    one = Augmenter(ERASING, 5, True).for_epoch(3)(IMAGES)
    two = Augmenter(ERASING, 5, True).for_epoch(3)(IMAGES)
    assert torch.equal(one, two) and not torch.equal(one, IMAGES)


def test_epochs_and_workers_get_different_streams():
    augmenter = Augmenter(ERASING, 5, True)
    first, second = augmenter.for_epoch(1)(IMAGES), augmenter.for_epoch(2)(IMAGES)
    assert not torch.equal(first, second)
    worker0 = augmenter.for_epoch(1, worker=0)(IMAGES)
    worker1 = augmenter.for_epoch(1, worker=1)(IMAGES)
    assert not torch.equal(worker0, worker1)
    seeds = {augmentation_seed(5, e, w) for e in range(50) for w in range(8)}
    assert len(seeds) == 400


def test_random_erasing_blanks_a_patch():
    spec = AugmentSpec(
        transforms=[TransformSpec(name="Erasing", params={"p": 1.0, "scale": [0.2, 0.3]})]
    )
    ones = torch.ones(4, 1, 8, 8)
    out = Augmenter(spec, 0, True).for_epoch(0)(ones)
    zeros = (out == 0).flatten(1).sum(1)
    assert ((zeros >= 0.15 * 64) & (zeros <= 0.35 * 64)).all()


def test_tabular_gaussian_noise_and_image_only_transforms():
    noisy = Augmenter(AugmentSpec(gaussian_noise=0.1), 0, False).for_epoch(0)(torch.zeros(500, 4))
    assert 0.08 < noisy.std().item() < 0.12
    with pytest.raises(Exception, match="apply to image inputs"):
        Augmenter(ERASING, 0, False)


@pytest.mark.slow
def test_training_with_augmentation_differs_and_preview_is_a_png():
    y = torch.arange(16) % 2
    data = Split(IMAGES, y)
    plain = TrainSpec(epochs=2, lr=0.01)
    augmented = plain.model_copy(update={"augment": ERASING})
    from trainflow.models.cnn import cnn

    losses = []
    for spec in (plain, augmented):
        result = fit(cnn([1, 8, 8], 2, [4]), data, data, spec, 0, optimizer_factory(spec))
        losses.append(result.history[-1]["train_loss"])
    assert losses[0] != losses[1]
    png = preview_png(Augmenter(ERASING, 0, True), IMAGES)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_mixup_blends_pairs_reproducibly_and_changes_training():
    spec = AugmentSpec(mixup=0.4)
    augmenter = Augmenter(spec, 3, True)
    x, y = IMAGES, torch.arange(16) % 2
    mixed, ya, yb, lam = augmenter.mixer(1)(x, y)
    again = Augmenter(spec, 3, True).mixer(1)(x, y)
    assert torch.equal(mixed, again[0]) and lam == again[3] and 0 <= lam <= 1
    assert torch.equal(ya, y) and len(yb) == 16
    assert not torch.equal(Augmenter(spec, 3, True).mixer(2)(x, y)[0], mixed)
    assert Augmenter(AugmentSpec(), 3, True).mixer(1) is None
    data = Split(IMAGES, y)
    from trainflow.models.cnn import cnn

    plain = TrainSpec(epochs=1, lr=0.01)
    losses = [
        fit(cnn([1, 8, 8], 2, [4]), data, data, s, 0, optimizer_factory(s)).history[0]["train_loss"]
        for s in (plain, plain.model_copy(update={"augment": spec}))
    ]
    assert losses[0] != losses[1]
