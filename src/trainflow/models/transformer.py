"""The `transformer` builder: a Transformer encoder over sequences or tabular tokens.

A sequence (steps, channels) is a token per step; a tabular row (features,) is a token per
feature, each embedded with its own weights (a feature tokenizer). A learned position
embedding is added; the classifier reads a [CLS] token or the mean of the tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from trainflow.models.layers import initialize


class Transformer(nn.Module):
    def __init__(
        self,
        input_shape: list[int],
        num_classes: int,
        d_model: int,
        heads: int,
        layers: int,
        ff: int,
        dropout: float,
        activation: str,
        norm_first: bool,
        pooling: str,
    ):
        super().__init__()
        self.tabular = len(input_shape) == 1
        tokens, channels = (input_shape[0], 1) if self.tabular else input_shape
        if self.tabular:  # one embedding per feature: value * weight + bias
            self.token_weight = nn.Parameter(torch.randn(tokens, d_model) * 0.02)
            self.token_bias = nn.Parameter(torch.zeros(tokens, d_model))
        else:
            self.embed = nn.Linear(channels, d_model)
        self.pooling = pooling
        extra = 1 if pooling == "cls" else 0
        self.cls = nn.Parameter(torch.zeros(1, 1, d_model)) if extra else None
        self.position = nn.Parameter(torch.randn(1, tokens + extra, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model, heads, ff, dropout, activation, batch_first=True, norm_first=norm_first
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tabular:
            h = x.unsqueeze(-1) * self.token_weight + self.token_bias
        else:
            h = self.embed(x)
        if self.cls is not None:
            h = torch.cat([self.cls.expand(len(h), -1, -1), h], dim=1)
        h = self.encoder(h + self.position)
        pooled = h[:, 0] if self.cls is not None else h.mean(dim=1)
        return self.head(self.norm(pooled))


def transformer(
    input_shape: list[int],
    num_classes: int,
    d_model: int = 64,
    heads: int = 4,
    layers: int = 2,
    ff: int = 128,
    dropout: float = 0.1,
    activation: str = "gelu",
    norm_first: bool = True,
    pooling: str = "cls",
    init: str = "default",
) -> Transformer:
    if len(input_shape) not in (1, 2):
        raise ValueError(
            f"transformer needs sequences (steps, channels) or tabular rows; the "
            f"data has shape {input_shape}"
        )
    if d_model % heads:
        raise ValueError(f"d_model ({d_model}) must be divisible by heads ({heads})")
    model = Transformer(
        input_shape,
        num_classes,
        d_model,
        heads,
        layers,
        ff,
        dropout,
        activation,
        norm_first,
        pooling,
    )
    return initialize(model, init, activation)
