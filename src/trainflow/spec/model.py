"""Model section: architectures by `type`, each with flat keyword parameters."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from trainflow.spec.base import Section

Activation = Literal["relu", "leaky_relu", "gelu", "silu", "tanh", "sigmoid", "elu"]
Scheme = Literal[
    "default", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "orthogonal"
]
Init = Scheme | dict[Literal["linear", "conv", "recurrent"], Scheme]
# A layer's width: wider than the widest published models' layers is a typo (the memory
# estimate in engine/checks.py then judges the whole model against the machine).
MAX_WIDTH = 2**17
Width = Annotated[int, Field(gt=0, le=MAX_WIDTH)]
INIT_HELP = (
    "weight initialization, one scheme for every layer or one per layer type "
    "({linear: kaiming_normal, recurrent: orthogonal}); biases of re-initialized "
    "layers start at zero; default: PyTorch's own"
)


class ModelParams(Section):
    """What every architecture takes besides its own parameters."""

    share: list[list[str]] = Field(
        default_factory=list,
        description="groups of module names (as in the state dict, "
        "e.g. ['3', '5']) whose parameters are one and the same tensors (parameter sharing)",
    )

    @model_validator(mode="after")
    def _groups_of_two(self):
        short = [g for g in self.share if len(g) < 2]
        if short:
            raise ValueError(f"each share group names at least two modules, got {short}")
        return self

    def builder_kwargs(self) -> dict:
        return self.model_dump(exclude={"type", "share"})


class MLPParams(ModelParams):
    """A multilayer perceptron: `hidden_layers` layers of `units` (one number or one per layer)."""

    type: Literal["mlp"]
    hidden_layers: int = Field(2, ge=0, le=64)
    units: Width | list[Width] = 64
    activation: Activation = "relu"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    norm: Literal["none", "batch", "layer"] = "none"
    spectral_norm: bool = Field(
        False,
        description="spectral normalization of hidden Linear weights (largest singular value 1)",
    )
    init: Init = Field("default", description=INIT_HELP)

    @model_validator(mode="after")
    def _units_per_layer(self):
        if isinstance(self.units, list) and len(self.units) != self.hidden_layers:
            raise ValueError(
                f"units lists {len(self.units)} layer sizes but hidden_layers is "
                f"{self.hidden_layers}"
            )
        return self

    def builder_kwargs(self) -> dict:
        units = self.units if isinstance(self.units, list) else [self.units] * self.hidden_layers
        return {
            "hidden": units,
            "activation": self.activation,
            "dropout": self.dropout,
            "norm": self.norm,
            "spectral_norm": self.spectral_norm,
            "init": self.init,
        }


class CNNParams(ModelParams):
    """Conv blocks (conv, activation, 2x2 max-pool while the map is larger than 1x1), a head."""

    type: Literal["cnn"]
    channels: list[Width] = Field(default_factory=lambda: [32, 64], min_length=1, max_length=64)
    kernel_size: int = Field(3, ge=1, le=11)
    hidden: Width = 128
    activation: Activation = "relu"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    norm: Literal["batch", "none"] = "batch"
    init: Init = Field("default", description=INIT_HELP)

    @model_validator(mode="after")
    def _odd_kernel(self):
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (got {self.kernel_size}) to keep the size")
        return self


class RecurrentParams(ModelParams):
    """A recurrent stack (`rnn`, `lstm` or `gru`) over (steps, channels) sequences, classified
    from the last step; tabular rows are read as one-channel sequences."""

    type: Literal["rnn", "lstm", "gru"]
    hidden: Width = 64
    layers: int = Field(1, ge=1, le=16)
    dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="between stacked layers and before the head"
    )
    bidirectional: bool = False
    nonlinearity: Literal["tanh", "relu"] = Field("tanh", description="rnn only")
    init: Init = Field("default", description=INIT_HELP)

    @model_validator(mode="after")
    def _nonlinearity_for_rnn(self):
        if self.type != "rnn" and self.nonlinearity != "tanh":
            raise ValueError(
                f"nonlinearity applies to type rnn only ({self.type} has fixed gate activations)"
            )
        return self


class TransformerParams(ModelParams):
    """A Transformer encoder: a token per sequence step, or per feature of a tabular row."""

    type: Literal["transformer"]
    d_model: Width = 64
    heads: int = Field(4, gt=0, le=1024)
    layers: int = Field(2, ge=1, le=48)
    ff: Width = Field(128, description="feed-forward width in each layer")
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    activation: Literal["relu", "gelu"] = "gelu"
    norm_first: bool = Field(True, description="pre-norm layers (LayerNorm before attention)")
    pooling: Literal["cls", "mean"] = "cls"
    init: Init = Field("default", description=INIT_HELP)

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        return self
