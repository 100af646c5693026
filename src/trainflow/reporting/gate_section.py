"""compress.gate's verdict on a compressed model, in words: the report's line under its
compression table and the package step's warning say the same sentence."""

from __future__ import annotations

from trainflow.reporting.qat_section import qat_lines


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
    """The report's lines for one compression's gate (none without a gate), after quantize
    auto's trial and train.qat's figures where there were any."""
    sentence = gate_sentence(kind, meta)
    if sentence is None:
        return [*auto_lines(meta), *qat_lines(meta)]
    verdict = "passed" if meta["gate"]["passed"] else "FAILED"
    kept = meta.get("keep_fp32")  # static int8: layers fallback auto (or the spec) kept fp32
    where = f" (layers kept in fp32: {', '.join(kept)})" if kept else ""
    return [*auto_lines(meta), *qat_lines(meta), f"\ngate {verdict}: {sentence}{where}"]


def auto_lines(meta: dict) -> list[str]:
    """quantize auto's trial: each method's CPU time per batch and verdict, and the choice."""
    auto = meta.get("auto")
    if not auto:
        return []
    tried = []
    for method in auto["candidates"]:
        if "skipped" in method:
            tried.append(f"{method['type']} skipped ({method['skipped']})")
            continue
        gate = method["gate"]
        verdict = "passed" if gate["passed"] else "failed"
        ms = method["cpu_ms_per_batch"]
        tried.append(f"{method['type']} {ms:.3f} ms, drop {gate['drop']:.4f} {verdict}")
    least = (
        " (none passed the gate: the least drop)"
        if auto["none_passed"]
        else f" (the first declared that passed, unless another is {auto['margin']}x faster)"
    )
    return [
        f"\nquantize auto, CPU ms per batch of {auto['batch_size']} on 1 thread (median of "
        f"{auto['runs']} interleaved rounds; fp32 {auto['fp32_cpu_ms_per_batch']:.3f} ms): "
        f"{'; '.join(tried)}; kept {auto['chosen']}{least}"
    ]
