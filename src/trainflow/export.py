"""`trainflow export`: a model package as one ONNX, TorchScript or ExportedProgram file.

The graph takes the raw numeric feature columns (float32, missing as NaN) and returns class
probabilities: the fitted numeric steps run inside it (trainflow.folding), then the network,
then softmax, then an ensemble's rule (trainflow.export_graph); a regression's returns one
float per row, `prediction`, in the target's units (the inverse target scaling instead of
the softmax). Beside the file, `<file>.json`
(the sidecar) names the input columns in order, the classes, and what a serving runtime
must still do itself before the graph (text columns to codes). Every export is run right
after it is written (onnxruntime for ONNX, the saved TorchScript file, the ExportedProgram's
module) on a few rows and compared with the eager torch module; a file that does not
reproduce the model is never left at the output path.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainflow.engine.model_folder import build_from_folder
from trainflow.engine.target_scale import TargetScale, regression_of
from trainflow.export_graph import Exported, combination, output_section
from trainflow.folding import ExportError, Plan, build_prep, plan
from trainflow.models.multitask import MultiTask
from trainflow.package import Package, load_package
from trainflow.predictor import resolve_model
from trainflow.storage import TMP_PREFIX, atomic_write_text
from trainflow.tables import TableSchema

FORMATS = ("onnx", "torchscript", "exported_program")
INPUT = "features"
SIDECAR_FORMAT = 1
# largest |probability difference| an export may show against eager torch; a regression's
# numbers (the target's units) are held to it relative to max(1, |number|)
TOLERANCE = 1e-5
EXAMPLE_ROWS = 2  # the traced batch: a batch of 1 would let an exporter fix the batch size
CHECK_ROWS = (1, 7)  # batch sizes the written file is run on, other than the example's


@dataclass
class Built:
    package: Package
    module: Exported
    plan: Plan  # the first member's (every member has the same inputs and outside work)
    input_shape: list[int]  # per row: (columns,) or (C, H, W)
    architectures: list[str]
    scales: list[tuple[float, float]] | None = None  # a regression's target (mean, std)

    @property
    def output(self) -> str:
        return "prediction" if self.scales is not None else "probabilities"


def export_model(model: str | Path, fmt: str, output: str | Path) -> dict[str, Any]:
    """Export the package MODEL names (a folder, or a pipeline for its champion) to `output`
    and its sidecar to `<output>.json`; returns what was written and the check's result."""
    if fmt not in FORMATS:
        raise ExportError(
            f"export format {fmt!r} is not one trainflow writes ({', '.join(FORMATS)})"
        )
    built = build(load_package(resolve_model(model)))
    path = Path(output)
    if path.is_dir():
        raise ExportError(
            f"--output {path} is a folder: name the file to write "
            f"(for example {path / ('model.' + SUFFIX[fmt])})"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        difference = WRITERS[fmt](built, staged)
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)
    sidecar = describe(built, fmt, path, difference)
    atomic_write_text(sidecar_path(path), json.dumps(sidecar, indent=1) + "\n")
    return {
        "output": str(path),
        "sidecar": str(sidecar_path(path)),
        "format": fmt,
        "inputs": len(sidecar["input"]["columns"]),
        "classes": sidecar["output"]["classes"],
        "outside": [step["do"] for step in built.plan.outside],
        "check": sidecar["check"],
    }


SUFFIX = {"onnx": "onnx", "torchscript": "pt", "exported_program": "pt2"}


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def build(package: Package) -> Built:
    """The eager module an export traces: every member's folded steps and network."""
    info = package.info
    combine = combination(info.combine, info.combine_state, len(info.members), str(package.path))
    table = TableSchema(**info.table_schema)
    plans = [plan(table, info.input.columns, [*info.steps, *m.steps]) for m in info.members]
    first = plans[0]
    for index, other in enumerate(plans[1:], start=1):
        if other.inputs != first.inputs or other.outside != first.outside:
            raise ExportError(
                f"{package.path}: the ensemble's members were fitted on different columns "
                f"(member {index} saw other categories or fill values than member 0), so no "
                "single input layout feeds them all: export one fold's package, or the "
                "run's model package"
            )
    shape = table.image_shape or table.feature_shape or [len(first.features)]
    width = list(table.image_shape) if table.image_shape else [len(first.inputs)]
    nets, names = zip(*(_network(package.member_folder(m)) for m in info.members))
    preps = [build_prep(p, first.inputs, shape) for p in plans]
    temperature = info.decision.temperature if info.decision else 1.0
    scales = _target_scales(package) if table.task == "regression" else None
    module = Exported(preps, list(nets), temperature, combine, scales).eval()
    return Built(package, module, first, width, list(names), scales)


