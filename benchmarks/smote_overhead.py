"""The `resample` step (SMOTE) against calling imbalanced-learn's fit_resample directly.

Generated imbalanced data, 20 numeric features, 10 % minority. trainflow's side is the step's
apply function on a polars frame (frame -> numpy -> SMOTE -> frame); the direct side calls
`SMOTE(random_state=0).fit_resample` on the same numpy arrays. Best of 3 runs each.

    .venv/bin/python benchmarks/smote_overhead.py [rows ...]   # default: 100000 1000000
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import polars as pl
from imblearn.over_sampling import SMOTE

from trainflow.tables import TableSchema
from trainflow.tasks.resample import ResampleParams, apply


def frame(rows: int) -> tuple[pl.DataFrame, TableSchema]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 20)).astype(np.float64)
    labels = np.where(rng.random(rows) < 0.1, "rare", "common")
    features = [f"f{i}" for i in range(20)]
    df = pl.DataFrame(x, schema=features).with_columns(pl.Series("y", labels))
    return df, TableSchema(target="y", features=features, classes=["common", "rare"])


def best(fn, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(sizes: list[int]) -> None:
    params = ResampleParams(type="resample", method="smote")
    results = {}
    for rows in sizes:
        df, schema = frame(rows)
        x, y = df.select(schema.features).to_numpy(), df["y"].to_numpy()
        direct = best(lambda: SMOTE(random_state=0).fit_resample(x, y))
        ours = best(lambda: apply(df, schema, params, {"seed": 0}))
        results[rows] = {"direct_s": round(direct, 3), "trainflow_s": round(ours, 3),
                         "ratio": round(ours / direct, 3)}
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [100_000, 1_000_000])
