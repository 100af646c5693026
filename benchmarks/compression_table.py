"""One table per model: every compressed variant trainflow builds today, measured in one run.

For digits_cnn.yaml and breast_cancer_mlp.yaml: the data steps and training as shipped but with
--epochs epochs (each task called bare through `.fn`, as benchmarks/prune_accuracy.py does), then
the variants of the trained network:

- fp32 eager; TorchScript (torch.jit.trace of the network, saved and loaded back);
- ONNX Runtime fp32 and ONNX Runtime static int8 (QDQ, per-channel): the network exported with
  torch.onnx (dynamo, dynamic batch) as benchmarks/static_int8_backends.py does, not the
  package's `trainflow export` file (that one also folds the data steps in);
- dynamic int8 (torch.ao) and static int8 (torch.ao FX, x86), as the quantize task builds them,
  calibrated on the same training batches as the ONNX Runtime static int8;
- QAT static int8: the same training with `train.qat: {start_epoch: epochs // 2 + 1}` (fake
  quantization for the second half, or from when early stopping ends the fp32 epochs), converted
  by the quantize task (its package);
- 50 % l1_unstructured and 50 % l1_structured, each through the prune task with
  --finetune-epochs of fine-tuning.

- the distilled student: a smaller network of the same family (STUDENTS) trained from the
  trained model by the distill task (compress.distill, its default temperature 4 and alpha 0.5),
  and its static int8 (torch.ao FX) as distill.quantize builds it.

Per variant: size of its weights file on disk (state dict, TorchScript or ONNX file),
parameters, FLOPs of one sample (torch.utils.flop_counter.FlopCounterMode; int8 and exported
variants are given the fp32 count, marked *, since the counter does not see their kernels),
accuracy on the validation and test parts, and CPU time (process time, all threads) per batch
at batch 1 and 256 on 1 and 2 threads (torch.set_num_threads; ONNX Runtime sessions with
intra_op_num_threads likewise). Method (benchmarks/harness.py): for each thread count and batch
size, every variant runs once per round (CALLS forward passes), round-robin in an order rotated
each round, after one warm-up round, for a fixed --runs; median per batch and a 95 % bootstrap
interval of the median over the rounds. On 2 threads the CPU time counts both threads
(spinning included), so it is the cost of a batch, not its wait. Load average before and
after, and the CPU flags, are printed with the tables.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/compression_table.py [--runs 5]
"""

from __future__ import annotations

import argparse
import copy
import logging
import random
import tempfile
import warnings
from pathlib import Path

import harness
import torch

from trainflow import channel_prune, compress, registry
from trainflow.engine.model_folder import load_model
from trainflow.spec.after_training import DynamicInt8Params, StaticInt8Params
from trainflow.spec.compress import DistillSpec
from trainflow.spec.pipeline import load_spec
from trainflow.spec.qat import QatSpec
from trainflow.tasks.distill import distill_model
from trainflow.tasks.prune import prune_model
from trainflow.tasks.quantize import quantize_calibrated, quantize_model
from trainflow.tasks.train import load_splits, train_model

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ("digits_cnn", "breast_cancer_mlp")
BATCHES = (1, 256)
THREADS = (1, 2)
# forward passes per variant per round: a few ms to tens of ms each
CALLS = {("digits_cnn", 1): 100, ("digits_cnn", 256): 4}
# 8 batches of 32 rows: breast_cancer's training part holds only 11 such batches
CALIBRATION = 8
CALLS |= {("breast_cancer_mlp", 1): 200, ("breast_cancer_mlp", 256): 200}
# the distilled students (about 14x and 8x fewer parameters) and their epochs: the tabular
# student needs 30 to come within a point of its teacher, the CNN 20 to match it
STUDENTS = {
    "digits_cnn": ({"type": "cnn", "channels": [8, 16], "hidden": 32}, 20),
    "breast_cancer_mlp": ({"type": "mlp", "hidden_layers": 1, "units": 16}, 30),
}


def trained(name: str, store: str, epochs: int):
    spec = load_spec(ROOT / "pipelines" / f"{name}.yaml", [f"train.epochs={epochs}"])
    shards = harness.prepared_shards(spec, store)
    return spec, shards, train_model.fn(shards, spec.model, spec.train, spec.seed, store)


def pruned(spec, shards, model, kind: str, epochs: int, store: str) -> torch.nn.Module:
    params = registry.PRUNERS[kind].params(type=kind, sparsity=0.5, finetune_epochs=epochs)
    ref = prune_model.fn(model, shards, params, spec.train, spec.seed, store)
    return load_model(ref)[0].cpu().eval()


