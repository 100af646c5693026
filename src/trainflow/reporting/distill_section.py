"""compress.distill in the report: the student's parameters and FLOPs beside the teacher's
(the trained model), under the size and accuracy table every compression gets."""

from __future__ import annotations


def distill_lines(meta: dict) -> list[str]:
    """The lines under the distilled student's before (teacher) / after (student) table."""
    was, now = meta["sizes"]["before"], meta["sizes"]["after"]
    fewer = was["parameters"] / max(now["parameters"], 1)
    return [
        f"\nbefore: the trained model (teacher); after: the {meta['type']} student, "
        f"distilled {meta['epochs_run']} of {meta['epochs']} epoch(s) (best epoch "
        f"{meta['best_epoch']}) at temperature {meta['temperature']:g}, alpha "
        f"{meta['alpha']:g}",
        f"\nparameters {was['parameters']} -> {now['parameters']} ({fewer:.1f}x fewer), "
        f"FLOPs per sample {was['flops']} -> {now['flops']}",
    ]


def quantized_of(kind: str, meta: dict) -> str:
    """The model a compression started from, by its name among the run's models: the
    distilled student for compress.distill.quantize, else the trained model."""
    return meta.get("of", "model") if kind == "quantize" else "model"


def quantized_student_lines(meta: dict) -> list[str]:
    if meta.get("of") != "distill":
        return []
    return [
        "\nquantized: the distilled student (compress.distill.quantize), so before is the "
        "student; the gate measures from the trained model"
    ]
