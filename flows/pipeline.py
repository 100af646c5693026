"""The pipeline flow: data, train, evaluate, cross-validate, ensemble, compress, report."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from trainflow.artifacts import Store
from trainflow.flows.cv import cross_validate
from trainflow.flows.data import prepare_data
from trainflow.spec.pipeline import PipelineSpec
from trainflow.tasks.ensemble import ensemble_folds
from trainflow.tasks.evaluate import evaluate_model
from trainflow.tasks.prune import prune_model
from trainflow.tasks.quantize import quantize_model
from trainflow.tasks.report import publish_report, write_report
from trainflow.tasks.train import train_model


# One worker: training steps seed torch's global RNG, so they must not interleave in threads.
# Parallel folds run on a Dask cluster in separate processes instead.
@flow(name="trainflow-pipeline", task_runner=ThreadPoolTaskRunner(max_workers=1))
def pipeline(spec: PipelineSpec) -> dict:
    store = str(Path(spec.outputs.store).resolve())
    Store(store).sweep()
    data = prepare_data(spec, store)
    model = train_model(data["shards"], spec.model, spec.train, spec.seed, store)
    test = evaluate_model(model, data["shards"], store)
    folds = cross_validate(spec, data["raw_splits"], store) if spec.evaluate.cv else []
    ensemble = ensemble_folds(folds, spec.ensemble, store) if spec.ensemble else None
    compressed = {}
    if spec.compress.quantize:
        compressed["quantize"] = quantize_model(model, data["shards"], spec.compress.quantize,
                                                spec.train.batch_size, store)
    if spec.compress.prune:
        compressed["prune"] = prune_model(model, data["shards"], spec.compress.prune, spec.train,
                                          spec.seed, store)
    report = write_report(spec.name, spec.fingerprint(), data, model, test, folds, ensemble,
                          compressed, store)
    run_dir = publish_report(report, spec.name, spec.outputs.runs)
    return {"run_dir": run_dir, "report": report, "model": model, "test": test.meta,
            "data": data, "folds": folds, "ensemble": ensemble, "compressed": compressed}
