"""Every piece of the training state is needed for an exact resume: replacing any one of
them with what a fresh start has changes what the resumed run ends with. The pieces are not
listed here: they are walked from TrainingState.PIECES (and the fields of the pieces made of
fields), so a piece added to the state is tested the day it is added."""

import json

import pytest
import torch

from tests.interrupt import after_step
from trainflow.engine import checkpoint
from trainflow.engine.data import Split
from trainflow.engine.loop import fit
from trainflow.engine.setup import setup
from trainflow.engine.state import Plain, Rng, TrainingState
from trainflow.engine.training import optimizer_factory
from trainflow.models.mlp import mlp
from trainflow.spec.train import TrainSpec

# Every knob that keeps state on: a warmup ramp, a plateau schedule, gradient norms (clipping),
# per-step rows, per-layer gradient norms, early stopping, dropout and augmentation.
KNOBS = {
    "lr": 0.01,
    "epochs": 8,
    "batch_size": 16,
    "device": "cpu",
    "checkpoint_every": 1,
    "checkpoint_interval_s": 0,
    "grad_clip": {"max_norm": 1.0},
    "log": {"every_steps": 3},
    "debug": {"layer_norms": True},
    "early_stopping": {"patience": 3},
    "augment": {"gaussian_noise": 0.1},
}
MID_EPOCH = TrainSpec.model_validate(
    {
        **KNOBS,
        "checkpoint_every_steps": 1,
        "schedule": {"type": "plateau", "patience": 0, "factor": 0.5, "warmup": {"steps": 10}},
    }
)
EPOCH_END = TrainSpec.model_validate(
    {**KNOBS, "schedule": {"type": "cosine", "warmup": {"steps": 10}}}
)
# Where CUDA is, the same with the fp16 grad scaler and CUDA's generators, which a run on CPU
# holds nothing of.
ON_CUDA = TrainSpec.model_validate(
    {**MID_EPOCH.model_dump(), "device": "cuda", "precision": "fp16"}
)
CUDA_ONLY = {"scaler", "rng.cuda"}
# Stochastic weight averaging from epoch 2: the averaged model and SWALR are pieces too.
SWA_MID_EPOCH = TrainSpec.model_validate(
    {**MID_EPOCH.model_dump(), "swa": {"start_epoch": 2, "lr": 0.005, "anneal_epochs": 3}}
)


class Crash(Exception):
    pass


def data():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(160, 6, generator=generator)
    y = (x[:, 0] + x[:, 1] > 0).long()
    # validation labels are the opposite of what training teaches: its loss rises after the
    # first epoch, so the best epoch lies before the interruption and early stopping ends
    # the run at a known epoch (every piece of its bookkeeping matters)
    return Split(x, y), Split(x[:40], 1 - y[:40])


def model():
    torch.manual_seed(0)
    return mlp([6], 2, [16, 16], dropout=0.3)  # dropout draws from torch's global RNG


def train(spec, out, **kwargs):
    out.mkdir()
    net = model()
    result = fit(net, *data(), spec, 0, optimizer_factory(spec), out, **kwargs)
    return observed(net, result, out)


def observed(net, result, out) -> dict:
    """What a user gets from a run: weights, history, best epoch, whether it stopped early,
    metrics.jsonl, best.pt, and the debug rows of the epochs it trained."""
    debug = [json.loads(line) for line in (out / "debug.jsonl").read_text().splitlines()]
    return {
        "weights": {k: v.clone() for k, v in net.state_dict().items()},
        "history": result.history,
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "metrics": (out / "metrics.jsonl").read_bytes(),
        "best": checkpoint.load(out / "best.pt"),
        "debug": {r["epoch"]: r for r in debug},
    }


def same(full: dict, resumed: dict) -> bool:
    def equal(a, b):
        if isinstance(a, torch.Tensor):
            return torch.equal(a, b)
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
        return a == b

    debug = {e: full["debug"].get(e) for e in resumed["debug"]}  # epochs the resume trained
    return all(equal(full[k], resumed[k]) for k in full if k != "debug") and equal(
        debug, resumed["debug"]
    )


