"""Small shared pieces of the architecture builders."""

from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU, "silu": nn.SiLU,
    "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "elu": nn.ELU,
}


NONLINEARITY = {"relu": "relu", "leaky_relu": "leaky_relu", "tanh": "tanh", "sigmoid": "sigmoid"}


def activation(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


def initialize(model: nn.Module, scheme: str, activation: str = "relu") -> nn.Module:
    """Re-initialize Linear and Conv weights by `scheme` (biases to zero); `default` keeps
    PyTorch's initialization. Kaiming uses the activation's gain where torch knows it."""
    if scheme == "default":
        return model
    gain_of = NONLINEARITY.get(activation, "relu")
    for module in model.modules():
        if not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            continue
        weight = (module.parametrizations.weight.original  # under spectral norm
                  if nn.utils.parametrize.is_parametrized(module, "weight") else module.weight)
        if scheme == "xavier_uniform":
            nn.init.xavier_uniform_(weight)
        elif scheme == "xavier_normal":
            nn.init.xavier_normal_(weight)
        elif scheme == "kaiming_uniform":
            nn.init.kaiming_uniform_(weight, nonlinearity=gain_of)
        elif scheme == "kaiming_normal":
            nn.init.kaiming_normal_(weight, nonlinearity=gain_of)
        elif scheme == "orthogonal":
            nn.init.orthogonal_(weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    return model
