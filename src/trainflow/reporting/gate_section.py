"""compress.gate's verdict on a compressed model, in words: the report's line under its
compression table and the package step's warning say the same sentence."""

from __future__ import annotations


def gate_sentence(kind: str, meta: dict) -> str | None:
    """`quantize (dynamic_int8): accuracy 0.7100 vs 0.9500 ..., not packaged`, from a
    compressed model's meta (its before/after table), or None where no gate judged it."""
    gate = meta.get("gate")
    if not gate:
        return None
    sign, outcome = ("<=", "packaged") if gate["passed"] else (">", "not packaged")
    return (
        f"{kind} ({meta['type']}): {gate['metric']} {gate['value']:.4f} vs "
        f"{gate['baseline']:.4f} (the trained model) on the {gate['on']} part, "
        f"drop {gate['drop']:.4f} {sign} max_drop {gate['max_drop']}: {outcome}"
    )


def gate_lines(kind: str, meta: dict) -> list[str]:
    """The report's lines for one compression's gate (none without a gate)."""
    sentence = gate_sentence(kind, meta)
    if sentence is None:
        return []
    verdict = "passed" if meta["gate"]["passed"] else "FAILED"
    kept = meta.get("keep_fp32")  # static int8: layers fallback auto (or the spec) kept fp32
    where = f" (layers kept in fp32: {', '.join(kept)})" if kept else ""
    return [f"\ngate {verdict}: {sentence}{where}"]
