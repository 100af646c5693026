"""Distill: a smaller student trained from the trained model as teacher (compress.distill),
stored as its own model artifact with the teacher-beside-student table.

Like quantize's and prune's, the table holds what the weights determine (sizes, parameters,
FLOPs, test accuracy); CPU latency is measured on every run by `measure_latency`."""

from __future__ import annotations

import json

from prefect import task

from trainflow import compress, distill_compress
from trainflow.artifacts import ArtifactRef, Store
from trainflow.caching import CACHED
from trainflow.engine.model_folder import load_model
from trainflow.errors import TrainflowError
from trainflow.logs import Progress
from trainflow.spec.compress import DistillSpec, GateSpec
from trainflow.spec.fit_on import POOLED
from trainflow.spec.train import TrainSpec
from trainflow.tasks.quantize import gate_value, measure
from trainflow.tasks.train import fitted_spec, held_out_none, load_splits


@task(name="distill", **CACHED)
def distill_model(
    model: ArtifactRef,
    shards: ArtifactRef,
    params: DistillSpec | None,
    train: TrainSpec,
    seed: int,
    store: str,
    gate: GateSpec | None = None,
) -> ArtifactRef:
    """Train `params.model` from the trained `model`; with a `gate`, the verdict (the
    student's validation metric against the teacher's) in the artifact's meta."""
    if params is None:  # `trainflow task distill` on a spec without the section
        raise TrainflowError(
            "the spec has no compress.distill, which the distill task trains: add "
            "compress.distill: {model: {type: mlp, units: 16}, epochs: 20} (a smaller student)"
        )
    teacher, info = load_model(model)
    data = load_splits(shards)
    schema, classes = model.data_schema, len(info["classes"])
    distill_compress.check_task(schema)
    sizes = distill_compress.check_student(
        params.model, teacher, info["input_shape"], classes, schema.get("aux_targets")
    )
    spec = fitted_spec(
        distill_compress.student_spec(train, params, model.path, info.get("compute"))
    )
    fit_data = {"train": data["train"], "val": data["val"]}
    if train.fit_on == POOLED:  # the validation rows are in the training part: no early stop
        fit_data["val"] = held_out_none(data["val"])
    progress = Progress("distill-progress", f"distill: up to {params.epochs} student epochs")
    target = Store(store)
    with target.writer("model") as staging:
        student, result = distill_compress.train_student(
            staging,
            params.model,
            spec,
            seed,
            fit_data,
            schema,
            lambda row: progress.update(row["epoch"] / params.epochs),
        )
        student = student.cpu().eval()
        progress.update(1.0)  # early stopping ends before the last epoch
        table = {
            "before": measure(teacher, data["test"], classes),
            "after": measure(student, data["test"], classes),
            "sizes": sizes,  # parameters and FLOPs per sample, teacher -> student
            "epochs": params.epochs,
            "epochs_run": len(result.history),
            "best_epoch": result.best_epoch,
            "temperature": params.temperature,
            "alpha": params.alpha,
        }
        if gate:  # absent without a gate: an ungated artifact is unchanged
            baseline, value = (
                gate_value(gate, m, data["val"], classes) for m in (teacher, student)
            )
            table["gate"] = compress.gate_decision(gate, baseline, value)
        (staging / "compression.json").write_text(json.dumps(table, indent=1, sort_keys=True))
        return target.commit(
            staging,
            "model",
            count=len(data["train"]),
            schema=schema,
            meta={"compression": "distill", "type": params.model.type, **table},
        )