SPECS = {
    "mid-epoch": MID_EPOCH,
    "epoch-end": EPOCH_END,
    "swa-mid-epoch": SWA_MID_EPOCH,
    **({"cuda-fp16-mid-epoch": ON_CUDA} if torch.cuda.is_available() else {}),
}
CASES = list(SPECS)
# Pieces a case's checkpoint holds but its remaining epochs never read, reviewed: killed in
# an SWA epoch, the run continues on SWALR, so the schedule's and the plateau's states are
# not stepped again, and it ends with the averaged weights, not the best epoch's (the other
# cases drop them).
IDLE = {"swa-mid-epoch": {"scheduler", "plateau", "run.best_epoch", "run.best_state"}}


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """Per case, made once: (spec, the uninterrupted run, the checkpoint an interrupted run
    left, a folder) for a run killed inside its third epoch, or as its third epoch ended
    (last.pt of epoch 2)."""
    made = {}

    def make(case):
        if case not in made:
            made[case] = interrupt(case, tmp_path_factory.mktemp(case))
        return made[case]

    return make


def interrupt(case, root):
    spec = SPECS[case]
    full = train(spec, root / "full")
    # what the data promises (with SWA, the weights are the average up to the last epoch)
    last = full["history"][-1]["epoch"]
    assert full["best_epoch"] == (last if spec.swa else 1) and full["stopped_early"]

    def kill():
        raise Crash

    def crash(row):
        if row["epoch"] == 3:
            raise Crash

    with pytest.raises(Crash):
        if case != "epoch-end":
            with after_step(25, kill):  # 10 steps per epoch
                train(spec, root / "killed")
        else:
            train(spec, root / "killed", on_epoch=crash)
    return spec, full, checkpoint.load(root / "killed" / "last.pt"), root


def fresh_state(spec) -> TrainingState:
    return setup(model(), *data(), spec, 0, optimizer_factory(spec))[1]


def pieces() -> list[str]:
    """Each piece of the state, and each field of a piece made of fields (position, run
    record, RNG states)."""
    names = []
    state = fresh_state(MID_EPOCH)
    for name in TrainingState.PIECES:
        names.append(name)
        piece = getattr(state, name)
        if isinstance(piece, Plain):
            names += [f"{name}.{key}" for key in vars(piece)]
        elif isinstance(piece, Rng):
            names += [f"{name}.{key}" for key in piece.state_dict()]
    return names


def held(saved: dict, piece: str):
    name, _, key = piece.partition(".")
    value = saved[name]
    if key:
        value = value[key] if value else None
    if isinstance(value, dict) and "sums" in value:  # per-layer norms: their sums
        value = value["sums"]
    return value if not isinstance(value, (list, dict)) or value else None


def drop(saved: dict, piece: str, spec) -> dict:
    """`saved` with `piece` as a fresh start has it."""
    fresh = fresh_state(spec)
    name, _, key = piece.partition(".")
    if not key:
        return {**saved, name: fresh.state_dict()[name]}
    part = getattr(fresh, name)
    value = part.state_dict()[key] if isinstance(part, Rng) else vars(part)[key]
    if piece == "position.order_rng":  # fresh: none yet; a fresh start draws its first
        value = torch.Generator().manual_seed(0).get_state()  # epoch's from the seed's
    return {**saved, name: {**saved[name], key: value}}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_an_intact_checkpoint_resumes_to_the_uninterrupted_run(interrupted, case):
    spec, full, saved, root = interrupted(case)
    out = root / "intact"
    checkpoint.save_rotating(out.with_suffix(".pt"), saved)
    assert same(full, train(spec, out, resume=out.with_suffix(".pt")))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("piece", pieces())
def test_each_piece_of_the_state_is_needed(interrupted, case, piece, tmp_path):
    spec, full, saved, _ = interrupted(case)
    if held(saved, piece) is None:
        pytest.skip(f"this checkpoint holds no {piece} (test_every_piece_is_dropped_somewhere)")
    if piece in IDLE.get(case, ()):
        pytest.skip(f"{case} never reads {piece} again (IDLE)")
    checkpoint.save_rotating(tmp_path / "partial.pt", drop(saved, piece, spec))
    assert not same(full, train(spec, tmp_path / "resumed", resume=tmp_path / "partial.pt"))


def test_every_piece_is_dropped_somewhere(interrupted):
    """Each piece is held (and so dropped) by one of the checkpoints above; on a machine
    without CUDA, all but the reviewed CUDA_ONLY ones."""
    held_somewhere = {
        piece
        for case in CASES
        for piece in pieces()
        if held(interrupted(case)[2], piece) is not None
    }
    expected = set(pieces()) - (set() if torch.cuda.is_available() else CUDA_ONLY)
    assert expected <= held_somewhere, sorted(expected - held_somewhere)
