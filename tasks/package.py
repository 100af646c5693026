"""Package: a run's model as a self-contained package in the store (see trainflow.package),
with the fitted state of every data step that rows pass through at prediction."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import task

from trainflow.artifacts import ArtifactRef, Store
from trainflow.caching import CACHED, library_versions
from trainflow.drift import profile
from trainflow.errors import ArtifactError
from trainflow.logs import run_logger
from trainflow.package import (
    DTYPES,
    FORMAT,
    PREDICTION_MODES,
    Decision,
    InputSchema,
    Kind,
    Member,
    PackageInfo,
    PackageStep,
    prediction_mode,
    write_package,
)
from trainflow.reporting.gate_section import gate_sentence
from trainflow.spec.pipeline import PipelineSpec
from trainflow.steps import scan_parts
from trainflow.tables import TableSchema
from trainflow.tasks.fold import FOLD_STEPS

# imported so this task's code fingerprint covers the steps' prediction code it runs
from trainflow.transforms import anomalies, clean, encode, normalize, outliers, smooth  # noqa: F401

# How rows pass each data step at prediction (trainflow.package.PREDICTION_MODES, resolved).
AT_PREDICTION: dict[str, tuple[Callable, tuple[str, ...] | None]] = {
    name: (prediction_mode(name), keys) for name, (_, keys) in PREDICTION_MODES.items()
}
# Steps that change the training rows only (or, split, choose them): rows to score skip them.
TRAINING_ONLY = ("split", "resample", "synthesize", "subsample")
REFUSALS: dict[str, Callable[[Any], str | None]] = {"anomalies": anomalies.prediction_refusal}


def passes_at_prediction(params: Any, after_split: bool) -> bool:
    """Whether rows to score go through the step: after `split`, a `train_only` step (e.g.
    outliers or anomalies with action drop) changed the training part alone, so the test
    rows, like rows to score, passed it untouched."""
    if params.type in TRAINING_ONLY:
        return False
    if params.type not in AT_PREDICTION:
        raise ArtifactError(
            f"data step {params.type!r} has no prediction mode, so no model "
            "package can hold it (add it to tasks/package.py AT_PREDICTION)"
        )
    return not (after_split and getattr(params, "train_only", False))


def packaged(params: Any, state: dict, after_split: bool) -> PackageStep | None:
    if not passes_at_prediction(params, after_split):
        return None
    keys = AT_PREDICTION[params.type][1]
    kept = state if keys is None else {k: state[k] for k in keys if k in state}
    return PackageStep(type=params.type, params=params.model_dump(mode="json"), state=kept)


def refusal(spec: PipelineSpec) -> str | None:
    """Why this spec's model cannot be packaged, or None."""
    for index, params in enumerate(spec.data.steps):
        check = REFUSALS.get(params.type)
        reason = check(params) if check else None
        if reason:
            return f"data.steps.{index}: {reason}"
    return None


def _states(refs: list[ArtifactRef], steps: list[Any]) -> list[dict]:
    """The fitted state each step's artifact holds, checked against the spec's steps. (The
    refs are not verified again: that hashes every row under a view, once per package, and
    the cache policy has verified each of them before serving it.)"""
    if len(refs) != len(steps):
        raise ArtifactError(f"{len(refs)} step artifacts for {len(steps)} data steps")
    states = []
    for ref, params in zip(refs, steps):
        if ref.meta.get("step") != params.type:
            raise ArtifactError(
                f"{ref.path} holds step {ref.meta.get('step')!r}, not {params.type!r}"
            )
        states.append(json.loads((ref.path / "state.json").read_text()))
    return states


def _fold_states(model: ArtifactRef, steps: list[Any]) -> list[dict]:
    """The post-split states fitted in a fold (train_fold writes them beside its model)."""
    saved = json.loads((model.path / FOLD_STEPS).read_text())
    if [s["step"] for s in saved] != [p.type for p in steps]:
        raise ArtifactError(f"{model.path / FOLD_STEPS} holds other steps than the spec's")
    return [s["state"] for s in saved]


def _input_schema(
    spec: PipelineSpec, ingested: ArtifactRef, steps: list[PackageStep]
) -> tuple[InputSchema, TableSchema]:
    """The columns the steps and the model read, typed as ingest read them at training."""
    frame, table = next(iter(scan_parts(ingested).values()))
    types = frame.collect_schema()
    named = [
        c for p in spec.data.steps if p.type == "smooth" for c in (p.order_by, p.group_by) if c
    ]
    columns = {c: str(types[c]) for c in dict.fromkeys([*table.features, *named])}
    odd = {c: t for c, t in columns.items() if t not in DTYPES}
    if odd:
        raise ArtifactError(f"columns {odd} have types a model package does not hold")
    encodes = [s for s in steps if s.type == "encode"]
    source = spec.data.source
    schema = InputSchema(
        source=source.type,
        columns=columns,
        keep_columns=list(getattr(source, "keep_columns", [])),
        categories={c: v for s in encodes for c, v in s.state["categories"].items()},
        unknown={c: s.params["unknown"] for s in encodes for c in s.state["categories"]},
        image_shape=table.image_shape,
        sequence_shape=table.feature_shape,
        target=table.target,
    )
    return schema, table


