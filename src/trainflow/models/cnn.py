"""The `cnn` builder: conv blocks over (C, H, W) images, then a small classifier head."""

from torch import nn

from trainflow.models.layers import activation as make_activation
from trainflow.models.layers import initialize


def cnn(
    input_shape: list[int],
    num_classes: int,
    channels: list[int],
    kernel_size: int = 3,
    hidden: int = 128,
    activation: str = "relu",
    dropout: float = 0.0,
    norm: str = "batch",
    init: str = "default",
) -> nn.Sequential:
    if len(input_shape) != 3:
        raise ValueError(f"cnn needs image inputs (C, H, W); the data has shape {input_shape}")
    c, h, w = input_shape
    layers: list[nn.Module] = []
    for out in channels:
        layers.append(nn.Conv2d(c, out, kernel_size, padding=kernel_size // 2))
        if norm == "batch":
            layers.append(nn.BatchNorm2d(out))
        layers.append(make_activation(activation))
        if h > 1 and w > 1:
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        c = out
    layers += [nn.Flatten(), nn.Linear(c * h * w, hidden), make_activation(activation)]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(hidden, num_classes))
    return initialize(nn.Sequential(*layers), init, activation)
