"""clean + split + encode + normalize on a generated Parquet file: trainflow against the same
operations in pandas + scikit-learn and in hand-written polars, plus a run under a memory cap.

The file: ROWS rows x 20 columns (17 float features with 2 % missing, 2 text categories, a
3-class label), 1 % duplicated rows. Every side does the same work and writes train/val/test
Parquet files: drop unlabelled rows, fill numbers with the median and text with the mode (over
the labelled, de-duplicated rows), drop duplicate rows, stratified split 65/15/20 (pandas:
scikit-learn's train_test_split, as pandas users write it; polars: rows ranked at random within
their class by a window expression; trainflow: the same draws as scikit-learn's), one-hot encode
the text columns and standardize the numbers with statistics of the training part; the outputs
are checked to agree. trainflow runs its tasks' functions (`.fn`: the Prefect engine's fixed
per-task cost is measured in benchmarks/rerun.py), each storing its artifact as trainflow always
does. Each side runs in its own process (imports done before its clock starts), which reports
its wall time, its CPU time (all its threads) and its peak RSS.

Method (benchmarks/harness.py): the machine is printed (load average before and after, CPU
model and flags); threads are pinned (polars' pool to POLARS_MAX_THREADS, default 2; the
OpenMP/BLAS pools to 1); the sides run once per run, interleaved in a rotated order, after one
warm-up round, for a fixed --runs; the result is the median of the per-run ratios (each side
against hand-written polars) with a 95 % bootstrap interval, for wall and for CPU time.

    .venv/bin/python benchmarks/tabular_prep.py [--rows 5000000] [--runs 5] [--cap-gib 1.0]
        [--sides trainflow polars pandas_sklearn]

`--cap-gib` also runs trainflow's steps in a memory cgroup of that size (needs root and cgroup
v1; the whole process, imports and page cache included), smaller than the table in memory, with
the statistics that stream (mean fill, no duplicate search): it completes, while reading the
table into memory under the same cap is killed.
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
from pathlib import Path

import harness
import numpy as np

FEATURES = [f"f{i:02d}" for i in range(17)]
TEXT = ["region", "plan"]
TARGET = "label"
PARTS = ("train", "val", "test")
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
    columns["plan"] = rng.choice(["basic", "plus", "pro", "team"], base, p=[0.5, 0.3, 0.15, 0.05])
    columns[TARGET] = rng.choice(["a", "b", "c"], base, p=[0.7, 0.2, 0.1])
    df = pl.DataFrame(columns).with_columns(pl.col(FEATURES).fill_nan(None))
    df = pl.concat([df, df.sample(rows - base, seed=0)])  # 1 % exact duplicates
    df.write_parquet(path, row_group_size=250_000)
    return path


def _trainflow_steps(source: Path, out: Path, **clean_settings) -> Path:
    """ingest, clean, split, encode, normalize, then `materialize` (the views' rows written)."""
    from trainflow.steps import materialize
    from trainflow.tasks.clean import CleanParams, clean
    from trainflow.tasks.encode import EncodeParams, encode
    from trainflow.tasks.ingest import FileSource, ingest
    from trainflow.tasks.normalize import NormalizeParams, normalize
    from trainflow.tasks.split import SplitParams, split

    store = str(out / "store")
    ref = ingest.fn(FileSource(type="parquet", path=str(source), target=TARGET), store)
    ref = clean.fn(ref, CleanParams(type="clean", **clean_settings), 0, store)
    ref = split.fn(ref, SplitParams(type="split", validation=0.15, test=0.2), 0, store)
    ref = encode.fn(ref, EncodeParams(type="encode"), 0, store)
    ref = normalize.fn(ref, NormalizeParams(type="normalize"), 0, store)
    return materialize(ref, store).path


def run_trainflow(source: Path, out: Path) -> dict[str, Path]:
    stored = _trainflow_steps(source, out, missing="median")
    return {name: stored / f"{name}.parquet" for name in PARTS}


def run_trainflow_streaming(source: Path, out: Path) -> dict[str, Path]:
    """The same steps with only streamable statistics (mean fill, no duplicate search: an exact
    median and a duplicate search hold a whole column or row set in memory)."""
    _trainflow_steps(source, out, missing="mean", drop_duplicates=False)
    return {}


def _sklearn_split_rows(labels: np.ndarray) -> dict[str, np.ndarray]:
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    rest, test = train_test_split(index, test_size=0.2, random_state=0, stratify=labels)
    train, val = train_test_split(rest, test_size=0.15 / 0.8, random_state=0, stratify=labels[rest])
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def _polars_split_rows(lf) -> dict[str, np.ndarray]:
    """Stratified by ranking rows randomly within their class (a window expression)."""
    import polars as pl

    rank = pl.int_range(pl.len()).shuffle(seed=0).over(TARGET)
    size = pl.len().over(TARGET)
    n_test = (size * 0.2).ceil()
    n_val = ((size - n_test) * 0.15 / 0.8).ceil()
    keys = (
        lf.select(TARGET)
        .with_row_index("row")
        .with_columns(
            pl.when(rank < n_test)
            .then(2)
            .when(rank < n_test + n_val)
            .then(1)
            .otherwise(0)
            .alias("part")
        )
        .collect()
    )
    return {
        name: keys.filter(pl.col("part") == k)["row"].to_numpy()
        for k, name in enumerate(("train", "val", "test"))
    }


def run_polars(source: Path, out: Path) -> dict[str, Path]:
    import polars as pl

    lf = (
        pl.scan_parquet(source)
        .filter(pl.col(TARGET).is_not_null())
        .with_columns(pl.col(FEATURES).fill_nan(None))
    )
    deduped = lf.unique(maintain_order=True).collect()  # fill statistics of the rows that stay
    fill = deduped.select(
        *(pl.col(c).median() for c in FEATURES),
        *(pl.col(c).drop_nulls().mode().sort().first() for c in TEXT),
    ).row(0, named=True)
    df = deduped.with_columns(pl.col(c).fill_null(v) for c, v in fill.items()).unique(
        maintain_order=True
    )
    del deduped
    parts = {k: df[v] for k, v in _polars_split_rows(df.lazy()).items()}
    stats = (
        parts["train"]
        .select(
            *(pl.col(c).unique().sort().implode().alias(c) for c in TEXT),
            *(pl.col(c).mean().alias(f"mean:{c}") for c in FEATURES),
            *(pl.col(c).std(ddof=0).alias(f"std:{c}") for c in FEATURES),
        )
        .row(0, named=True)
    )
    paths = {}
    for name, part in parts.items():
        part = part.with_columns(
            *((pl.col(c) - stats[f"mean:{c}"]) / stats[f"std:{c}"] for c in FEATURES),
            *((pl.col(c) == v).cast(pl.Float32).alias(f"{c}={v}") for c in TEXT for v in stats[c]),
        ).drop(TEXT)
        paths[name] = out / f"{name}.parquet"
        part.write_parquet(paths[name], compression="lz4")
    return paths


def run_pandas(source: Path, out: Path) -> dict[str, Path]:
    import pandas as pd
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    df = pd.read_parquet(source)
    df = df[df[TARGET].notna()]
    kept = df.drop_duplicates()  # fill statistics of the rows that stay
    df = df.fillna(
        {
            **{c: kept[c].median() for c in FEATURES},
            **{c: kept[c].mode().sort_values().iloc[0] for c in TEXT},
        }
    )
    del kept
    df = df.drop_duplicates().reset_index(drop=True)
    rows = _sklearn_split_rows(df[TARGET].to_numpy())
    parts = {k: df.iloc[v] for k, v in rows.items()}
    encoder = OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype=np.float32)
    scaler = StandardScaler()
    encoder.fit(parts["train"][TEXT])
    scaler.fit(parts["train"][FEATURES])
    paths = {}
    for name, part in parts.items():
        encoded = pd.DataFrame(
            encoder.transform(part[TEXT]),
            index=part.index,
            columns=encoder.get_feature_names_out(TEXT),
        )
        scaled = pd.DataFrame(scaler.transform(part[FEATURES]), index=part.index, columns=FEATURES)
        paths[name] = out / f"{name}.parquet"
        pd.concat([scaled, encoded, part[[TARGET]]], axis=1).to_parquet(
            paths[name], compression="lz4"
        )
    return paths


