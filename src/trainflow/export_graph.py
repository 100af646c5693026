"""The eager module an export traces: raw numeric columns -> class probabilities, or a
regression's number per row.

Each member's folded steps and network, softmax of its float logits (divided by the package's
temperature), or for a regression the inverse of its target scaling (y * std + mean, the
target's units: engine.target_scale), then the members combined as the package's ensemble
rule says, in torch
operations every exporter keeps (ONNX, TorchScript, torch.export). Each rule mirrors its numpy
twin in trainflow.ensembles, which the package's predictor runs, so an export scores as the
package does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from trainflow.folding import ExportError, Prep

EXPORTED_RULES = ("soft_vote", "hard_vote", "weighted", "stacking", "soup", "mean")


class Combine(nn.Module):
    """Members' probabilities (a list, one [rows, classes] tensor per fold model) -> one."""

    means: torch.Tensor  # buffers (saved with the module, constants in an export)
    weights: torch.Tensor
    coef: torch.Tensor
    intercept: torch.Tensor

    def __init__(self, kind: str | None, state: dict[str, Any], members: int):
        super().__init__()
        self.kind = kind or "soft_vote"
        groups = state.get("groups", [0] * members)
        # group g's mean = probs (stacked: members x rows x classes) averaged with these weights
        means = torch.zeros(max(groups) + 1, members, dtype=torch.float32)
        for index, group in enumerate(groups):
            means[group, index] = 1.0
        self.register_buffer("means", means / means.sum(dim=1, keepdim=True))
        weights = torch.tensor(state.get("weights", [1.0]), dtype=torch.float32)
        self.register_buffer("weights", weights)
        coef = torch.tensor(state.get("coef", [[0.0]]), dtype=torch.float32)
        self.register_buffer("coef", coef)
        intercept = torch.tensor(state.get("intercept", [0.0]), dtype=torch.float32)
        self.register_buffer("intercept", intercept)

    def forward(self, probs: list[torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack(probs)  # members x rows x classes (a regression's: x rows)
        if self.kind == "soup" or stacked.shape[0] == 1:
            return stacked[0]
        if self.kind in ("soft_vote", "mean"):  # mean: a regression's, ensembles.combine_mean
            return stacked.mean(dim=0)
        if self.kind == "hard_vote":  # one vote per fold model; a tie's argmax is the lowest class
            classes = torch.arange(stacked.shape[2], device=stacked.device)
            votes = (stacked.argmax(dim=2).unsqueeze(2) == classes).to(stacked.dtype)
            return votes.mean(dim=0)
        grouped = torch.einsum("gm,mrc->grc", self.means, stacked)  # each member's fold mean
        if self.kind == "weighted":
            return torch.einsum("g,grc->rc", self.weights, grouped)
        features = torch.cat(
            list(grouped.unbind(0)), dim=1
        )  # stacking: members' means side by side
        scores = features @ self.coef.T + self.intercept
        if scores.shape[1] == 1:  # binary: the meta-model scores the second class only
            scores = torch.cat([torch.zeros_like(scores), scores], dim=1)
        return torch.softmax(scores, dim=1)


class Exported(nn.Module):
    """Raw numeric columns -> class probabilities [rows, classes], or a regression's numbers
    [rows] in the target's units (`scales`: each member's target (mean, std)), as the
    package's predictor computes them."""

    def __init__(
        self,
        preps: list[Prep],
        nets: list[nn.Module],
        temperature: float = 1.0,
        combine: Combine | None = None,
        scales: list[tuple[float, float]] | None = None,
    ):
        super().__init__()
        self.preps = nn.ModuleList(preps)
        self.nets = nn.ModuleList(nets)
        self.temperature = temperature  # the package's (evaluate.calibrate), a constant
        self.combine = combine or Combine(None, {}, len(nets))
        self.scales = scales  # constants in the graph, like the temperature

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        probs = []
        for index, (prep, net) in enumerate(zip(self.preps, self.nets)):
            logits = net(prep(features)).float()
            if self.scales is not None:  # TargetScale.original: one number per row
                mean, std = self.scales[index]
                probs.append(logits.reshape(-1) * std + mean)
                continue
            if self.temperature != 1.0:
                logits = logits / self.temperature
            probs.append(torch.softmax(logits, dim=1))
        return self.combine(probs)


def combination(kind: str | None, state: dict[str, Any], members: int, where: str) -> Combine:
    """The package's ensemble rule as a module; a rule export cannot fold is refused by name."""
    if kind == "top_k_trials":  # its state names the rule it chose
        kind = state.get("kind")
    if kind is not None and kind not in EXPORTED_RULES:
        raise ExportError(
            f"{where}: members combined by {kind!r}, which export does not fold "
            f"(it folds {', '.join(EXPORTED_RULES)})"
        )
    return Combine(kind, state, members)


def prediction_rule(info: Any) -> str:
    """How a serving runtime turns the probabilities into a class, as the package does."""
    d = info.decision
    if d is None or d.threshold is None or d.positive is None:
        return "classes[argmax]"
    return (
        f"classes[{d.positive}] where probabilities[{d.positive}] >= {d.threshold!r}, "
        f"else classes[{1 - d.positive}] (evaluate.threshold)"
    )


def output_section(info: Any, scales: list[tuple[float, float]] | None) -> dict[str, Any]:
    """The sidecar's `output`: a classifier's probabilities, or a regression's number."""
    if scales is not None:  # the number itself, no classes
        return {
            "name": "prediction",
            "dtype": "float32",
            "shape": ["batch"],
            "classes": [],
            "prediction": "the number itself, in the target's units "
            "(the network's output * std + mean, inside the graph)",
            "target_scale": [{"mean": m, "std": s} for m, s in scales],
        }
    return {
        "name": "probabilities",
        "dtype": "float32",
        "shape": ["batch", len(info.classes)],
        "classes": list(info.classes),
        "prediction": prediction_rule(info),
    }
