"""The evaluate.explain section: why the model decides (trainflow.explain computes it)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from trainflow.spec.base import Section

Method = Literal["auto", "permutation", "integrated_gradients", "saliency"]


class ExplainSpec(Section):
    """Explain the trained model on the test part. `permutation`: scikit-learn's permutation
    importance of each raw input column (by its name before any data step), scored through
    the model package, for tabular models; `integrated_gradients` or `saliency` (Captum, the
    `trainflow[explain]` extra): attributions of the predicted class over `samples` test
    inputs of an image or sequence model, drawn as a PNG grid. `auto` takes permutation for
    tables, integrated gradients for images and sequences."""

    method: Method = "auto"
    top_k: int = Field(10, ge=1, le=100, description="features the report's chart and table show")
    samples: int = Field(
        8, ge=1, le=64, description="test inputs whose attributions are drawn (seeded choice)"
    )
    n_repeats: int = Field(
        5, ge=1, le=100, description="permutations per column (permutation importance)"
    )
    metric: Literal["accuracy", "balanced_accuracy", "f1_macro", "log_loss"] = Field(
        "accuracy",
        description="the test score whose drop under a column's permutation is its importance",
    )
    steps: int = Field(32, ge=2, le=512, description="integration steps (integrated gradients)")

    def refusal(self, source_type: str, model_type: str) -> str | None:
        """Why `method` cannot serve the model, where the spec alone tells its inputs (a cnn
        or an image folder: images; a sequences source: sequences); the explain task checks
        the rest, from the trained model's input shape."""
        kind = "image" if model_type == "cnn" or source_type == "image_folder" else None
        kind = "sequence" if source_type == "sequences" else kind
        return mismatch(self.method, kind) if kind and self.method == "permutation" else None

    def scores_a_package(self, source_type: str, model_type: str) -> bool:
        """Whether the method is permutation importance (which needs the model package),
        as far as the spec alone tells."""
        tabular = model_type != "cnn" and source_type not in ("image_folder", "sequences")
        return self.method == "permutation" or (self.method == "auto" and tabular)


def mismatch(method: str, kind: str) -> str:
    """The message for a method that cannot explain a model of `kind` inputs."""
    serves = "tabular" if method == "permutation" else "image and sequence"
    fix = "permutation" if kind == "table" else "integrated_gradients or saliency"
    return (
        f"evaluate.explain.method: {method!r} explains {serves} models; this model takes "
        f"{kind} inputs: use {fix} (or auto)"
    )