def distilled(spec, shards, model, store: str) -> torch.nn.Module:
    """The student STUDENTS names, trained from `model` by the distill task."""
    student, epochs = STUDENTS[spec.name]
    params = DistillSpec(model=student, epochs=epochs)
    ref = distill_model.fn(model, shards, params, spec.train, spec.seed, store)
    return load_model(ref)[0].cpu().eval()


def onnx_files(net: torch.nn.Module, calibration: list, folder: Path) -> dict[str, Path]:
    """The network in ONNX (dynamic batch) and ONNX Runtime's static int8 of it."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter([{"x": x.numpy()} for x in calibration])

        def get_next(self):
            return next(self.rows, None)

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    fp32, int8 = folder / "fp32.onnx", folder / "int8.onnx"
    torch.onnx.export(
        copy.deepcopy(net).eval(),
        (calibration[0],),
        str(fp32),
        input_names=["x"],
        dynamo=True,
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        verbose=False,
    )
    quantize_static(
        str(fp32),
        str(int8),
        Batches(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
    )
    return {"ONNX Runtime fp32": fp32, "ONNX Runtime static int8": int8}


def ort_scorer(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    run = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run
    return lambda x: torch.from_numpy(run(None, {"x": x.numpy()})[0])


def qat_converted(spec, shards, static: StaticInt8Params, store: str) -> torch.nn.Module:
    """The same training with train.qat for its second half, converted by the quantize task
    (the package's int8 network)."""
    qat = QatSpec(start_epoch=spec.train.epochs // 2 + 1)
    train = spec.train.model_copy(update={"qat": qat})
    model = train_model.fn(shards, spec.model, train, spec.seed, store)
    return load_model(quantize_model.fn(model, shards, static, store))[0]


def variants(spec, shards, model, data, args, folder: Path) -> tuple[dict, dict, dict]:
    """name -> torch module (or ONNX file), name -> weights file size, name -> note."""
    net = load_model(model)[0].cpu().eval()
    static = StaticInt8Params(type="static_int8", calibration_batches=CALIBRATION)
    calibration = compress.calibration_batches(data["train"].x, static)
    traced = torch.jit.trace(copy.deepcopy(net), calibration[0])
    traced.save(str(folder / "model.pt"))
    built: dict = {
        "fp32 eager": net,
        "TorchScript": torch.jit.load(str(folder / "model.pt")),
        "dynamic int8": compress.quantize_dynamic_int8(net, DynamicInt8Params(type="dynamic_int8")),
        "static int8 (torch.ao FX)": quantize_calibrated(net, static, data["train"]),
        "QAT static int8 (torch.ao FX)": qat_converted(spec, shards, static, args.store),
        "50 % l1_unstructured": pruned(spec, shards, model, "l1_unstructured", args.ft, args.store),
        "50 % l1_structured": pruned(spec, shards, model, "l1_structured", args.ft, args.store),
        "distilled student": distilled(spec, shards, model, args.store),
    }
    student = built["distilled student"]  # distill.quantize: its static int8
    built["distilled, static int8 (torch.ao FX)"] = quantize_calibrated(
        student, static, data["train"]
    )
    sizes = {k: compress.size_on_disk(m) for k, m in built.items()}
    sizes["TorchScript"] = (folder / "model.pt").stat().st_size
    notes = {}
    try:
        for name, path in onnx_files(net, calibration, folder).items():
            # the dynamo exporter keeps the weights beside the graph (NAME.onnx.data)
            files = folder.glob(path.name + "*")
            built[name], sizes[name] = path, sum(f.stat().st_size for f in files)
    except Exception as exc:  # onnxruntime or onnxscript absent (the trainflow[onnx] extra)
        notes["ONNX Runtime"] = f"unavailable: {type(exc).__name__}: {str(exc)[:160]}"
    return built, sizes, notes


def counts(built: dict, shape: list[int]) -> dict[str, tuple[str, str]]:
    """name -> (parameters, FLOPs of one sample) as table text; * = the fp32 network's count."""
    fp32 = channel_prune.sizes(built["fp32 eager"], shape)
    student = channel_prune.sizes(built["distilled student"], shape)
    out = {}
    for name, m in built.items():
        if isinstance(m, torch.nn.Module) and not name.endswith("int8") and "int8 (" not in name:
            own = channel_prune.sizes(m, shape) if name != "TorchScript" else fp32
            params, flops = f"{own['parameters']:,}", f"{own['flops']:,}"
            if name == "TorchScript":
                flops += "*"
        else:
            base = student if name.startswith("distilled") else fp32  # (its int8: the student's)
            params, flops = f"{base['parameters']:,}*", f"{base['flops']:,}*"
        if "unstructured" in name:
            params += f" ({compress.sparsity(m):.0%} zero)"
        out[name] = (params, flops)
    return out


@torch.inference_mode()
def accuracy(score, split) -> float:
    logits = torch.cat([score(x) for x in split.x.split(256)])
    return float((logits.argmax(1) == split.y).float().mean())


def timed(score, batch: torch.Tensor, calls: int):
    @torch.inference_mode()
    def run():
        for _ in range(calls):
            score(batch)

    return lambda: harness.measure(run)[0]


def interval(values: list[float], resamples: int = harness.RESAMPLES) -> tuple[float, float]:
    """95 % bootstrap interval of the median (fixed seed, as harness.paired_ratio)."""
    rng = random.Random(harness.SEED)
    stats = sorted(harness.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return stats[int(0.025 * (resamples - 1))], stats[round(0.975 * (resamples - 1))]


def latencies(name: str, built: dict, x: torch.Tensor, runs: int) -> dict:
    """(threads, batch) -> variant -> CPU ms per batch: median, low, high, and the runs."""
    out: dict = {}
    for threads in THREADS:
        harness.pin_threads(threads)
        scorers = {
            k: ort_scorer(m, threads) if isinstance(m, Path) else m for k, m in built.items()
        }
        for batch in BATCHES:
            calls = CALLS[(name, batch)]
            rows = x[:batch] if len(x) >= batch else x.repeat(batch // len(x) + 1, 1)[:batch]
            samples = harness.interleave(
                {k: timed(s, rows, calls) for k, s in scorers.items()}, runs
            )
            cell = {}
            for k, runs_ in samples.items():
                ms = [s.cpu_s * 1000 / calls for s in runs_]
                wall = harness.median([s.wall_s * 1000 / calls for s in runs_])
                cell[k] = {"median": harness.median(ms), "interval": interval(ms), "runs": ms}
                cell[k]["wall_median"] = wall
            out[(threads, batch)] = cell
            print(f"# {name}: {threads} thread(s), batch {batch} done", flush=True)
    return out


def table(built: dict, sizes: dict, sizes_: dict, acc: dict, lat: dict) -> str:
    cells = [f"b{b} t{t}" for t in THREADS for b in BATCHES]
    lines = [
        "| variant | file KiB | parameters | FLOPs / sample | "
        + " | ".join(f"CPU ms {c}" for c in cells)
        + " | val acc | test acc |",
        "|---|" + "---|" * (5 + len(cells)),
    ]
    for name in built:
        times = []
        for t in THREADS:
            for b in BATCHES:
                r = lat[(t, b)][name]
                times.append(f"{r['median']:.4g} ({r['interval'][0]:.3g}-{r['interval'][1]:.3g})")
        params, flops = sizes_[name]
        lines.append(
            f"| {name} | {sizes[name] / 1024:.1f} | {params} | {flops} | "
            + " | ".join(times)
            + f" | {acc[name][0]:.4f} | {acc[name][1]:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (CI-sized)")
    parser.add_argument("--finetune-epochs", dest="ft", type=int, default=3)
    parser.add_argument("--pipelines", nargs="*", default=list(PIPELINES), choices=PIPELINES)
    args = parser.parse_args()
    harness.pin_threads(1)
    before = harness.header("compression_table")
    results = {}
    with tempfile.TemporaryDirectory() as store:
        args.store = store
        for name in args.pipelines:
            spec, shards, model = trained(name, store, args.epochs)
            data = load_splits(shards)
            folder = Path(store) / f"variants-{name}"
            folder.mkdir()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                built, sizes, notes = variants(spec, shards, model, data, args, folder)
                shape = list(data["test"].x.shape[1:])
                acc = {}
                for k, m in built.items():
                    score = ort_scorer(m, 1) if isinstance(m, Path) else m
                    acc[k] = (accuracy(score, data["val"]), accuracy(score, data["test"]))
                lat = latencies(name, built, data["test"].x, args.runs)
            print(
                f"\n## {name} ({args.epochs} epochs; CPU ms per batch, median (95 % interval) "
                f"over {args.runs} interleaved rounds; bN tM = batch N on M threads)\n"
            )
            print(table(built, sizes, counts(built, shape), acc, lat))
            if notes:
                print(f"notes: {notes}")
            results[name] = {
                "sizes_bytes": sizes,
                "accuracy_val_test": acc,
                "latency_ms": {f"t{t} b{b}": v for (t, b), v in lat.items()},
                "notes": notes,
            }
    harness.finish(
        "compression_table",
        before,
        {"runs": args.runs, "epochs": args.epochs, "finetune_epochs": args.ft, "models": results},
    )


if __name__ == "__main__":
    main()