def summarize(paths: dict[str, Path]) -> dict:
    """What the outputs hold, to check that every side did the same work: rows per part and,
    for the validation part, the sum of every standardized feature."""
    import polars as pl

    val = pl.read_parquet(paths["val"], columns=FEATURES)
    return {
        "rows": {
            name: pl.scan_parquet(path).select(pl.len()).collect().item()
            for name, path in paths.items()
        },
        "val_sums": [float(v) for v in val.sum().row(0)],
    }


def check_same_work(summaries: dict[str, dict]) -> dict:
    """trainflow and pandas + scikit-learn draw scikit-learn's split on the same rows, so their
    parts and values match; the polars side ranks rows within their class, so its parts have
    the same sizes up to rounding."""
    ours, polars = summaries["trainflow"], summaries["polars"]
    assert sum(polars["rows"].values()) == sum(ours["rows"].values())
    assert all(abs(polars["rows"][k] - n) <= 3 for k, n in ours["rows"].items()), polars["rows"]
    if "pandas_sklearn" not in summaries:
        return {"rows": ours["rows"], "same_output": "polars: same rows per part up to rounding"}
    pandas = summaries["pandas_sklearn"]
    assert ours["rows"] == pandas["rows"], (ours["rows"], pandas["rows"])
    assert np.allclose(ours["val_sums"], pandas["val_sums"], rtol=1e-6, atol=1e-3)
    return {
        "rows": ours["rows"],
        "same_output": "trainflow = pandas + scikit-learn (rows, "
        "values); polars: same rows per part up to rounding",
    }


