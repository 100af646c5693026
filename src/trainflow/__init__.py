"""trainflow: declarative YAML training pipelines for PyTorch, run as Prefect 3 flows."""

import os

# albumentations would otherwise look for a newer release online at import time.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"


def load_model(path):
    """The model package at `path` (the folder `trainflow run` prints as "package"), verified
    against its manifest: `.predict(frame)`, `.predict_proba(frame)` for a polars or pandas
    frame of raw rows, `.classes`, `.input_schema`. Imported on first use, so that
    `import trainflow` stays light."""
    from trainflow.predictor import load_model as load

    return load(path)
