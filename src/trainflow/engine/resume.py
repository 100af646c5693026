"""What an exact resume needs: every random-number state of a run, and the whole training
state that last.pt holds."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn

from trainflow.engine.update import Update


def rng_state(batches: torch.Generator) -> dict:
    """Python, NumPy (as tensors and numbers: weights_only loads them), torch, CUDA and the
    generator that orders the training batches."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, words, next_gauss = random.getstate()
    return {"torch": torch.get_rng_state(), "batches": batches.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": {"version": version, "words": list(words), "gauss": next_gauss}}


def restore_rng(state: dict, batches: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    batches.set_state(state["batches"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["gauss"]))
    python = state["python"]
    random.setstate((python["version"], tuple(python["words"]), python["gauss"]))


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
