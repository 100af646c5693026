"""Per-row latency of an exported model: eager torch, TorchScript and ONNX Runtime, 1 thread.

Trains each named shipped pipeline CI-sized through the real Prefect engine (latency depends on
the architecture, not on how well it learned), exports its package with `trainflow export`
(TorchScript and ONNX; the folded data steps are inside every contender), then times the same
float32 input batches through

- eager torch: the module export traces (trainflow.export.build), under inference_mode;
- TorchScript: the exported file, loaded with torch.jit.load;
- ONNX Runtime: the exported file, CPUExecutionProvider, intra_op_num_threads=1.

torch.set_num_threads(1) and set_num_interop_threads(1). Each round times every contender once
(CALLS calls of one batch), in an order rotated round by round, so that a change in the
machine's load reaches all contenders alike; a fixed number of rounds; the median per row over
rounds, and a bootstrap interval (2,000 resamples of the rounds) of each contender's median
over eager torch's. The load average and the CPU's flags are printed with the results.

    .venv/bin/pip install -e '.[onnx]'
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/predict_latency.py [pipeline ...] [--rounds 40]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from isolated_prefect import isolate  # noqa: E402  (before Prefect is imported)

_HOME = isolate()

import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402
import torch  # noqa: E402

from trainflow.export import build, example, export_model  # noqa: E402
from trainflow.package import load_package  # noqa: E402
from trainflow.runtime import run_pipeline  # noqa: E402
from trainflow.spec.pipeline import load_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ("breast_cancer_mlp", "digits_cnn", "sequences_gru")
SMALL = ["train.epochs=1", "evaluate.cv=null", "ensemble=null", "compress={}"]
BATCHES = (1, 256)
CALLS = {1: 200, 256: 10}  # calls per contender per round: a few ms to tens of ms each
FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8")


def machine() -> dict:
    info = {"load_average": os.getloadavg(), "cpus": os.cpu_count(),
            "processor": platform.processor(), "torch": torch.__version__,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "onnxruntime": onnxruntime.__version__}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set(fields.get("flags", "").split())
    info["model_name"] = fields.get("model name", "")
    info["flags"] = [f for f in FLAGS if f in flags]
    return info


def package_of(name: str, folder: Path) -> Path:
    spec = load_spec(ROOT / "pipelines" / f"{name}.yaml",
                     [f"outputs.store={folder / 'store'}", f"outputs.runs={folder / 'runs'}",
                      *SMALL])
    return Path(run_pipeline(spec)["package"])


def contenders(package: Path, folder: Path) -> tuple[dict, object]:
    built = build(load_package(package))
    export_model(package, "torchscript", folder / "model.pt")
    export_model(package, "onnx", folder / "model.onnx")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), options,
                                           providers=["CPUExecutionProvider"])
    scripted = torch.jit.load(str(folder / "model.pt"))
    return {"eager torch": lambda x: built.module(x),
            "TorchScript": lambda x: scripted(x),
            "ONNX Runtime": lambda x: session.run(["probabilities"], {"features": x.numpy()}),
            }, built


@torch.inference_mode()
def rounds(run: dict, x: torch.Tensor, calls: int, count: int) -> dict[str, list[float]]:
    """Seconds per row of each contender, one figure per round, interleaved."""
    for fn in run.values():  # warm-up: first-call allocations, ORT's graph preparation
        for _ in range(5):
            fn(x)
    names, times = list(run), {name: [] for name in run}
    for index in range(count):
        for name in names[index % len(names):] + names[:index % len(names)]:
            start = time.perf_counter()
            for _ in range(calls):
                run[name](x)
            times[name].append((time.perf_counter() - start) / (calls * len(x)))
    return times


def ratio_interval(a: list[float], b: list[float], seed: int = 0) -> tuple[float, float]:
    """95 % bootstrap interval of median(a) / median(b), resampling the rounds (paired)."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(a), np.asarray(b)
    picks = rng.integers(0, len(a), (2000, len(a)))
    ratios = np.median(a[picks], axis=1) / np.median(b[picks], axis=1)
    return float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipelines", nargs="*", default=list(PIPELINES))
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    report = {"before": machine(), "rounds": args.rounds, "calls": CALLS, "results": []}
    with tempfile.TemporaryDirectory(prefix="trainflow-latency-") as tmp:
        for name in args.pipelines:
            folder = Path(tmp) / name
            run, built = contenders(package_of(name, folder), folder)
            for batch in BATCHES:
                x = example(built, batch, seed=batch)
                times = rounds(run, x, CALLS[batch], args.rounds)
                eager = times["eager torch"]
                for contender, seconds in times.items():
                    low, high = ratio_interval(seconds, eager)
                    report["results"].append({
                        "pipeline": name, "architecture": built.architectures[0],
                        "batch": batch, "contender": contender,
                        "us_per_row": round(1e6 * float(np.median(seconds)), 3),
                        "vs_eager": round(float(np.median(seconds) / np.median(eager)), 3),
                        "vs_eager_95": [round(low, 3), round(high, 3)]})
    report["after"] = {"load_average": os.getloadavg()}
    print(json.dumps(report, indent=1))
    print("\n| pipeline | batch | contender | us per row | / eager (95 % interval) |")
    print("|---|---|---|---|---|")
    for r in report["results"]:
        print(f"| {r['pipeline']} ({r['architecture']}) | {r['batch']} | {r['contender']} | "
              f"{r['us_per_row']} | {r['vs_eager']} ({r['vs_eager_95'][0]}-"
              f"{r['vs_eager_95'][1]}) |")


if __name__ == "__main__":
    main()
