"""Model section: architectures by `type`, each with flat keyword parameters."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, model_validator

from trainflow.spec.base import Section

Activation = Literal["relu", "leaky_relu", "gelu", "silu", "tanh", "sigmoid", "elu"]
Init = Literal["default", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal",
               "orthogonal"]
INIT_HELP = ("weights of Linear/Conv layers (biases start at zero); default: PyTorch's own "
             "(kaiming uniform with a = sqrt(5))")


class MLPParams(Section):
    """A multilayer perceptron: `hidden_layers` layers of `units` (one number or one per layer)."""

    type: Literal["mlp"]
    hidden_layers: int = Field(2, ge=0, le=64)
    units: PositiveInt | list[PositiveInt] = 64
    activation: Activation = "relu"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    norm: Literal["none", "batch", "layer"] = "none"
    spectral_norm: bool = Field(False, description="spectral normalization of hidden Linear "
                                "weights (largest singular value 1)")
    init: Init = Field("default", description=INIT_HELP)

    @model_validator(mode="after")
    def _units_per_layer(self):
        if isinstance(self.units, list) and len(self.units) != self.hidden_layers:
            raise ValueError(f"units lists {len(self.units)} layer sizes but hidden_layers is "
                             f"{self.hidden_layers}")
        return self

    def builder_kwargs(self) -> dict:
        units = self.units if isinstance(self.units, list) else [self.units] * self.hidden_layers
        return {"hidden": units, "activation": self.activation, "dropout": self.dropout,
                "norm": self.norm, "spectral_norm": self.spectral_norm, "init": self.init}


class CNNParams(Section):
    """Conv blocks (conv, activation, 2x2 max-pool while the map is larger than 1x1), then a head."""

    type: Literal["cnn"]
    channels: list[PositiveInt] = Field(default_factory=lambda: [32, 64], min_length=1)
    kernel_size: int = Field(3, ge=1, le=11)
    hidden: PositiveInt = 128
    activation: Activation = "relu"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    norm: Literal["batch", "none"] = "batch"
    init: Init = Field("default", description=INIT_HELP)

    @model_validator(mode="after")
    def _odd_kernel(self):
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (got {self.kernel_size}) to keep the size")
        return self

    def builder_kwargs(self) -> dict:
        return self.model_dump(exclude={"type"})
