"""trainflow: declarative YAML training pipelines for PyTorch, run as Prefect 3 flows."""

__version__ = "0.1.0"
