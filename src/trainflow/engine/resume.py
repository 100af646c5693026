"""Capture and restore every random-number state of a run, for resuming it exactly."""

from __future__ import annotations

import random

import numpy as np
import torch


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
