"""Small shared pieces of the architecture builders."""

from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU, "silu": nn.SiLU,
    "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "elu": nn.ELU,
}


def activation(name: str) -> nn.Module:
    return ACTIVATIONS[name]()
