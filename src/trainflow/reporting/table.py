"""A markdown table, the form every section of the report shows its figures in."""

from __future__ import annotations


def table(header: list[str], rows: list[list]) -> str:
    """Floats to four decimals, everything else as text."""

    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
