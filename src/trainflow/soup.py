"""A greedy model soup (Wortsman et al., 2022) of fold models sharing one architecture: the
ingredients in order of their validation loss, each one's weights joining the uniform
average only when that lowers the soup's loss on the ingredient's held-out fold."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trainflow.engine.model_folder import build_from_folder
from trainflow.errors import ArtifactError


@dataclass
class Ingredient:
    folder: Path
    fold: int
    val_loss: float  # on its own held-out fold: the order of the ingredients
    held_x: np.ndarray  # that fold's held-out rows, as its steps made them
    held_y: np.ndarray


@dataclass
class Soup:
    net: nn.Module
    kept: list[int]  # the folds whose weights are in the soup, in the order they joined
    tried: list[dict] = field(default_factory=list)  # each candidate: fold, losses, kept


def average(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The uniform average of floating-point entries (weights and batch-norm statistics);
    counters (num_batches_tracked) as the first ingredient has them."""
    return {
        key: torch.stack([s[key] for s in states]).mean(0) if value.is_floating_point() else value
        for key, value in states[0].items()
    }


@torch.no_grad()
def held_loss(net: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    logits = net.eval()(torch.from_numpy(x)).float()
    return float(nn.functional.cross_entropy(logits, torch.from_numpy(y)).item())


def greedy_soup(ingredients: list[Ingredient]) -> Soup:
    """The soup of the ingredients that help, starting from the best one."""
    ordered = sorted(ingredients, key=lambda i: (i.val_loss, i.fold))
    nets = [build_from_folder(i.folder, "ensemble soup") for i in ordered]
    states = [{k: v.detach().clone() for k, v in n.state_dict().items()} for n in nets]
    check_one_architecture(ordered, states)
    soup = Soup(nets[0], [ordered[0].fold])
    chosen = [states[0]]
    for ingredient, state in zip(ordered[1:], states[1:]):
        x, y = ingredient.held_x, ingredient.held_y
        before = held_loss(soup.net, x, y)
        candidate = build_from_folder(ordered[0].folder, "ensemble soup")
        candidate.load_state_dict(average([*chosen, state]))
        after = held_loss(candidate, x, y)
        kept = after < before
        soup.tried.append(
            {"fold": ingredient.fold, "loss_without": before, "loss_with": after, "kept": kept}
        )
        if kept:
            chosen.append(state)
            soup.net, soup.kept = candidate, [*soup.kept, ingredient.fold]
    return soup


def check_one_architecture(ordered: list[Ingredient], states: list[dict]) -> None:
    first = {k: tuple(v.shape) for k, v in states[0].items()}
    for ingredient, state in zip(ordered[1:], states[1:]):
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        if shapes != first:
            odd = sorted(k for k in first.keys() | shapes.keys() if first.get(k) != shapes.get(k))
            raise ArtifactError(
                f"ensemble soup: fold {ingredient.fold}'s model differs from fold "
                f"{ordered[0].fold}'s in {odd[:5]} (a soup averages the weights of models of "
                "one architecture; a step fitted per fold, e.g. encode, may have given the "
                "folds different inputs): use soft_vote, or steps that give every fold the "
                "same columns"
            )
