"""train.swa and train.ema: the averaged weights differ from the last weights, are the ones
a training ends with (best.pt, the model evaluated and packaged), and resume exactly."""

import pytest
import torch
from pydantic import ValidationError

from tests.interrupt import after_step
from trainflow.engine import checkpoint
from trainflow.engine.data import Split
from trainflow.engine.inference import score
from trainflow.engine.model_folder import build_from_folder
from trainflow.engine.training import train_into
from trainflow.errors import TrainflowError
from trainflow.spec.model import MLPParams
from trainflow.spec.train import TrainSpec

BASE = {"lr": 0.05, "epochs": 6, "batch_size": 16, "device": "cpu", "precision": "fp32"}
BASE |= {"threads": 1, "checkpoint_interval_s": 0}
SWA = TrainSpec.model_validate({**BASE, "swa": {"start_epoch": 3, "lr": 0.02}})
EMA = TrainSpec.model_validate({**BASE, "ema": {"decay": 0.9}})
# batch norm: SWA's statistics must be recomputed for the averaged weights (update_bn)
MODEL = MLPParams(type="mlp", hidden_layers=1, units=16, norm="batch", dropout=0.2)


class Crash(Exception):
    pass


def data() -> dict[str, Split]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(160, 6, generator=generator)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return {"train": Split(x[:120], y[:120]), "val": Split(x[120:], y[120:])}


def train(folder, spec, resume=None):
    resume_dir = folder.parent / f"{folder.name}-work"
    folder.mkdir()
    return train_into(
        folder,
        MODEL,
        spec,
        0,
        data(),
        [6],
        ["a", "b"],
        resume_dir=resume_dir,
        resume=resume,
    )


@pytest.mark.slow
@pytest.mark.parametrize("spec", [SWA, EMA], ids=["swa", "ema"])
def test_the_averaged_weights_differ_from_the_last_and_are_the_ones_evaluated(spec, tmp_path):
    net, result = train(tmp_path / "model", spec)
    last = checkpoint.load(tmp_path / "model" / "last.pt")["model"]
    best = checkpoint.load(tmp_path / "model" / "best.pt")["model"]
    weights = {k: v for k, v in best.items() if v.is_floating_point()}
    assert any(not torch.equal(v, last[k]) for k, v in weights.items())  # not the last weights
    assert all(torch.equal(v, result.best_state[k]) for k, v in best.items())
    assert result.best_epoch == spec.epochs  # the average of the run, not a best epoch
    # what evaluate, the folds and a package score: the model folder's weights, the average
    evaluated = build_from_folder(tmp_path / "model", "test")
    assert all(torch.equal(v, evaluated.state_dict()[k]) for k, v in best.items())
    metrics, probs = score(evaluated, data()["val"], 2)
    again, _ = score(net, data()["val"], 2)
    assert metrics == again
    if spec.swa:  # batch norm re-estimated for the averaged weights, not the last ones
        key = next(k for k in best if k.endswith("running_mean"))
        assert not torch.equal(best[key], last[key])


@pytest.mark.slow
@pytest.mark.parametrize("spec", [SWA, EMA], ids=["swa", "ema"])
def test_a_resume_mid_average_ends_with_the_same_bytes(spec, tmp_path):
    train(tmp_path / "full", spec)

    def kill():
        raise Crash

    work = tmp_path / "killed-work"
    with pytest.raises(Crash), after_step(31, kill):  # 8 steps per epoch: inside epoch 4
        train(tmp_path / "killed", spec.model_copy(update={"checkpoint_every_steps": 1}))
    saved = checkpoint.load(work / "last.pt")
    assert saved["epoch"] == 4 and saved["position"]["batch"] == 7
    assert saved["averaged"]["n_averaged"].item() == (1 if spec.swa else 31)
    resumed_spec = spec.model_copy(update={"checkpoint_every_steps": 1})
    train(tmp_path / "resumed", resumed_spec, resume=saved)
    train(tmp_path / "full-steps", resumed_spec)
    for name in ("best.pt", "metrics.jsonl"):
        assert (tmp_path / "resumed" / name).read_bytes() == (
            tmp_path / "full-steps" / name
        ).read_bytes()
    # and the per-step checkpoints change nothing the run computes
    assert torch.equal(
        checkpoint.load(tmp_path / "full" / "best.pt")["model"]["2.weight"],
        checkpoint.load(tmp_path / "resumed" / "best.pt")["model"]["2.weight"],
    )


def test_swa_starting_after_the_last_epoch_is_refused_by_name():
    with pytest.raises(ValidationError, match=r"swa.start_epoch \(9\) is after the last epoch"):
        TrainSpec.model_validate({**BASE, "swa": {"start_epoch": 9, "lr": 0.01}})
    with pytest.raises(ValidationError, match="swa and ema both average"):
        TrainSpec.model_validate(
            {**BASE, "swa": {"start_epoch": 2, "lr": 0.01}, "ema": {"decay": 0.9}}
        )


@pytest.mark.slow
def test_training_that_stops_before_swa_starts_says_so(tmp_path):
    spec = SWA.model_copy(update={"max_steps": 10})  # epoch 2 of 6: SWA starts at 3
    with pytest.raises(TrainflowError, match=r"stopped at epoch 2, before swa.start_epoch \(3\)"):
        train(tmp_path / "model", spec)
