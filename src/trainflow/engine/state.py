"""The one training state: everything a checkpoint holds and a resume restores, behind one
`state_dict()` / `load_state_dict()` pair (the shape of Lightning Fabric's `state`)."""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel

from trainflow.engine import checkpoint
from trainflow.engine.ddp import World
from trainflow.engine.tracking import GradientNorms
from trainflow.errors import TrainflowError
from trainflow.spec.train import TrainSpec

log = logging.getLogger("trainflow")

# Training draws only from torch's generators (dropout and friends from the global one, batch
# order from its own, augmentation and mixup from generators seeded per epoch). Python's and
# NumPy's global generators are seeded at the start (for any library that reads them) but not
# saved: other threads of the process draw from Python's (Prefect's event loop jitters its
# intervals with `random.uniform`, websockets pings with `random.getrandbits`), so saving it
# would make two identical runs write different last.pt bytes while restoring it would change
# nothing training computes. tests/faults/test_reproducible.py checks that training draws from
# neither.


class Rng:
    """torch's CPU state, the generator that orders the training batches and, for a training
    on CUDA, CUDA's states."""

    def __init__(self, batches: torch.Generator, cuda: bool = False):
        self.batches, self.cuda = batches, cuda

    def state_dict(self) -> dict:
        return {
            "torch": torch.get_rng_state(),
            "batches": self.batches.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if self.cuda else [],
        }

    def load_state_dict(self, state: dict) -> None:
        """(a last.pt of an older version may hold Python's and NumPy's states too: training
        never read them, so they are left alone)"""
        torch.set_rng_state(state["torch"])
        self.batches.set_state(state["batches"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class Plain:
    """A dataclass piece of state saved as a dict of its fields."""

    def state_dict(self) -> dict | None:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        for name in vars(self):
            setattr(self, name, state[name])


@dataclass
class Position(Plain):
    """How far the running epoch has got: batches consumed, the running loss sum and sample
    count, the generator state that drew its batch order, and its gradient norms so far.
    Between epochs (batch 0) it saves as None: a resume starts the next epoch."""

    batch: int = 0
    loss_sum: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    seen: int = 0
    order_rng: torch.Tensor | None = None
    grad_norms: list[float] = field(default_factory=list)

    def mean_loss(self) -> float:
        """The epoch's mean training loss so far; a non-finite one stops training (before
        any checkpoint of it is written)."""
        mean = self.loss_sum.item() / max(self.seen, 1)
        if not math.isfinite(mean):
            raise TrainflowError(
                f"training loss became non-finite ({mean}): lower train.lr, "
                "add gradient clipping, or check the data for extreme values"
            )
        return mean

    def state_dict(self) -> dict | None:
        if not self.batch:
            return None
        return {**vars(self), "loss_sum": self.loss_sum.detach().cpu()}


@dataclass
class Record(Plain):
    """The early-stopping bookkeeping and the rows logged so far (the tracker's cursor:
    a resumed run's metrics.jsonl starts with them)."""

    best: float = math.inf  # the best score so far, "lower is better"
    waited: int = 0
    best_epoch: int = 0
    history: list[dict] = field(default_factory=list)  # the epoch rows
    best_state: dict | None = None
    step_rows: list[dict] = field(default_factory=list)

    def observe(self, score: float, epoch: int, model: nn.Module, min_delta: float) -> None:
        if score < self.best - min_delta:
            self.best, self.waited, self.best_epoch = score, 0, epoch
            self.best_state = weights(model)
        else:
            self.waited += 1


class TrainingState:
    """The model, optimizer, schedulers, grad scaler, per-parameter gradient norms, RNG
    states, epoch, step count, batch position and run record of one training.

    Each name in PIECES is a key of the checkpoint; a piece with `state_dict` saves through
    it ({} when the run has none), a plain value (a counter) as it is. Adding a piece of
    state is adding its name here and its attribute below: checkpoints, resumes and the
    drop-each-piece test (tests/unit/test_resume.py) all walk this tuple.
    """

    PIECES = (
        "model",
        "optimizer",
        "scheduler",
        "plateau",
        "scaler",
        "layer_grads",
        "rng",
        "epoch",
        "steps",
        "position",
        "run",
        "averaged",
        "swa_lr",
    )

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None,
        scaler: torch.amp.GradScaler | None = None,
        generator: torch.Generator | None = None,
        layer_grads: GradientNorms | None = None,
        spec_digest: str = "",
        cuda: bool = False,
        averaged: AveragedModel | None = None,
        swa_lr: SWALR | None = None,
    ):
        self.model, self.optimizer = model, optimizer
        # train.swa / train.ema: the running average of the weights, SWA's lr schedule
        self.averaged, self.swa_lr = averaged, swa_lr
        self.scheduler, self.plateau, self.scaler = scheduler, plateau, scaler
        self.layer_grads = layer_grads
        self.generator = generator or torch.Generator()
        self.rng = Rng(self.generator, cuda)
        self.epoch = 0  # the epoch running (or, between epochs, the last one finished)
        self.steps = 0  # optimizer steps over the run
        self.position = Position()
        self.run = Record()
        self.spec_digest = spec_digest
        self.replay_rng: dict | None = None  # mid-epoch resume: restored after the replay

    @property
    def next_epoch(self) -> int:
        """The epoch a run continues with: this one when stopped inside it, else the next."""
        return self.epoch if self.position.batch else self.epoch + 1

    def state_dict(self) -> dict:
        """What last.pt holds, and the digest of the train spec and the torch version that
        wrote it (a resume checks both)."""
        saved = {}
        for name in self.PIECES:
            piece = getattr(self, name)
            saved[name] = (
                {}
                if piece is None
                else piece.state_dict()
                if hasattr(piece, "state_dict")
                else piece
            )
        return {**saved, "spec": self.spec_digest, "versions": {"torch": str(torch.__version__)}}

    def load_state_dict(self, saved: dict) -> None:
        """Restore every piece; a piece saved empty ({} or None) stays as a fresh start has
        it. Mid-epoch, the batch generator is set to draw the epoch's order again and the
        saved RNG states wait in `replay_rng` until the consumed batches are passed."""
        for name in self.PIECES:
            piece, state = getattr(self, name), saved[name]
            if not hasattr(piece, "load_state_dict"):
                if piece is not None:  # a counter
                    setattr(self, name, state)
            elif state:
                piece.load_state_dict(state)
        if self.position.batch and self.position.order_rng is not None:
            self.generator.set_state(self.position.order_rng)
            self.replay_rng = saved["rng"]

    def resume(self, source: Path | dict) -> None:
        """Continue from a last.pt (its rotation's newest intact file) or its loaded state,
        written by the same train spec."""
        saved = source if isinstance(source, dict) else load_resumable(source)
        if saved.get("spec", self.spec_digest) != self.spec_digest:
            where = "its checkpoint" if isinstance(source, dict) else source
            raise TrainflowError(
                f"cannot resume from {where}: it was written by a different "
                "train spec (resuming needs the same knobs to reach the same "
                "weights); start afresh or restore the spec"
            )
        written = saved.get("versions", {}).get("torch", str(torch.__version__))
        if written != str(torch.__version__):
            log.warning(
                "resuming a checkpoint written by torch %s with torch %s: the run "
                "continues, but may not be bit-identical to an uninterrupted one",
                written,
                torch.__version__,
            )
        self.load_state_dict(saved)
        if "sharded" in saved:  # fsdp: the model's and optimizer's shards, from DCP's files
            from trainflow.engine import fsdp

            fsdp.load(saved, self.model, self.optimizer)

    def replayed(self) -> None:
        """The consumed batches of a mid-epoch resume are passed: the RNGs continue as saved."""
        if self.replay_rng is not None:
            self.rng.load_state_dict(self.replay_rng)
            self.replay_rng = None


def spec_digest(spec: TrainSpec) -> str:
    # fsdp resumes on another world size (DCP reshards): its digest leaves the ranks out
    sharded = spec.distributed is not None and spec.distributed.strategy == "fsdp"
    text = spec.model_dump_json(exclude={"distributed"}) if sharded else spec.model_dump_json()
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def weights(model: nn.Module) -> dict:
    """A CPU copy of the model's weights that training no longer changes (fsdp: gathered
    whole from every rank's shards)."""
    if World.current().sharded:
        from trainflow.engine import fsdp

        return fsdp.full_weights(model)
    return {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}


def load_resumable(path: Path) -> dict:
    """The newest intact checkpoint of a rotation that holds every piece of the state."""
    return checkpoint.load_latest_good(path, TrainingState.PIECES)
