"""`trainflow predict` rows/s on a 1M-row CSV against a hand-written polars + torch script that
applies the same fitted steps, run interleaved in one session.

The model: breast_cancer_mlp (30 float features; clean: median fill, normalize: standard, an
MLP 64-32), trained once with a few epochs into a scratch folder (its package is the model).
The file: ROWS rows drawn from the breast cancer table with replacement, each value moved by
a little noise, 1 % of the values blank (so the fill does work). Both sides run as their own
process, start-up and imports included, and write a CSV with one predicted class per row:

    trainflow predict PACKAGE rows.csv --output out.csv    (its console script's main())
    the hand-written script below (hand_written)

Each process also reports its own split: the imports (trainflow's CLI and the modules the
command imports when it runs; torch and polars), and the work after them. The ratio is given
for the whole process and for the work alone.

The hand-written side takes the fitted values from the package's package.json (the fill
values, the normalize shift and scale), lays out the MLP as trainflow's builder does and loads
its weights (polars and torch only): read the CSV, fill, scale, forward in batches, argmax,
write. No input check, no batches through the file, no trainflow import. The outputs are
compared to be identical.

    .venv/bin/python benchmarks/predict_throughput.py [--rows 1000000] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(tempfile.gettempdir()) / "trainflow-bench-predict"
BIN = Path(sys.executable).parent
FORWARD = 65_536  # rows per forward pass on the hand-written side


def train_package() -> Path:
    """The package of a short breast_cancer_mlp run (made once, reused)."""
    import yaml

    marker = WORK / "package.txt"
    if marker.is_file() and Path(marker.read_text().strip()).is_dir():
        return Path(marker.read_text().strip())
    WORK.mkdir(parents=True, exist_ok=True)
    spec = yaml.safe_load((ROOT / "pipelines" / "breast_cancer_mlp.yaml").read_text())
    for section in ("ensemble", "compress"):
        spec.pop(section)
    spec.update(evaluate={}, outputs={"store": str(WORK / "store"), "runs": str(WORK / "runs")})
    spec["train"]["epochs"] = 10
    (WORK / "spec.yaml").write_text(yaml.safe_dump(spec))
    done = subprocess.run(
        [str(BIN / "trainflow"), "run", str(WORK / "spec.yaml")],
        cwd=WORK,
        capture_output=True,
        text=True,
        check=True,
    )
    package = json.loads(done.stdout[done.stdout.index("{") :])["package"]
    marker.write_text(package)
    return Path(package)


def generate(rows: int) -> Path:
    import numpy as np
    import polars as pl
    from sklearn.datasets import load_breast_cancer

    path = WORK / f"rows-{rows}.csv"
    if path.exists():
        return path
    bunch = load_breast_cancer()
    rng = np.random.default_rng(0)
    data = bunch.data[rng.integers(0, len(bunch.data), rows)]
    data = data * rng.normal(1.0, 0.02, data.shape)
    frame = pl.DataFrame(data, schema=[str(n) for n in bunch.feature_names])
    frame = frame.with_columns(
        pl.when(pl.lit(rng.random(rows) < 0.01)).then(None).otherwise(pl.col(c)).alias(c)
        for c in frame.columns
    )
    frame.write_csv(path)
    return path


def hand_written(package: Path, data: Path, output: Path) -> Iterator[None]:
    """What a user would write with the package's fitted values in hand: polars and torch
    only (trainflow is not imported, so its start-up is not paid)."""
    import numpy as np
    import polars as pl
    import torch
    from torch import nn

    yield  # imports done
    info = json.loads((package / "package.json").read_text())
    steps = [*info["steps"], *info["members"][0]["steps"]]
    fill = next(s["state"]["fill"] for s in steps if s["type"] == "clean")
    scale = next(s["state"] for s in steps if s["type"] == "normalize")
    features = info["table_schema"]["features"]
    folder = package / info["members"][0]["folder"]
    arch = json.loads((folder / "model.json").read_text())["model"]
    layers, width = [nn.Flatten()], len(features)  # trainflow's mlp, as its builder lays it
    for units in arch["units"]:
        layers += [nn.Linear(width, units), nn.ReLU(), nn.Dropout(arch["dropout"])]
        width = units
    net = nn.Sequential(*layers, nn.Linear(width, len(info["classes"])))
    net.load_state_dict(torch.load(folder / "best.pt", weights_only=True)["model"])
    net.eval()
    frame = pl.read_csv(
        data, columns=features, schema_overrides=dict.fromkeys(features, pl.Float64)
    )
    frame = frame.select(
        (pl.col(c).fill_null(fill[c]) - scale["shift"][c]) / scale["scale"][c] for c in features
    )
    x = frame.to_numpy().astype(np.float32)
    with torch.no_grad():
        best = np.concatenate(
            [
                net(torch.from_numpy(x[i : i + FORWARD])).argmax(1).numpy()
                for i in range(0, len(x), FORWARD)
            ]
        )
    labels = pl.Series("prediction", best).replace_strict(
        dict(enumerate(info["classes"])), return_dtype=pl.String
    )
    labels.to_frame().write_csv(output)


def trainflow_predict(package: Path, data: Path, output: Path) -> Iterator[None]:
    """`trainflow predict PACKAGE DATA --output OUTPUT`, as its console script runs it."""
    from trainflow.cli import main
    from trainflow.predictor import predict_command  # noqa: F401 - what the command imports
    from trainflow.scorefiles import read_rows  # noqa: F401

    yield  # imports done
    if main(["predict", str(package), str(data), "--output", str(output)]) != 0:
        raise SystemExit("trainflow predict failed")


SIDES = {"trainflow predict": trainflow_predict, "hand-written": hand_written}


def side(name: str, package: str, data: str, output: str) -> None:
    """One side in this process: prints its import and work times as JSON."""
    start = time.perf_counter()
    steps = SIDES[name](Path(package), Path(data), Path(output))
    next(steps)
    imported = time.perf_counter()
    next(steps, None)
    print(json.dumps({"imports": imported - start, "work": time.perf_counter() - imported}))


def timed(name: str, package: Path, data: Path) -> dict[str, float]:
    """Wall time of one side's process (interpreter start included) and its own split."""
    output = WORK / f"{name.split()[0]}.csv"
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--side", name, str(package), str(data), str(output)],
        check=True,
        cwd=WORK,
        capture_output=True,
        text=True,
        env={**os.environ, "PREFECT_HOME": str(WORK / "home")},
    )
    wall = time.perf_counter() - start
    return {"wall": wall, **json.loads(done.stdout.strip().splitlines()[-1])}


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in text.splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
        [],
    )
    wanted = [
        f
        for f in flags
        if f in ("avx", "avx2", "avx512f", "avx512_bf16", "amx_tile", "fma", "sse4_2")
    ]
    return f"{model}; {os.cpu_count()} CPUs; flags {' '.join(wanted)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--side", nargs=4, metavar=("NAME", "PACKAGE", "DATA", "OUTPUT"))
    args = parser.parse_args()
    if args.side:
        return side(*args.side)
    package, data = train_package(), generate(args.rows)
    print(
        f"package {package}\ndata {data} ({data.stat().st_size / 2**20:.0f} MiB, "
        f"{args.rows} rows)\ncpu {cpu_flags()}\ntorch threads {torch_threads()}, "
        f"polars threads {polars_threads()}\nload before {os.getloadavg()}"
    )
    runs: dict[str, list[dict]] = {name: [] for name in SIDES}
    for run in range(args.runs):  # interleaved, the first side alternating
        for name in list(SIDES) if run % 2 == 0 else list(SIDES)[::-1]:
            runs[name].append(timed(name, package, data))
        print(
            f"run {run + 1}: "
            + "; ".join(
                f"{n} {r[-1]['wall']:.2f} s (imports {r[-1]['imports']:.2f}, work "
                f"{r[-1]['work']:.2f})"
                for n, r in runs.items()
            )
            + f"; load {os.getloadavg()[0]:.2f}",
            flush=True,
        )
    same = (WORK / "trainflow.csv").read_bytes() == (WORK / "hand-written.csv").read_bytes()
    print(f"outputs identical: {same}")
    for part in ("wall", "work", "imports"):
        print(
            f"-- {part}" + (" (the process, interpreter start included)" if part == "wall" else "")
        )
        for name, values in runs.items():
            seconds = [r[part] for r in values]
            print(
                f"   {name}: median {statistics.median(seconds):.2f} s (min "
                f"{min(seconds):.2f}, max {max(seconds):.2f})"
                + (
                    f", {args.rows / statistics.median(seconds):,.0f} rows/s"
                    if part != "imports"
                    else ""
                )
            )
        if part != "imports":
            ratios = [h[part] / t[part] for t, h in zip(*runs.values())]
            print(
                f"   trainflow / hand-written throughput: median "
                f"{statistics.median(ratios):.3f} (min {min(ratios):.3f}, max "
                f"{max(ratios):.3f}) over {args.runs} interleaved runs"
            )
    print(f"load after {os.getloadavg()}")


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def polars_threads() -> int:
    import polars as pl

    return pl.thread_pool_size()


if __name__ == "__main__":
    main()
