"""The `mlp` builder: flatten, then hidden Linear + activation + dropout layers, then a head."""

from math import prod

from torch import nn

from trainflow.models.layers import activation as make_activation


def mlp(input_shape: list[int], num_classes: int, hidden: list[int], activation: str = "relu",
        dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    width = prod(input_shape)
    for units in hidden:
        layers += [nn.Linear(width, units), make_activation(activation)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = units
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
