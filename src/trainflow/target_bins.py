"""Quantile bins of a numeric target: what a regression's split and CV folds stratify on.

Stratifying on the classes keeps each part's class mix; a regression has no classes, and a
plain random split of a skewed target can leave the tail (the few large values) in one
part. Binning the target into equal-count bins by rank and stratifying on the bin keeps
each part's distribution: every part gets its share of each quantile range.
"""

from __future__ import annotations

import numpy as np

from trainflow.errors import DataError

MAX_BINS = 10  # deciles: finer bins add little once each part has its share of each


def bin_count(smallest_part: int) -> int:
    """How many bins a split whose smallest part has `smallest_part` rows stratifies on: at
    most MAX_BINS, and at least 2 rows of that part in each bin, so that every part can get
    its share of every bin (1: too few rows to stratify, the draw is then a plain shuffle)."""
    return max(1, min(MAX_BINS, smallest_part // 2))


def quantile_codes(values: np.ndarray, bins: int, where: str) -> np.ndarray:
    """Each row's bin (0..bins-1) by the rank of its value: equal-count bins, so ties and a
    skewed tail never leave a bin empty; equal values keep their row order (stable sort),
    which makes the codes, and the split drawn from them, depend on the data alone."""
    values = np.asarray(values, dtype=np.float64)
    missing = int(np.isnan(values).sum())
    if missing:
        raise DataError(
            f"{where}: the target has {missing} missing value(s): add a `clean` step "
            "(drop_missing_label) before `split`"
        )
    if len(values) < 2 * bins:
        raise DataError(
            f"{where} needs at least {2 * bins} rows of the target to stratify on {bins} "
            f"quantile bins; the table has {len(values)}: add rows, or use strategy: random"
        )
    rank = np.empty(len(values), np.int64)
    rank[np.argsort(values, kind="stable")] = np.arange(len(values))
    return (rank * bins // len(values)).astype(np.int64)