def run_eager_read(source: Path, out: Path) -> dict[str, Path]:
    """Control for the capped run: reading the whole table into memory must fail under it."""
    import polars as pl

    pl.read_parquet(source).write_parquet(out / "copy.parquet")
    return {}


SIDES = {
    "trainflow": run_trainflow,
    "polars": run_polars,
    "pandas_sklearn": run_pandas,
    "trainflow_streaming": run_trainflow_streaming,
    "eager_read": run_eager_read,
}
CGROUP = Path("/sys/fs/cgroup/memory/trainflow-bench")


def child(side: str, source: Path) -> None:
    """One measured run in this process; prints wall seconds and peak RSS as JSON."""
    # Every side's imports happen before the timed part: the benchmark measures the work.
    if side.startswith("trainflow"):  # the steps it runs (the registry imports them lazily)
        from trainflow.tasks import clean, encode, ingest, normalize, split  # noqa: F401
    if side == "pandas_sklearn":
        import pandas  # noqa: F401
        import sklearn.model_selection  # noqa: F401
        import sklearn.preprocessing  # noqa: F401
    import polars  # noqa: F401

    out = Path(tempfile.mkdtemp(dir=WORK, prefix=side))
    try:
        sample, paths = harness.measure(lambda: SIDES[side](source, out))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        summary = summarize(paths) if paths else None
    finally:
        shutil.rmtree(out, ignore_errors=True)
    keys = ("seconds", "cpu_s", "peak_rss_gib", "summary")
    print(json.dumps(dict(zip(keys, (sample.wall_s, sample.cpu_s, peak / 2**30, summary)))))


def _join_cgroup() -> None:
    (CGROUP / "cgroup.procs").write_text(str(os.getpid()))


