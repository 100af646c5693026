"""Data drift: a profile of the training data's features, and the population stability index
(PSI) of each feature of scored rows against it.

The profile (stored in a model package) holds, per column, the bins training rows fell into
and the fraction in each: for a number, the bin edges are the training data's quantiles
(deciles), for text the most frequent categories plus `other`; a missing value is a bin of
its own. Scored rows are counted into the same bins in one streaming pass, and

    PSI = sum over bins of (scored% - train%) * ln(scored% / train%)

(empty bins count as FLOOR, so a bin that only one side fills is not infinite). The usual
reading: below 0.1 no shift, 0.1-0.2 a moderate one, above 0.2 a shift worth a look; the
flag threshold is the caller's (0.2 by default).
"""

from __future__ import annotations

import math
from typing import Any

import polars as pl

QUANTILES = 10  # numeric bins: training deciles
TOP_CATEGORIES = 20  # text columns: the most frequent categories, the rest is `other`
FLOOR = 1e-4  # the share an empty bin counts as
THRESHOLD = 0.2
MODERATE = 0.1


def profile(rows: pl.LazyFrame, columns: list[str]) -> dict[str, Any]:
    """The training profile of `columns` (numbers and text; other types are skipped): bins
    and the fraction of rows in each, with the mean and std of numbers for the report."""
    types = rows.collect_schema()
    numeric = [c for c in columns if types[c].is_numeric()]
    text = [c for c in columns if types[c] in (pl.String, pl.Boolean, pl.Categorical)]
    stats = (
        rows.select(
            pl.len().alias("__rows"),
            *(_present(c).mean().alias(f"{c}\0mean") for c in numeric),
            *(_present(c).std().alias(f"{c}\0std") for c in numeric),
            *(
                _present(c).quantile(q / QUANTILES).alias(f"{c}\0q{q}")
                for c in numeric
                for q in range(1, QUANTILES)
            ),
        )
        .collect(engine="streaming")
        .row(0, named=True)
    )
    bins: dict[str, dict[str, Any]] = {}
    for c in numeric:
        edges = sorted(
            {
                float(stats[f"{c}\0q{q}"])
                for q in range(1, QUANTILES)
                if _finite(stats[f"{c}\0q{q}"])
            }
        )
        bins[c] = {
            "kind": "numeric",
            "edges": edges,
            "mean": _number(stats[f"{c}\0mean"]),
            "std": _number(stats[f"{c}\0std"]),
        }
    for c in text:
        top = (
            rows.select(pl.col(c).cast(pl.String).drop_nulls().value_counts(sort=True))
            .unnest(c)
            .head(TOP_CATEGORIES)
            .collect(engine="streaming")
        )
        bins[c] = {"kind": "category", "categories": top[c].to_list()}
    counts = bin_counts(rows, bins)
    total = max(int(stats["__rows"]), 1)
    for c, column in bins.items():
        column["fractions"] = [n / total for n in counts[c]]
    return {"rows": int(stats["__rows"]), "columns": bins}


def bin_counts(rows: pl.LazyFrame, columns: dict[str, dict[str, Any]]) -> dict[str, list[int]]:
    """Rows per bin of each profiled column present in `rows`, in one streaming pass: a
    number's bins by its edges (right-closed) then `missing`; text's categories, `other`,
    `missing`."""
    types = rows.collect_schema()
    exprs = [
        e.sum().alias(f"{c}\0{i}")
        for c, column in columns.items()
        if c in types
        for i, e in enumerate(_bins(c, column))
    ]
    if not exprs:
        return {}
    got = rows.select(exprs).collect(engine="streaming").row(0, named=True)
    counts: dict[str, list[int]] = {}
    for key, n in got.items():
        counts.setdefault(key.rpartition("\0")[0], []).append(int(n or 0))
    return counts


def _bins(name: str, column: dict[str, Any]) -> list[pl.Expr]:
    """One boolean expression per bin (the last: missing)."""
    if column["kind"] == "numeric":
        value = pl.col(name).cast(pl.Float64, strict=False)
        present = value.is_not_null() & ~value.is_nan()
        index = pl.sum_horizontal(
            [(value > e).cast(pl.Int32) for e in column["edges"]] or [pl.lit(0, pl.Int32)]
        )
        return [present & (index == i) for i in range(len(column["edges"]) + 1)] + [~present]
    value = pl.col(name).cast(pl.String)
    present = value.is_not_null()
    known = column["categories"]
    return [present & (value == k) for k in known] + [present & ~value.is_in(known), ~present]


