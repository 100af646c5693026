"""The pipeline flow: data, train, evaluate, cross-validate, ensemble, compress, report."""

from __future__ import annotations

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from trainflow import placement
from trainflow.artifacts import ArtifactRef, Store
from trainflow.errors import TrainflowError
from trainflow.flows.cross_validate import ensemble_members, run_folds
from trainflow.flows.data import prepare_data
from trainflow.logs import failed_run
from trainflow.mlflow_log import mlflow_module
from trainflow.remote import store_folder
from trainflow.run_outputs import RunOutputs
from trainflow.spec.pipeline import PipelineSpec
from trainflow.task_options import step
from trainflow.tasks.distill import distill_model
from trainflow.tasks.ensemble import ensemble_folds
from trainflow.tasks.evaluate import evaluate_model
from trainflow.tasks.explain import explain_model
from trainflow.tasks.latency import measure_latency
from trainflow.tasks.mlflow_log import log_to_mlflow
from trainflow.tasks.package import package_model
from trainflow.tasks.promote import promote_model
from trainflow.tasks.prune import prune_model
from trainflow.tasks.quantize import quantize_model
from trainflow.tasks.report import publish_report, write_report
from trainflow.tasks.train import train_model


# One worker: training steps seed torch's global RNG, so they must not interleave in threads.
# Parallel folds run on a Dask cluster in separate processes instead (spec `runner`).
# `step(task, spec)` adds the spec's timeouts and retries (spec `orchestration`).
@flow(name="trainflow-pipeline", task_runner=ThreadPoolTaskRunner(max_workers=1))  # type: ignore[arg-type]
def pipeline(spec: PipelineSpec) -> dict:
    # each task records where it ran (trainflow.placement); the run folder's report shows it
    try:
        with placement.recording(spec.outputs.runs, spec.name) as records:
            return run_pipeline(spec, records)
    except TrainflowError as exc:  # a user's mistake: its step and message, one line
        return failed_run(exc)  # type: ignore[return-value]  (a caller gets `exc` raised)


def run_pipeline(spec: PipelineSpec, records: str) -> dict:
    """The pipeline's tasks, in the order a run reaches them (`records`: where each task
    records where it ran, for the report)."""
    if spec.outputs.mlflow:  # the extra missing is an error before any work, not after it
        mlflow_module()
    store = str(store_folder(spec.outputs))  # s3://: its local mirror
    Store(store).sweep()  # opening refuses a folder trainflow did not create and mark
    data = prepare_data(spec, store)
    model = step(train_model, spec)(data["shards"], spec.model, spec.train, spec.seed, store)
    test = step(evaluate_model, spec)(model, data["shards"], store, spec.evaluate)
    folds = run_folds(spec, data["raw_splits"], store) if spec.evaluate.cv else []
    members = ensemble_members(spec, folds, data["raw_splits"], store)  # + ensemble.variants
    ensemble = step(ensemble_folds, spec)(members, spec.ensemble, store) if spec.ensemble else None
    compressed = compress_model(spec, model, data["shards"], store)
    latency = None
    if compressed:  # timings: measured on every run, for the run folder and the UI only
        repeats = spec.compress.quantize.latency_repeats if spec.compress.quantize else 30
        latency = step(measure_latency, spec)(
            {"model": model, **compressed}, data["shards"], spec.train.batch_size, repeats
        )
    outputs = RunOutputs(
        data=data,
        model=model,
        test=test,
        folds=folds,
        members=members,
        ensemble=ensemble,
        compressed=compressed,
    )
    packages = package_all(spec, outputs, store)
    explained = None  # evaluate.explain: on the test part, through the package for tables
    if spec.evaluate.explain:
        args = (model, data, packages["model"], spec.data.pre_split, spec.evaluate.explain)
        explained = step(explain_model, spec)(*args, spec.seed, store)
    # every run: the champion may have changed since (not cached), like the latency
    champion = step(promote_model, spec)(packages["model"], data, spec, store)
    report = step(write_report, spec)(
        spec.name, spec.fingerprint(), outputs, store, packages["model"], explained
    )
    run_dir = step(publish_report, spec)(
        report, spec.name, spec.outputs.runs, latency, champion, records
    )
    logged = None
    if spec.outputs.mlflow:  # a team's MLflow (the trainflow[mlflow] extra)
        logged = step(log_to_mlflow, spec)(
            spec, outputs, report, run_dir, packages["model"], champion
        )
    return {
        "run_dir": run_dir,
        "report": report,
        "model": model,
        "test": test.meta,
        "evaluation": test,
        "data": data,
        "folds": folds,
        "ensemble": ensemble,
        "ensemble_members": members,
        "compressed": compressed,
        "package": packages["model"],
        "packages": packages,
        "champion": champion,
        "mlflow": logged,
    }


def compress_model(
    spec: PipelineSpec, model: ArtifactRef, shards: ArtifactRef, store: str
) -> dict[str, ArtifactRef]:
    """The compressed models of the spec's compress section, by step: a distilled student,
    the quantized model (the student's, with distill.quantize) and the pruned model."""
    compressed = {}
    distill, gate = spec.compress.distill, spec.compress.gate
    if distill:  # a smaller student from the trained model as teacher
        args = (distill, spec.train, spec.seed, store, gate)
        compressed["distill"] = step(distill_model, spec)(model, shards, *args)
    if spec.compress.quantize:
        # compress.distill.quantize: the student is quantized, gated against the trained model
        of = {"teacher": model} if distill and distill.quantize else {}
        compressed["quantize"] = step(quantize_model, spec)(
            compressed["distill"] if of else model,
            shards,
            spec.compress.quantize,
            store,
            gate,
            **of,
        )
    if spec.compress.prune:
        args = (spec.compress.prune, spec.train, spec.seed, store, gate)
        compressed["prune"] = step(prune_model, spec)(model, shards, *args)
    return compressed


def package_all(spec: PipelineSpec, outputs: RunOutputs, store: str) -> dict:
    """A model package for every model of the run (their paths; None where a step of the
    spec cannot be packaged): the model, each fold, the ensemble, each compressed model."""

    def package(kind: str, models: list[ArtifactRef], metrics: ArtifactRef | None):
        data = outputs.data
        ref = step(package_model, spec)(
            kind, models, metrics, spec, data["ingested"], data["steps"], store
        )
        return str(ref.path) if ref else None

    packages = {
        "model": package("model", [outputs.model], outputs.test),
        "folds": [package("fold", [fold], None) for fold in outputs.folds],
    }
    if outputs.ensemble:
        soup = spec.ensemble is not None and spec.ensemble.type == "soup"  # one network
        models = [outputs.ensemble] if soup else outputs.members or outputs.folds
        packages["ensemble"] = package("ensemble", models, outputs.ensemble)
    for kind, ref in outputs.compressed.items():
        packages[kind] = package(kind, [ref], None)
    return packages
