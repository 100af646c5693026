"""The `mlp` builder: flatten, then hidden Linear (+ norm) + activation + dropout, then a head."""

from math import prod

from torch import nn

from trainflow.models.layers import activation as make_activation
from trainflow.models.layers import initialize

NORMS = {"batch": nn.BatchNorm1d, "layer": nn.LayerNorm}


def mlp(
    input_shape: list[int],
    num_classes: int,
    hidden: list[int],
    activation: str = "relu",
    dropout: float = 0.0,
    norm: str = "none",
    spectral_norm: bool = False,
    init: str = "default",
) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    width = prod(input_shape)
    for units in hidden:
        linear = nn.Linear(width, units)
        layers.append(nn.utils.parametrizations.spectral_norm(linear) if spectral_norm else linear)
        if norm != "none":
            layers.append(NORMS[norm](units))
        layers.append(make_activation(activation))
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = units
    layers.append(nn.Linear(width, num_classes))
    return initialize(nn.Sequential(*layers), init, activation)