class DriftCounts:
    """Scored rows counted into a training profile's bins, batch by batch (the rows scoring
    reads, converted to their training types), and the drift table of all of them."""

    def __init__(self, train: dict[str, Any]):
        self.columns: dict[str, dict[str, Any]] = train.get("columns") or {}
        self.counts: dict[str, list[int]] = {}
        self.sums: dict[str, list[float]] = {}  # numbers: [sum, count] of present values

    def add(self, batch: pl.DataFrame) -> None:
        for c, counts in bin_counts(batch.lazy(), self.columns).items():
            mine = self.counts.setdefault(c, [0] * len(counts))
            self.counts[c] = [a + b for a, b in zip(mine, counts)]
        numbers = [
            c for c in self.columns if c in batch.columns and self.columns[c]["kind"] == "numeric"
        ]
        if numbers:
            got = batch.select(
                *(_present(c).sum().alias(f"{c}\0sum") for c in numbers),
                *(_present(c).count().alias(f"{c}\0n") for c in numbers),
            ).row(0, named=True)
            for c in numbers:
                total, n = self.sums.get(c, [0.0, 0])
                self.sums[c] = [total + (got[f"{c}\0sum"] or 0.0), n + got[f"{c}\0n"]]

    def table(self, threshold: float = THRESHOLD) -> list[dict[str, Any]]:
        """One row per profiled column seen: its PSI, missing shares, means, and its status
        (drift past `threshold`)."""
        table = []
        for c, scored in self.counts.items():
            column = self.columns[c]
            expected, total = column["fractions"], sum(scored)
            actual = [n / total for n in scored] if total else [0.0] * len(scored)
            value = psi(expected, actual) if total else 0.0
            total_sum, n = self.sums.get(c, [0.0, 0])
            table.append(
                {
                    "column": c,
                    "kind": column["kind"],
                    "psi": round(value, 4),
                    "status": (
                        "drift"
                        if value > threshold
                        else "moderate"
                        if value > min(MODERATE, threshold)
                        else "ok"
                    ),
                    "train_missing": round(expected[-1], 4),
                    "scored_missing": round(actual[-1], 4),
                    "train_mean": column.get("mean"),
                    "scored_mean": _number(total_sum / n) if n else None,
                }
            )
        return table


def psi(expected: list[float], actual: list[float]) -> float:
    """The population stability index of two distributions over the same bins."""
    total = 0.0
    for e, a in zip(expected, actual):
        e, a = max(e, FLOOR), max(a, FLOOR)
        total += (a - e) * math.log(a / e)
    return total


def flagged(table: list[dict[str, Any]]) -> list[str]:
    return [row["column"] for row in table if row["status"] == "drift"]


def markdown(table: list[dict[str, Any]], threshold: float, profiled: bool) -> str:
    """The drift table as markdown, drifted columns first."""
    if not table:
        return (
            "No drift table: the model package holds no training profile (it was made "
            "before trainflow profiled training data; retrain to get one).\n"
            if not profiled
            else "No drift table: the model reads no number or text "
            "columns (image pixels and sequences are not profiled).\n"
        )
    order = sorted(table, key=lambda r: -r["psi"])
    lines = [
        f"PSI per feature against the training data's profile; **drift** past "
        f"{threshold} (0.1-{threshold}: moderate).",
        "",
        "| column | kind | PSI | status | missing (train -> scored) | mean (train -> scored) |",
        "|---|---|---:|---|---|---|",
    ]
    for r in order:
        status = "**drift**" if r["status"] == "drift" else r["status"]
        mean = (
            f"{_fmt(r['train_mean'])} -> {_fmt(r['scored_mean'])}" if r["kind"] == "numeric" else ""
        )
        lines.append(
            f"| {r['column']} | {r['kind']} | {r['psi']:.4f} | {status} | "
            f"{r['train_missing']:.1%} -> {r['scored_missing']:.1%} | {mean} |"
        )
    return "\n".join(lines) + "\n"


def _present(name: str) -> pl.Expr:
    value = pl.col(name).cast(pl.Float64, strict=False)
    return pl.when(value.is_nan()).then(None).otherwise(value)


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(value)


def _number(value: Any) -> float | None:
    return round(float(value), 6) if _finite(value) else None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