def _metrics(kind: Kind, models: list[ArtifactRef], metrics: ArtifactRef | None) -> dict:
    if metrics is not None:  # evaluate's (the test part) or the ensemble's
        metrics.verify()
        return dict(metrics.meta)
    if kind == "fold":  # scored on the test part with the steps re-fitted in the fold
        return {"fold": models[0].meta["fold"], **models[0].meta["test"]}
    return dict(models[0].meta)  # quantize, prune: the before/after table


def combined_state(kind: Kind, metrics: ArtifactRef | None) -> dict:
    """What an ensemble fitted to combine its members (tasks/ensemble.py COMBINE)."""
    saved = metrics.path / "combine.json" if metrics is not None else None
    return json.loads(saved.read_text()) if kind == "ensemble" and saved and saved.is_file() else {}


def _decision(kind: Kind, metrics: ArtifactRef | None, classes: list[str]) -> Decision | None:
    """The temperature and threshold evaluate fitted for the trained model (its package
    applies them, so it predicts what evaluate reported); None without them."""
    found = metrics.meta if kind == "model" and metrics is not None else {}
    calibration, threshold = found.get("calibration"), found.get("threshold")
    if not (calibration or threshold):
        return None
    return Decision(
        temperature=calibration["temperature"] if calibration else 1.0,
        threshold=threshold["value"] if threshold else None,
        positive=classes.index(threshold["positive"]) if threshold else None,
    )


@task(name="package", **CACHED)
def package_model(
    kind: Kind,
    models: list[ArtifactRef],
    metrics: ArtifactRef | None,
    spec: PipelineSpec,
    ingested: ArtifactRef,
    steps: list[ArtifactRef],
    store: str,
) -> ArtifactRef | None:
    """Package `models` (one; the folds of an ensemble) with the pre-split steps' states from
    `steps` (the data flow's step artifacts, in spec order) and each model's post-split
    states (from `steps`, or re-fitted in its fold). None, with a warning naming the step,
    when a step's fitted state cannot go into a package, or a compressed model failed
    compress.gate (its verdict is in its meta)."""
    gate = models[0].meta.get("gate") if kind in ("quantize", "prune", "distill") else None
    if gate and not gate["passed"]:  # so it cannot be exported, promoted or scored
        run_logger().warning("no model package: %s", gate_sentence(kind, models[0].meta))
        return None
    reason = refusal(spec)
    if reason:
        run_logger().warning("no model package for this %s: %s", kind, reason)
        return None
    pre, post = spec.data.pre_split, spec.data.post_split
    states = _states(steps, [*pre, *post])
    shared = [packaged(p, s, False) for p, s in zip(pre, states)]
    members, folders = [], []
    for index, model in enumerate(models):
        model.verify()
        fitted = _fold_states(model, post) if kind in ("fold", "ensemble") else states[len(pre) :]
        own = [packaged(p, s, True) for p, s in zip(post, fitted)]
        members.append(Member(folder=f"members/{index}", steps=[s for s in own if s]))
        folders.append(Path(model.path))
    shared = [s for s in shared if s]
    schema, table = _input_schema(spec, ingested, [*shared, *members[0].steps])
    info = PackageInfo(
        format=FORMAT,
        kind=kind,
        pipeline=spec.name,
        spec_fingerprint=spec.fingerprint(),
        classes=table.classes,
        input=schema,
        table_schema=table.model_dump(),
        steps=shared,
        members=members,
        combine=spec.ensemble.type if kind == "ensemble" else None,
        decision=_decision(kind, metrics, table.classes),
        combine_state=combined_state(kind, metrics),
        training_only=[
            p.type
            for i, p in enumerate(spec.data.steps)
            if not passes_at_prediction(p, i > spec.data.split_index)
        ],
        metrics=_metrics(kind, models, metrics),
        libraries=library_versions(),
        made_from={
            "models": [m.fingerprint for m in models],
            "metrics": metrics.fingerprint if metrics else None,
            "ingested": ingested.fingerprint,
        },
        profile=profile(next(iter(scan_parts(ingested).values()))[0], list(schema.columns)),
    )
    return write_package(Store(store), info, folders, spec.model_dump(mode="json"))
