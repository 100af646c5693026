"""What an exact resume needs: the random-number states training draws from, and the whole
training state that last.pt holds."""

from __future__ import annotations

import torch
from torch import nn

from trainflow.engine.update import Update

# Training draws only from torch's generators (dropout and friends from the global one, batch
# order from its own, augmentation and mixup from generators seeded per epoch). Python's and
# NumPy's global generators are seeded at the start (for any library that reads them) but not
# saved: other threads of the process draw from Python's (Prefect's event loop jitters its
# intervals with `random.uniform`, websockets pings with `random.getrandbits`), so saving it
# would make two identical runs write different last.pt bytes while restoring it would change
# nothing training computes. tests/faults/test_reproducible.py checks that training draws from
# neither.


def rng_state(batches: torch.Generator) -> dict:
    """torch's CPU and CUDA states and the generator that orders the training batches."""
    return {"torch": torch.get_rng_state(), "batches": batches.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng(state: dict, batches: torch.Generator) -> None:
    """Restore what `rng_state` saved (a last.pt of an older version may hold Python's and
    NumPy's states too: training never read them, so they are left alone)."""
    torch.set_rng_state(state["torch"])
    batches.set_state(state["batches"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def training_state(model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
                   generator: torch.Generator, update: Update,
                   plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None,
                   run: dict, position: dict | None = None, spec_digest: str = "") -> dict:
    """What last.pt holds: weights, optimizer, schedule, scaler, epoch and (mid-epoch) the
    batch position with the epoch's order RNG, every RNG state and the early-stopping
    bookkeeping (`run`): all that an exact resume needs; and the digest of the train spec
    that wrote it and the torch version, which a resume checks."""
    return {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
        "steps": update.steps,
        "scheduler": update.scheduler.state_dict() if update.scheduler else {},
        "plateau": plateau.state_dict() if plateau else {},
        "scaler": update.scaler.state_dict() if update.scaler else {},
        "rng": rng_state(generator), "run": run, "position": position,
        "spec": spec_digest, "versions": {"torch": str(torch.__version__)},
    }
