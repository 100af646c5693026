"""The pyfunc flavour of a trainflow model package in MLflow, logged as "models from code":
MLflow keeps this file's source and runs it to load the model, so nothing is pickled (a
PythonModel object passed to log_model would be saved with cloudpickle). `load_context`
loads the package folder logged beside it with trainflow.load_model, which verifies its
manifest and loads the weights with weights_only, so the serving side needs trainflow.

    model = mlflow.pyfunc.load_model("models:/<pipeline>@champion")
    model.predict(frame)  # the class of each row
    mlflow.pyfunc.load_model(uri, model_config={"proba": True}).predict(frame)  # probabilities
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
from mlflow.models import set_model

from trainflow.predictor import load_model

PACKAGE = "package"  # the artifact key of the package folder


class TrainflowModel(mlflow.pyfunc.PythonModel):
    """Scores a pandas (or polars) frame of raw rows as `trainflow predict` does."""

    def load_context(self, context: Any) -> None:
        self.model = load_model(context.artifacts[PACKAGE])
        self.proba = bool((context.model_config or {}).get("proba", False))

    # no type hints: MLflow would read them as an input schema to enforce
    def predict(self, context, model_input, params=None):
        """The predicted classes, or with `model_config={"proba": True}` an array of
        probabilities, a column per class in `self.model.classes` order."""
        if self.proba:
            return self.model.predict_proba(model_input)
        return self.model.predict(model_input)


set_model(TrainflowModel())
