"""Small shared pieces of the architecture builders."""

from typing import Any, TypeVar

from torch import nn

Net = TypeVar("Net", bound=nn.Module)  # initialize() returns what it was given

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
}


NONLINEARITY = {"relu": "relu", "leaky_relu": "leaky_relu", "tanh": "tanh", "sigmoid": "sigmoid"}


def activation(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


LAYER_TYPES = {"linear": (nn.Linear,), "conv": (nn.Conv1d, nn.Conv2d), "recurrent": (nn.RNNBase,)}


def _init_weight(weight, scheme: str, gain_of: Any) -> None:  # Any: torch wants a Literal
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


def initialize(model: Net, scheme: str | dict[str, str], activation: str = "relu") -> Net:
    """Re-initialize weights by `scheme`, one name for every layer type or one per type
    (`{linear: kaiming_normal, recurrent: orthogonal}`); biases of re-initialized layers start
    at zero; `default` keeps PyTorch's initialization. Kaiming uses the activation's gain
    where torch knows it. Recurrent layers get the scheme on each weight matrix (input and
    hidden), per gate block."""
    schemes = scheme if isinstance(scheme, dict) else dict.fromkeys(LAYER_TYPES, scheme)
    gain_of = NONLINEARITY.get(activation, "relu")
    module: Any  # torch types a submodule's attributes as Tensor | Module
    for module in model.modules():
        kind = next((k for k, types in LAYER_TYPES.items() if isinstance(module, types)), None)
        chosen = schemes.get(kind, "default") if kind else "default"
        if chosen == "default":
            continue
        if kind == "recurrent":
            for name, param in module.named_parameters():
                if name.startswith("weight"):
                    for block in param.data.chunk(param.shape[0] // module.hidden_size):
                        _init_weight(block, chosen, gain_of)
                else:
                    nn.init.zeros_(param)
            continue
        weight = (
            module.parametrizations.weight.original  # under spectral norm
            if nn.utils.parametrize.is_parametrized(module, "weight")
            else module.weight
        )
        _init_weight(weight, chosen, gain_of)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    return model
