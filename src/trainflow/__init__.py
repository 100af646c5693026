"""trainflow: declarative YAML training pipelines for PyTorch, run as Prefect 3 flows."""

import os

# albumentations would otherwise look for a newer release online at import time.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
