"""clean + split + encode + normalize on a generated Parquet file: trainflow against the same
operations in pandas + scikit-learn and in hand-written polars, plus a run under a memory cap.

The file: ROWS rows x 20 columns (17 float features with 2 % missing, 2 text categories, a
3-class label), 1 % duplicated rows. Every side does the same work and writes train/val/test
Parquet files: drop unlabelled rows, fill numbers with the median and text with the mode (fitted
on the whole table), drop duplicate rows, stratified split 65/15/20 (scikit-learn's
train_test_split, seed 0), one-hot encode the text columns and standardize the numbers with
statistics of the training part. trainflow runs its tasks' functions (`.fn`: the Prefect engine's
fixed per-task cost is measured in benchmarks/rerun.py), each writing its artifact as trainflow
always does. Each side runs in its own process, which reports its wall time and peak RSS.

    .venv/bin/python benchmarks/tabular_prep.py [--rows 5000000] [--runs 3] [--cap-gib 1.0]

`--cap-gib` also runs trainflow once under an address-space limit (RLIMIT_AS) of that many GiB
above the process's size after imports, smaller than the table in memory: it completes because
the steps stream.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FEATURES = [f"f{i:02d}" for i in range(17)]
TEXT = ["region", "plan"]
TARGET = "label"
WORK = Path(tempfile.gettempdir()) / "trainflow-bench-tabular"


def generate(rows: int) -> Path:
    import polars as pl

    path = WORK / f"table-{rows}.parquet"
    if path.exists():
        return path
    WORK.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = rows - rows // 100
    columns = {}
    for i, name in enumerate(FEATURES):
        values = rng.normal(i, 1 + i / 4, base)
        values[rng.random(base) < 0.02] = np.nan
        columns[name] = values
    columns["region"] = rng.choice([f"r{i}" for i in range(8)], base)
    columns["plan"] = rng.choice(["basic", "plus", "pro", "team"], base, p=[.5, .3, .15, .05])
    columns[TARGET] = rng.choice(["a", "b", "c"], base, p=[.7, .2, .1])
    df = pl.DataFrame(columns).with_columns(pl.col(FEATURES).fill_nan(None))
    df = pl.concat([df, df.sample(rows - base, seed=0)])  # 1 % exact duplicates
    df.write_parquet(path, row_group_size=250_000)
    return path


def run_trainflow(source: Path, out: Path) -> None:
    from trainflow.tasks.clean import CleanParams, clean
    from trainflow.tasks.encode import EncodeParams, encode
    from trainflow.tasks.ingest import FileSource, ingest
    from trainflow.tasks.normalize import NormalizeParams, normalize
    from trainflow.tasks.split import SplitParams, split

    store = str(out / "store")
    ref = ingest.fn(FileSource(type="parquet", path=str(source), target=TARGET), store)
    ref = clean.fn(ref, CleanParams(type="clean", missing="median"), 0, store)
    ref = split.fn(ref, SplitParams(type="split", validation=0.15, test=0.2), 0, store)
    ref = encode.fn(ref, EncodeParams(type="encode"), 0, store)
    normalize.fn(ref, NormalizeParams(type="normalize"), 0, store)


def _split_rows(labels: np.ndarray) -> dict[str, np.ndarray]:
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    rest, test = train_test_split(index, test_size=0.2, random_state=0, stratify=labels)
    train, val = train_test_split(rest, test_size=0.15 / 0.8, random_state=0,
                                  stratify=labels[rest])
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def run_polars(source: Path, out: Path) -> None:
    import polars as pl

    lf = pl.scan_parquet(source).filter(pl.col(TARGET).is_not_null())
    fill = lf.select(*(pl.col(c).median() for c in FEATURES),
                     *(pl.col(c).drop_nulls().mode().sort().first() for c in TEXT)
                     ).collect(engine="streaming").row(0, named=True)
    lf = lf.with_columns(pl.col(c).fill_null(v) for c, v in fill.items()).unique(
        maintain_order=True)
    cleaned = out / "clean.parquet"
    lf.sink_parquet(cleaned, compression="lz4")
    lf = pl.scan_parquet(cleaned)
    rows = _split_rows(lf.select(TARGET).collect()[TARGET].to_numpy())
    numbered = lf.with_row_index("row")
    parts = {k: numbered.filter(pl.col("row").is_in(pl.Series(v, dtype=pl.UInt32).implode()))
             .drop("row") for k, v in rows.items()}
    stats = parts["train"].select(
        *(pl.col(c).cast(pl.Utf8).unique().sort().implode().alias(c) for c in TEXT),
        *(pl.col(c).mean().alias(f"mean:{c}") for c in FEATURES),
        *(pl.col(c).std(ddof=0).alias(f"std:{c}") for c in FEATURES)).collect().row(
        0, named=True)
    for name, part in parts.items():
        part = part.with_columns(
            *((pl.col(c) - stats[f"mean:{c}"]) / stats[f"std:{c}"] for c in FEATURES),
            *((pl.col(c) == v).cast(pl.Float32).alias(f"{c}={v}") for c in TEXT
              for v in stats[c])).drop(TEXT)
        part.sink_parquet(out / f"{name}.parquet", compression="lz4")


def run_pandas(source: Path, out: Path) -> None:
    import pandas as pd
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    df = pd.read_parquet(source)
    df = df[df[TARGET].notna()]
    df = df.fillna({**{c: df[c].median() for c in FEATURES},
                    **{c: df[c].mode().sort_values().iloc[0] for c in TEXT}})
    df = df.drop_duplicates().reset_index(drop=True)
    rows = _split_rows(df[TARGET].to_numpy())
    parts = {k: df.iloc[v] for k, v in rows.items()}
    encoder = OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype=np.float32)
    scaler = StandardScaler()
    encoder.fit(parts["train"][TEXT])
    scaler.fit(parts["train"][FEATURES])
    for name, part in parts.items():
        encoded = pd.DataFrame(encoder.transform(part[TEXT]), index=part.index,
                               columns=encoder.get_feature_names_out(TEXT))
        scaled = pd.DataFrame(scaler.transform(part[FEATURES]), index=part.index,
                              columns=FEATURES)
        pd.concat([scaled, encoded, part[[TARGET]]], axis=1).to_parquet(
            out / f"{name}.parquet", compression="lz4")


SIDES = {"trainflow": run_trainflow, "polars": run_polars, "pandas_sklearn": run_pandas}


def child(side: str, source: Path, cap_gib: float | None) -> None:
    """One measured run in this process; prints wall seconds and peak RSS as JSON."""
    if side == "trainflow":  # imports outside the timed part, as for the other sides
        import trainflow.tasks.normalize  # noqa: F401
    import polars  # noqa: F401
    if cap_gib:
        with open("/proc/self/statm") as f:
            base = int(f.read().split()[0]) * resource.getpagesize()
        limit = base + int(cap_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    out = Path(tempfile.mkdtemp(dir=WORK, prefix=side))
    try:
        start = time.perf_counter()
        SIDES[side](source, out)
        seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(out, ignore_errors=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "peak_rss_gib": peak / 2**30}))


def measure(side: str, source: Path, cap_gib: float | None = None) -> dict:
    command = [sys.executable, __file__, "--child", side, "--source", str(source)]
    if cap_gib:
        command += ["--cap-gib", str(cap_gib)]
    env = {**os.environ, "POLARS_MAX_THREADS": os.environ.get("POLARS_MAX_THREADS", "2")}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        return {"failed": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cap-gib", type=float, default=None)
    parser.add_argument("--child", choices=sorted(SIDES))
    parser.add_argument("--source", type=Path)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.source, args.cap_gib)
    source = generate(args.rows)
    runs = {side: [measure(side, source) for _ in range(args.runs)]
            for side in ("trainflow", "polars", "pandas_sklearn")}
    best = {side: min(r["seconds"] for r in rs) for side, rs in runs.items()}
    result = {"rows": args.rows, "file_mib": round(source.stat().st_size / 2**20),
              "best_s": {k: round(v, 2) for k, v in best.items()},
              "peak_rss_gib": {k: round(max(r["peak_rss_gib"] for r in rs), 2)
                               for k, rs in runs.items()},
              "pandas_over_trainflow": round(best["pandas_sklearn"] / best["trainflow"], 2),
              "trainflow_over_polars": round(best["trainflow"] / best["polars"], 2)}
    if args.cap_gib:
        import polars as pl

        in_memory = pl.read_parquet(source).estimated_size() / 2**30
        result["capped"] = {"cap_gib_above_imports": args.cap_gib,
                            "table_in_memory_gib": round(in_memory, 2),
                            "trainflow": measure("trainflow", source, args.cap_gib),
                            "polars_eager_read": measure("eager", source, args.cap_gib)}
    print(json.dumps(result, indent=1))


def run_eager_read(source: Path, out: Path) -> None:
    """Control for the capped run: reading the whole table into memory must fail under it."""
    import polars as pl

    pl.read_parquet(source).write_parquet(out / "copy.parquet")


SIDES["eager"] = run_eager_read

if __name__ == "__main__":
    main()
