"""Per-row latency of an exported model: eager torch, TorchScript and ONNX Runtime, 1 thread.

Trains each named shipped pipeline CI-sized through the real Prefect engine (latency depends on
the architecture, not on how well it learned), exports its package with `trainflow export`
(TorchScript and ONNX; the folded data steps are inside every contender), then times the same
float32 input batches through

- eager torch: the module export traces (trainflow.export.build), under inference_mode;
- TorchScript: the exported file, loaded with torch.jit.load;
- ONNX Runtime: the exported file, CPUExecutionProvider, intra_op_num_threads=1.

Method (benchmarks/harness.py): threads pinned to one (torch intra- and inter-op, ORT). Each
round times every contender once (CALLS calls of one batch), in an order rotated round by round,
so that a change in the machine's load reaches all contenders alike; a fixed number of rounds;
wall and CPU time; the median per row over rounds, and each contender's median ratio to eager
torch over the paired rounds with a 95 % bootstrap interval (2,000 resamples, fixed seed). The
load average (before and after), the CPU model and its flags are printed with the results.

    .venv/bin/pip install -e '.[onnx]'
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/predict_latency.py [pipeline ...] [--rounds 40]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import harness
from isolated_prefect import isolate  # noqa: E402  (before Prefect is imported)

_HOME = isolate()

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


def machine() -> dict:
    return {**harness.header("predict_latency"), "onnxruntime": onnxruntime.__version__}


def package_of(name: str, folder: Path) -> Path:
    spec = load_spec(
        ROOT / "pipelines" / f"{name}.yaml",
        [f"outputs.store={folder / 'store'}", f"outputs.runs={folder / 'runs'}", *SMALL],
    )
    return Path(run_pipeline(spec)["package"])


def contenders(package: Path, folder: Path) -> tuple[dict, object]:
    built = build(load_package(package))
    export_model(package, "torchscript", folder / "model.pt")
    export_model(package, "onnx", folder / "model.onnx")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    session = onnxruntime.InferenceSession(
        str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    scripted = torch.jit.load(str(folder / "model.pt"))
    return {
        "eager torch": lambda x: built.module(x),
        "TorchScript": lambda x: scripted(x),
        "ONNX Runtime": lambda x: session.run(["probabilities"], {"features": x.numpy()}),
    }, built


@torch.inference_mode()
def rounds(run: dict, x: torch.Tensor, calls: int, count: int) -> dict[str, list]:
    """Each contender's wall and CPU seconds per row, one Sample per round, interleaved."""
    for fn in run.values():  # warm-up: first-call allocations, ORT's graph preparation
        for _ in range(5):
            fn(x)

    def timed(fn):
        def once():
            sample, _ = harness.measure(lambda: [fn(x) for _ in range(calls)])
            rows = calls * len(x)
            return harness.Sample(sample.wall_s / rows, sample.cpu_s / rows)

        return once

    return harness.interleave({name: timed(fn) for name, fn in run.items()}, count, warmup=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipelines", nargs="*", default=list(PIPELINES))
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    harness.pin_threads(1)
    report = {"before": machine(), "rounds": args.rounds, "calls": CALLS, "results": []}
    with tempfile.TemporaryDirectory(prefix="trainflow-latency-") as tmp:
        for name in args.pipelines:
            folder = Path(tmp) / name
            run, built = contenders(package_of(name, folder), folder)
            for batch in BATCHES:
                x = example(built, batch, seed=batch)
                summary = harness.summarize(
                    rounds(run, x, CALLS[batch], args.rounds), "eager torch"
                )
                for contender, row in summary.items():
                    ratio = row.get("wall_ratio", {"median": 1.0, "low": 1.0, "high": 1.0})
                    cpu = row.get("cpu_ratio", {"median": 1.0})
                    report["results"].append(
                        {
                            "pipeline": name,
                            "architecture": built.architectures[0],
                            "batch": batch,
                            "contender": contender,
                            "us_per_row": round(1e6 * row["wall_s"], 3),
                            "cpu_us_per_row": round(1e6 * row["cpu_s"], 3),
                            "vs_eager": round(ratio["median"], 3),
                            "vs_eager_95": [round(ratio["low"], 3), round(ratio["high"], 3)],
                            "cpu_vs_eager": round(cpu["median"], 3),
                        }
                    )
    print(json.dumps(report, indent=1))
    print("\n| pipeline | batch | contender | us per row | / eager (95 % interval) | CPU / eager |")
    print("|---|---|---|---|---|---|")
    for r in report["results"]:
        print(
            f"| {r['pipeline']} ({r['architecture']}) | {r['batch']} | {r['contender']} | "
            f"{r['us_per_row']} | {r['vs_eager']} ({r['vs_eager_95'][0]}-"
            f"{r['vs_eager_95'][1]}) | {r['cpu_vs_eager']} |"
        )
    harness.finish(
        "predict_latency",
        report["before"],
        {"rounds": args.rounds, "calls": CALLS, "results": report["results"]},
    )


if __name__ == "__main__":
    main()