def measure(side: str, source: Path, cap_gib: float | None = None) -> dict:
    """Run one side in a child process; with `cap_gib`, inside a memory cgroup of that size
    (page cache included), so going over the cap gets the child killed."""
    command = [sys.executable, __file__, "--child", side, "--source", str(source)]
    env = {**os.environ, "POLARS_MAX_THREADS": os.environ.get("POLARS_MAX_THREADS", "2")}
    setup = None
    if cap_gib:
        try:
            CGROUP.mkdir(exist_ok=True)
            (CGROUP / "memory.limit_in_bytes").write_text(str(int(cap_gib * 2**30)))
            (CGROUP / "memory.max_usage_in_bytes").write_text("0")  # reset the peak
        except OSError as exc:
            return {
                "skipped": f"a memory cap needs a writable cgroup v1 memory controller "
                f"(run as root): {exc}"
            }
        setup = _join_cgroup
    done = subprocess.run(command, capture_output=True, text=True, env=env, preexec_fn=setup)
    if done.returncode:
        reason = "killed: over the memory cap" if done.returncode == -9 else "failed"
        return {reason: done.stderr.strip().splitlines()[-1:]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if cap_gib:  # RSS counts mapped file pages the kernel may drop; the cgroup's peak is the cap's
        peak = int((CGROUP / "memory.max_usage_in_bytes").read_text())
        result["cgroup_peak_gib"] = peak / 2**30
    return result


def timed(sides: list[str], source: Path, runs: int, warmup: int) -> dict:
    """The sides interleaved per run (fixed run count): medians, paired ratios against
    hand-written polars, peak RSS, and the check that every side did the same work."""
    extra: dict[str, list[dict]] = {side: [] for side in sides}

    def contender(side: str):
        def one() -> harness.Sample:
            result = measure(side, source)
            if "seconds" not in result:
                raise RuntimeError(f"{side}: {result}")
            extra[side].append(result)
            return harness.Sample(result["seconds"], result["cpu_s"])

        return one

    samples = harness.interleave({side: contender(side) for side in sides}, runs, warmup)
    summary = harness.summarize(samples, "polars")
    print(harness.table(summary))
    kept = {side: results[warmup:] for side, results in extra.items()}
    out = {
        "baseline": "polars",
        "summary": summary,
        "peak_rss_gib": {
            side: round(max(r["peak_rss_gib"] for r in rs), 2) for side, rs in kept.items()
        },
    }
    if "trainflow" in sides:
        out["check"] = check_same_work({side: rs[0]["summary"] for side, rs in kept.items()})
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--sides",
        nargs="+",
        default=["trainflow", "polars", "pandas_sklearn"],
        choices=["trainflow", "polars", "pandas_sklearn"],
    )
    parser.add_argument("--cap-gib", type=float, default=None)
    parser.add_argument("--skip-timing", action="store_true", help="only the capped run")
    parser.add_argument("--child", choices=sorted(SIDES))
    parser.add_argument("--source", type=Path)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.source)
    polars_threads = os.environ.get("POLARS_MAX_THREADS", "2")
    harness.pin_threads(1)  # the OpenMP/BLAS pools (and polars', set again just below)
    os.environ["POLARS_MAX_THREADS"] = polars_threads  # each side's process reads it
    before = harness.header("tabular_prep")
    print(f"# each side: POLARS_MAX_THREADS={polars_threads}, OpenMP/BLAS pools 1", flush=True)
    source = generate(args.rows)
    result = {
        "rows": args.rows,
        "file_mib": round(source.stat().st_size / 2**20),
        "runs": args.runs,
    }
    if not args.skip_timing:
        sides = list(dict.fromkeys(["polars", *args.sides]))
        result.update(timed(sides, source, args.runs, args.warmup))
    if args.cap_gib:
        import polars as pl

        in_memory = pl.scan_parquet(source).collect().estimated_size() / 2**30
        result["capped"] = {
            "cap_gib": args.cap_gib,
            "table_in_memory_gib": round(in_memory, 2),
            "trainflow_streaming": measure("trainflow_streaming", source, args.cap_gib),
            "eager_read": measure("eager_read", source, args.cap_gib),
        }
    harness.finish("tabular_prep", before, result)


if __name__ == "__main__":
    main()