def _target_scales(package: Package) -> list[tuple[float, float]]:
    """Each member's fitted target scaling (its model.json), as the predictor reads it."""
    scales = []
    for member in package.info.members:
        described = json.loads((package.member_folder(member) / "model.json").read_text())
        regression = regression_of(described)
        scale = regression.scale if regression else TargetScale()
        scales.append((scale.mean, scale.std))
    return scales


def _network(folder: Path) -> tuple[nn.Module, str]:
    described = json.loads((folder / "model.json").read_text())
    net = build_from_folder(folder, "model package")
    name = described["model"]["type"]
    if "quantized" in described:
        name += f" ({described['quantized']} quantized)"
    # A multi-task model's forward is its main head; export only that.
    return (net.model if isinstance(net, MultiTask) else net), name


# ---- writers: each writes `staged`, runs what it wrote, returns the largest difference --


def _write_onnx(built: Built, staged: Path) -> float:
    try:
        import onnxruntime
    except ImportError:
        raise ExportError(
            "ONNX export needs onnx, onnxscript and onnxruntime: pip install 'trainflow[onnx]'"
        ) from None
    with _exporting(built, "onnx"):
        program = torch.onnx.export(
            built.module,
            (example(built, EXAMPLE_ROWS),),
            dynamo=True,
            verbose=False,
            input_names=[INPUT],
            output_names=[built.output],
            dynamic_shapes=({0: "batch"},),
        )
        program.save(str(staged), external_data=False)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(staged), options, providers=["CPUExecutionProvider"])
    return _checked(
        built,
        "onnx",
        lambda x: torch.from_numpy(session.run([built.output], {INPUT: x.numpy()})[0]),
    )


def _write_torchscript(built: Built, staged: Path) -> float:
    with _exporting(built, "torchscript"), torch.no_grad():
        traced = torch.jit.trace(built.module, (example(built, EXAMPLE_ROWS),), check_trace=False)
        traced.save(str(staged))
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript: said in the README
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = torch.jit.load(str(staged))  # the written file, as a runtime loads it
    return _checked(built, "torchscript", loaded)


def _write_exported_program(built: Built, staged: Path) -> float:
    batch = torch.export.Dim("batch", min=1)
    with _exporting(built, "exported_program"):
        try:  # non-strict traces Python as it runs; strict (dynamo) handles what it cannot
            program = torch.export.export(
                built.module,
                (example(built, EXAMPLE_ROWS),),
                dynamic_shapes=({0: batch},),
                strict=False,
            )
        except Exception:  # noqa: BLE001 - the strict attempt reports its own failure
            program = torch.export.export(
                built.module,
                (example(built, EXAMPLE_ROWS),),
                dynamic_shapes=({0: batch},),
                strict=True,
            )
        torch.export.save(program, str(staged))
    # torch.export.load may fall back to unpickling (weights_only=False): trainflow never
    # calls it, and checks the program it saved instead.
    return _checked(built, "exported_program", program.module())


WRITERS = {
    "onnx": _write_onnx,
    "torchscript": _write_torchscript,
    "exported_program": _write_exported_program,
}


