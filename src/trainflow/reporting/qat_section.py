"""train.qat's figures in the report: the trained network in fp32, static int8 calibrated on
it after training (PTQ) and its QAT conversion (the package), on validation and test."""

from __future__ import annotations

LABELS = {"fp32": "fp32", "ptq_int8": "PTQ int8", "qat_int8": "QAT int8 (packaged)"}


def qat_lines(meta: dict) -> list[str]:
    """One line under the quantize table where the model was trained with train.qat."""
    figures = meta.get("qat")
    if not figures:
        return []

    def accuracy(part: str, name: str) -> str:
        value = figures[name][part]
        return "n/a" if value is None else f"{value:.4f}"

    parts = [
        f"{label} {accuracy('validation', name)} / {accuracy('test', name)}"
        for name, label in LABELS.items()
    ]
    return [f"\nquantization-aware training, accuracy on validation / test: {'; '.join(parts)}"]
