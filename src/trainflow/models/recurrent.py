"""The `rnn`, `lstm` and `gru` builders: a recurrent stack over (steps, channels) sequences,
classified from the last step's output.

Tabular rows (features,) are read as a sequence of one-channel steps. The model's forward
takes and returns the recurrent state on request, which is what truncated backpropagation
through time needs (engine/loop.py carries the state across windows, detached).
"""

from __future__ import annotations

import torch
from torch import nn

from trainflow.models.layers import initialize

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class Recurrent(nn.Module):
    """A recurrent stack, then dropout and a linear head on the last step's output."""

    recurrent = True  # the loop may truncate backpropagation through time on this model

    def __init__(
        self,
        cell: str,
        channels: int,
        num_classes: int,
        hidden: int,
        layers: int,
        dropout: float,
        bidirectional: bool,
        nonlinearity: str,
    ):
        super().__init__()
        extra = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
        self.rnn = CELLS[cell](
            channels,
            hidden,
            num_layers=layers,
            batch_first=True,
            dropout=dropout if layers > 1 else 0.0,
            bidirectional=bidirectional,
            **extra,
        )
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), num_classes)

    def forward(self, x: torch.Tensor, state=None, return_state: bool = False):
        if x.dim() == 2:  # tabular: one feature per step
            x = x.unsqueeze(-1)
        out, state = self.rnn(x, state)
        logits = self.head(self.drop(out[:, -1]))
        return (logits, state) if return_state else logits


def _builder(cell: str):
    def build(
        input_shape: list[int],
        num_classes: int,
        hidden: int = 64,
        layers: int = 1,
        dropout: float = 0.0,
        bidirectional: bool = False,
        nonlinearity: str = "tanh",
        init: str = "default",
    ) -> Recurrent:
        if len(input_shape) not in (1, 2):
            raise ValueError(
                f"{cell} needs sequences (steps, channels) or tabular rows; the "
                f"data has shape {input_shape}"
            )
        channels = input_shape[1] if len(input_shape) == 2 else 1
        model = Recurrent(
            cell, channels, num_classes, hidden, layers, dropout, bidirectional, nonlinearity
        )
        return initialize(model, init, nonlinearity)

    build.__name__ = cell
    build.__doc__ = f"A {cell.upper()} sequence classifier."
    return build


rnn, lstm, gru = _builder("rnn"), _builder("lstm"), _builder("gru")