@contextlib.contextmanager
def _exporting(built: Built, fmt: str):
    """An exporter's failure as one ExportError naming the architecture and what stopped it
    (the exporters print progress and warnings of their own: quiet while they run)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - an exporter's own error, named for the user
        raise ExportError(_refusal(built, fmt, exc)) from None
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _refusal(built: Built, fmt: str, exc: BaseException) -> str:
    what = f"the {', '.join(sorted(set(built.architectures)))} model of {built.package.path}"
    if any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in built.module.modules()):
        return (
            f"{what} cannot be exported as {fmt}: its dynamic int8 Linear layers "
            "(torch.ao quantization) hold packed int8 parameters that torch.export "
            f"cannot trace ({type(exc).__name__}), and both ONNX (dynamo) and "
            "exported_program start from torch.export; use --format torchscript, or "
            'export the float model it was quantized from (the run\'s "package")'
        )
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    others = ", ".join(f for f in FORMATS if f != fmt)
    return (
        f"{what} cannot be exported as {fmt}: the exporter stopped with "
        f"{type(exc).__name__}: {first}; try --format {others}"
    )


def _checked(built: Built, fmt: str, run) -> float:
    """Run the written export on batches of other sizes than the traced one and compare
    its probabilities (a regression's numbers, relative) with the eager module's; the
    largest difference."""
    worst = 0.0
    for rows in CHECK_ROWS:
        x = example(built, rows, seed=rows)
        with torch.no_grad():
            expected = built.module(x)
            try:
                got = run(x)
            except Exception as exc:  # noqa: BLE001 - a program that fails on a batch size
                raise ExportError(_fixed_batch(built, fmt, rows, exc)) from None
        if got.shape != expected.shape:
            raise ExportError(_fixed_batch(built, fmt, rows, f"shape {tuple(got.shape)}"))
        scale = expected.abs().clamp_min(1.0) if built.scales is not None else 1.0
        difference = float(np.nanmax(((got - expected) / scale).abs().numpy(), initial=0.0))
        if difference > TOLERANCE or not torch.equal(got.isnan(), expected.isnan()):
            raise ExportError(
                f"the {fmt} export of {built.package.path} gives {built.output} "
                f"{difference:.2g} away from the model's on {rows} row(s) (more "
                f"than {TOLERANCE:g}); nothing was written"
            )
        worst = max(worst, difference)
    return worst


def _fixed_batch(built: Built, fmt: str, rows: int, problem: object) -> str:
    first = (str(problem).strip().splitlines() or [type(problem).__name__])[0][:200]
    return (
        f"the {fmt} export of the {', '.join(sorted(set(built.architectures)))} model of "
        f"{built.package.path} does not run on a batch of {rows} row(s) ({first}): the "
        f"exporter fixed the batch size of its example ({EXAMPLE_ROWS} rows), as "
        "TorchScript tracing does for a network whose forward reads a tensor's length "
        f"(the transformer); use --format {' or '.join(f for f in FORMATS if f != fmt)}"
    )


def example(built: Built, rows: int, seed: int = 0) -> torch.Tensor:
    """Raw inputs in the range the fitted steps expect (centre and spread from a column's
    first scaling or clip bounds), a missing value where a step fills one, 0/1 for one-hot
    columns: rows that pass through every branch of the folded steps."""
    rng = np.random.default_rng(seed)
    p = built.plan
    names = [f"channel_{c}" for c in range(p.image_shape[0])] if p.image_shape else p.inputs
    centre, spread = dict.fromkeys(names, 0.0), dict.fromkeys(names, 1.0)
    filled: set[str] = set()
    for kind, per_column in reversed(p.ops):  # the first operation on a column wins
        for column, value in per_column.items():
            if kind == "affine":
                centre[column], spread[column] = value[0], value[1]
            elif kind == "clip" and np.isfinite(value[:2]).all():
                centre[column], spread[column] = (value[0] + value[1]) / 2, value[1] - value[0]
            elif kind == "fill":
                filled.add(column)
    onehot = {c for step in p.outside if step.get("method") == "one_hot" for c in step["columns"]}
    per_row = int(np.prod(built.input_shape))
    x = rng.standard_normal((rows, per_row))
    columns = (
        [names[i // (per_row // len(names))] for i in range(per_row)] if p.image_shape else names
    )
    for i, column in enumerate(columns):
        if column in onehot:
            x[:, i] = rng.integers(0, 2, rows)
        else:
            x[:, i] = centre[column] + spread[column] * x[:, i]
        if column in filled:
            x[::3, i] = np.nan
    return torch.from_numpy(x.astype(np.float32)).reshape(rows, *built.input_shape)


def describe(built: Built, fmt: str, path: Path, difference: float) -> dict[str, Any]:
    """The sidecar: what the exported file takes and gives, and what the runtime must do."""
    info, p = built.package.info, built.plan
    filled = sorted({c for kind, cols in p.ops if kind == "fill" for c in cols})
    return {
        "trainflow_export": SIDECAR_FORMAT,
        "format": fmt,
        "file": path.name,
        "package": {
            "path": str(built.package.path),
            "pipeline": info.pipeline,
            "kind": info.kind,
            "spec_fingerprint": info.spec_fingerprint,
            "architectures": built.architectures,
            "members": len(info.members),
            "combine": info.combine,
        },
        "input": {
            "name": INPUT,
            "dtype": "float32",
            "shape": ["batch", *built.input_shape],
            "columns": p.inputs,  # an image: its one column, the pixels (C, H, W)
            **(
                {"image": "the raw pixels as ingest read them, (C, H, W) per row"}
                if p.image_shape
                else {}
            ),
            "missing": "NaN",
            "filled_in_graph": filled,
            "unfilled_missing": f"a NaN in any other column gives NaN {built.output} "
            "for its row: reject or fill such rows first "
            "(trainflow predict refuses them)",
        },
        "output": output_section(built.package.info, built.scales),
        "outside": p.outside,
        "folded": p.folded,
        "check": {
            "rows": list(CHECK_ROWS),
            ("max_abs_difference" if built.scales is None else "max_rel_difference"): difference,
            "tolerance": TOLERANCE,
            "against": "the eager torch module",
        },
    }
