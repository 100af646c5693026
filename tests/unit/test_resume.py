"""Exact resume from last.pt: the same final weights as an uninterrupted run."""

import pytest
import torch

from trainflow.engine import checkpoint
from trainflow.engine.bundle import optimizer_factory
from trainflow.engine.loop import Split, fit
from trainflow.models.mlp import mlp
from trainflow.spec.train import TrainSpec

SPEC = TrainSpec(lr=0.01, epochs=6, batch_size=16, device="cpu", checkpoint_every=1,
                 checkpoint_interval_s=0,
                 schedule={"type": "cosine", "warmup": {"steps": 10}},
                 augment={"gaussian_noise": 0.1})


class Crash(Exception):
    pass


def data():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(160, 6, generator=generator)
    return Split(x, (x[:, 0] + x[:, 1] > 0).long()), Split(x[:40], (x[:40, 0] > 0).long())


def model():
    torch.manual_seed(0)
    return mlp([6], 2, [16, 16], dropout=0.3)  # dropout draws from torch's global RNG


def run(out, **kwargs):
    train, val = data()
    net = model()
    out.mkdir()
    result = fit(net, train, val, SPEC, 0, optimizer_factory(SPEC), out, **kwargs)
    return net, result


def crashed_checkpoint(tmp_path):
    def crash(row):
        if row["epoch"] == 3:
            raise Crash
    with pytest.raises(Crash):
        run(tmp_path / "crashed", on_epoch=crash)
    saved = checkpoint.load(tmp_path / "crashed" / "last.pt")
    assert saved["epoch"] == 2
    return saved


def test_a_run_killed_after_an_epoch_resumes_to_the_uninterrupted_weights(tmp_path):
    full, _ = run(tmp_path / "full")
    crashed_checkpoint(tmp_path)
    resumed, result = run(tmp_path / "resumed", resume=tmp_path / "crashed" / "last.pt")
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(),
                                                 resumed.state_dict().values()))
    assert len(result.history) == 6
    assert ((tmp_path / "full" / "metrics.jsonl").read_bytes()
            == (tmp_path / "resumed" / "metrics.jsonl").read_bytes())


def _fresh(piece: str, saved: dict) -> None:
    """Replace one piece of saved state with what a fresh start would have."""
    if piece == "optimizer":
        net = model()
        saved["optimizer"] = optimizer_factory(SPEC)(net).state_dict()
    elif piece == "scheduler":
        saved["scheduler"] = {}
        saved["steps"] = 0
    elif piece == "rng.batches":
        saved["rng"]["batches"] = torch.Generator().manual_seed(1).get_state()
    elif piece == "rng.torch":
        saved["rng"]["torch"] = torch.Generator().manual_seed(1).get_state()


@pytest.mark.parametrize("piece", ["optimizer", "scheduler", "rng.batches", "rng.torch"])
def test_each_piece_of_saved_state_is_needed(tmp_path, piece):
    full, _ = run(tmp_path / "full")
    saved = crashed_checkpoint(tmp_path)
    _fresh(piece, saved)
    checkpoint.save_rotating(tmp_path / "partial.pt", saved)
    resumed, _ = run(tmp_path / "resumed", resume=tmp_path / "partial.pt")
    assert not all(torch.equal(a, b) for a, b in zip(full.state_dict().values(),
                                                     resumed.state_dict().values()))


def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    full, _ = run(tmp_path / "full")
    crashed_checkpoint(tmp_path)
    last = tmp_path / "crashed" / "last.pt"
    assert (tmp_path / "crashed" / "last.prev.pt").is_file()
    last.write_bytes(last.read_bytes()[:-50])  # torn write
    with caplog.at_level("WARNING", logger="trainflow"):
        resumed, _ = run(tmp_path / "resumed", resume=last)
    assert "damaged (sha256 differs); resuming from the previous one" in caplog.text
    # resuming from the epoch before is just as exact
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(),
                                                 resumed.state_dict().values()))
    assert not (tmp_path / "resumed" / "last.prev.pt").exists()  # a finished run keeps one


def test_a_file_that_is_not_a_trainflow_checkpoint_is_named(tmp_path):
    from trainflow.errors import ArtifactError

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ArtifactError, match="cannot load checkpoint .*junk.pt"):
        checkpoint.load(junk)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ArtifactError, match="other.pt is not a trainflow checkpoint"):
        checkpoint.load(tmp_path / "other.pt")
