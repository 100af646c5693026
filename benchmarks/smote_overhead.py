"""The `resample` step (SMOTE) against calling imbalanced-learn's fit_resample directly.

Generated imbalanced data, 20 numeric features, 10 % minority. trainflow's side is the step's
apply function on a polars frame (frame -> numpy -> SMOTE -> frame); the direct side calls
`SMOTE(random_state=0).fit_resample` on the same numpy arrays with the string labels.

Method (benchmarks/harness.py): threads pinned (--threads, default 1, polars too when the
command sets POLARS_MAX_THREADS); per size, the two sides run once per run, interleaved in
alternating order, after one warm-up pair; a fixed --runs; wall and CPU time; the median ratio
trainflow / direct over the paired runs with a 95 % bootstrap interval.

    OMP_NUM_THREADS=1 POLARS_MAX_THREADS=1 .venv/bin/python benchmarks/smote_overhead.py \
        [--runs 7] [rows ...]   # default: 100000
"""

from __future__ import annotations

import argparse

import harness
import numpy as np
import polars as pl
from imblearn.over_sampling import SMOTE

from trainflow.spec.steps import ResampleParams
from trainflow.tables import TableSchema
from trainflow.transforms.resample import apply


def frame(rows: int) -> tuple[pl.DataFrame, TableSchema]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 20)).astype(np.float64)
    labels = np.where(rng.random(rows) < 0.1, "rare", "common")
    features = [f"f{i}" for i in range(20)]
    df = pl.DataFrame(x, schema=features).with_columns(pl.Series("y", labels))
    return df, TableSchema(target="y", features=features, classes=["common", "rare"])


def contenders(rows: int) -> dict:
    """The two sides on the same `rows`-row data, each callable one measured run."""
    df, schema = frame(rows)
    x, y = df.select(schema.features).to_numpy(), df["y"].to_numpy()
    params = ResampleParams(type="resample", method="smote")
    return {
        "direct fit_resample": lambda: harness.measure(
            lambda: SMOTE(random_state=0).fit_resample(x, y)
        )[0],
        "trainflow resample": lambda: harness.measure(
            lambda: apply(df, schema, params, {"seed": 0})
        )[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", type=int, nargs="*", default=[100_000])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    harness.pin_threads(args.threads)
    before = harness.header("smote_overhead")
    results = {}
    for rows in args.rows:
        samples = harness.interleave(contenders(rows), args.runs)
        print(f"\n## {rows:,} rows")
        results[rows] = harness.summarize(samples, "direct fit_resample")
        print(harness.table(results[rows]))
    harness.finish(
        "smote_overhead", before, {"runs": args.runs, "threads": args.threads, "rows": results}
    )


if __name__ == "__main__":
    main()
