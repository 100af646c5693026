"""Exact resume from last.pt: the same final weights as an uninterrupted run."""

import pytest
import torch

from tests.interrupt import after_step
from trainflow.engine import checkpoint
from trainflow.engine.data import Split
from trainflow.engine.loop import fit
from trainflow.engine.training import optimizer_factory
from trainflow.models.mlp import mlp
from trainflow.spec.train import TrainSpec

SPEC = TrainSpec(
    lr=0.01,
    epochs=6,
    batch_size=16,
    device="cpu",
    checkpoint_every=1,
    checkpoint_interval_s=0,
    schedule={"type": "cosine", "warmup": {"steps": 10}},
    augment={"gaussian_noise": 0.1},
)


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
    assert all(
        torch.equal(a, b) for a, b in zip(full.state_dict().values(), resumed.state_dict().values())
    )
    assert len(result.history) == 6
    assert (tmp_path / "full" / "metrics.jsonl").read_bytes() == (
        tmp_path / "resumed" / "metrics.jsonl"
    ).read_bytes()


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
    assert all(
        torch.equal(a, b) for a, b in zip(full.state_dict().values(), resumed.state_dict().values())
    )
    assert not (tmp_path / "resumed" / "last.prev.pt").exists()  # a finished run keeps one


def test_a_last_checkpoint_weights_only_refuses_falls_back_to_the_previous_one(tmp_path, caplog):
    """A matching sha256 is not enough: the checkpoint must also load as a training state."""
    import io

    from trainflow.artifacts import sha256_file

    full, _ = run(tmp_path / "full")
    crashed_checkpoint(tmp_path)
    last = tmp_path / "crashed" / "last.pt"
    buffer = io.BytesIO()
    torch.save({"model": {}, "hook": print}, buffer)  # an object weights_only refuses
    last.write_bytes(buffer.getvalue())
    (tmp_path / "crashed" / "last.pt.sha256").write_text(sha256_file(last))
    with caplog.at_level("WARNING", logger="trainflow"):
        resumed, _ = run(tmp_path / "resumed", resume=last)
    assert "weights_only loading refuses" in caplog.text
    assert "resuming from the previous one" in caplog.text
    assert same_weights(full, resumed)


def test_a_file_that_is_not_a_trainflow_checkpoint_is_named(tmp_path):
    from trainflow.errors import ArtifactError

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ArtifactError, match="cannot load checkpoint .*junk.pt"):
        checkpoint.load(junk)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ArtifactError, match="other.pt is not a trainflow checkpoint"):
        checkpoint.load(tmp_path / "other.pt")


STEPPED = TrainSpec.model_validate(
    {**SPEC.model_dump(), "checkpoint_every_steps": 1, "keep_last": 3}
)
MIXED = TrainSpec.model_validate(
    {**STEPPED.model_dump(), "accumulate": 3, "augment": {"gaussian_noise": 0.1, "mixup": 0.4}}
)


def run_spec(spec, out, **kwargs):
    train, val = data()
    net = model()
    out.mkdir()
    result = fit(net, train, val, spec, 0, optimizer_factory(spec), out, **kwargs)
    return net, result


def killed_at(spec, out, step):
    """Run until optimizer step `step`, then stop as abruptly as an exception can."""

    def kill():
        raise Crash

    with pytest.raises(Crash), after_step(step, kill):
        run_spec(spec, out)
    return out / "last.pt"


def same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# 10 batches per epoch: step 7 and 23 are mid-epoch, 10 the last step of an epoch (before its
# validation); with accumulate 3 an epoch has 4 steps, the last over one batch.
@pytest.mark.slow
@pytest.mark.parametrize(
    "spec,step",
    [(STEPPED, 7), (STEPPED, 10), (STEPPED, 23), (MIXED, 5), (MIXED, 8)],
    ids=["mid-epoch", "epoch-end", "later-epoch", "accumulate+mixup", "after-short-group"],
)
def test_a_run_killed_at_any_step_resumes_bit_identical(tmp_path, spec, step):
    full, full_result = run_spec(spec, tmp_path / "full")
    last = killed_at(spec, tmp_path / "killed", step)
    saved = checkpoint.load(last)
    assert saved["steps"] == step and saved["position"] is not None
    resumed, result = run_spec(spec, tmp_path / "resumed", resume=last)
    assert same_weights(full, resumed)
    assert result.history == full_result.history  # the losses of the resumed epoch too


def test_keep_last_k_checkpoints_while_training(tmp_path):
    last = killed_at(STEPPED, tmp_path / "killed", 7)
    kept = sorted(p.name for p in last.parent.glob("last*.pt"))
    assert kept == ["last.prev.pt", "last.prev2.pt", "last.pt"]
    assert [checkpoint.load(p)["steps"] for p in checkpoint.rotation(last)] == [7, 6, 5]


KILLER = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.interrupt import after_step
from tests.unit.test_resume import STEPPED, run_spec

def kill():
    os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally, a write may be torn

with after_step(17, kill):
    run_spec(STEPPED, Path({out!r}))
"""


@pytest.mark.slow
def test_a_process_killed_with_sigkill_resumes_bit_identical(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[2])
    script = KILLER.format(root=root, out=str(tmp_path / "killed"))
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, timeout=300
    )
    assert done.returncode == -9, done.stderr.decode()[-2000:]
    full, full_result = run_spec(STEPPED, tmp_path / "full")
    saved = checkpoint.load_latest_good(tmp_path / "killed" / "last.pt")
    assert 14 <= saved["steps"] <= 17  # the newest write may not have landed
    resumed, result = run_spec(
        STEPPED, tmp_path / "resumed", resume=tmp_path / "killed" / "last.pt"
    )
    assert same_weights(full, resumed) and result.history == full_result.history


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    from trainflow.errors import TrainflowError

    net_holder = {}

    def diverge():  # the weights blow up after step 12 was checkpointed
        with torch.no_grad():
            for p in net_holder["net"].parameters():
                p.fill_(float("nan"))

    train, val = data()
    net_holder["net"] = net = model()
    (tmp_path / "run").mkdir()
    with (
        pytest.raises(TrainflowError, match="training loss became non-finite"),
        after_step(12, diverge),
    ):
        fit(net, train, val, STEPPED, 0, optimizer_factory(STEPPED), tmp_path / "run")
    saved = checkpoint.load_latest_good(tmp_path / "run" / "last.pt")
    assert saved["steps"] == 12
    assert all(torch.isfinite(v).all() for v in saved["model"].values())


def test_a_checkpoint_of_another_train_spec_is_refused(tmp_path):
    from trainflow.errors import TrainflowError

    last = killed_at(STEPPED, tmp_path / "killed", 7)
    other = TrainSpec.model_validate({**STEPPED.model_dump(), "lr": 0.02})
    with pytest.raises(TrainflowError, match="written by a different train spec"):
        run_spec(other, tmp_path / "resumed", resume=last)
