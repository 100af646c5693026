"""Multi-task learning and parameter sharing around any architecture.

`MultiTask` keeps the built model as the shared trunk plus the main head (its last Linear),
and adds one Linear head per auxiliary target on the same features. Its forward returns the
main task's logits, so evaluation, ensembling and compression see an ordinary classifier;
training asks for every head with `heads=True`.
"""

from __future__ import annotations

import torch
from torch import nn


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    name, module = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    return name, module


class MultiTask(nn.Module):
    def __init__(self, model: nn.Module, aux_classes: dict[str, int]):
        super().__init__()
        self.model = model
        name, head = _last_linear(model)
        self.aux = nn.ModuleDict(
            {task: nn.Linear(head.in_features, n) for task, n in aux_classes.items()}
        )
        self._features: torch.Tensor | None = None
        head.register_forward_pre_hook(self._keep_features)

    def _keep_features(self, _module, inputs):
        self._features = inputs[0]

    def forward(self, x: torch.Tensor, heads: bool = False, **kwargs):
        out = self.model(x, **kwargs)
        if not heads:
            return out
        features, self._features = self._features, None
        return out, {task: head(features) for task, head in self.aux.items()}


def share_parameters(model: nn.Module, groups: list[list[str]]) -> nn.Module:
    """Make the modules of each group use the first one's parameters (the same tensors, so
    one update moves them all). Shapes must agree."""
    modules = dict(model.named_modules())
    for group in groups:
        missing = [n for n in group if n not in modules]
        if missing:
            names = [
                n for n, m in modules.items() if n and next(m.parameters(False), None) is not None
            ]
            raise ValueError(
                f"share: no module named {missing}; modules with parameters are {names[:20]}"
            )
        first = modules[group[0]]
        for name in group[1:]:
            other = modules[name]
            for pname, param in first.named_parameters(recurse=False):
                theirs = getattr(other, pname, None)
                if theirs is None or theirs.shape != param.shape:
                    raise ValueError(
                        f"share: {group[0]}.{pname} {tuple(param.shape)} cannot be shared with "
                        f"{name}.{pname} "
                        f"{tuple(theirs.shape) if theirs is not None else '(missing)'}"
                    )
                setattr(other, pname, param)
    return model
