"""Benchmark: what Prefect orchestration costs a trainflow run.

The full digits pipeline runs through the real Prefect engine (embedded server, as `trainflow
run` uses it), with every task's body timed from inside: orchestration overhead = wall time of
the flow minus the time spent inside task bodies (flow and subflow set-up, task-run creation,
state changes, cache keys, result records). Its share per task run is set against a bare
Prefect flow of the same number of no-op tasks on the same task runner, run in the same
process before and after the pipeline (the two bare runs' mean).

    .venv/bin/python benchmarks/orchestration_overhead.py            # the full digits pipeline
    .venv/bin/python benchmarks/orchestration_overhead.py --quick    # CI-sized, to try it out
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import threading
import time
from pathlib import Path

import harness
from isolated_prefect import isolate  # noqa: E402  (before Prefect is imported)

_HOME = isolate()

from prefect import Task, flow, task  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

from trainflow import registry  # noqa: E402
from trainflow.flows.pipeline import pipeline  # noqa: E402
from trainflow.spec.pipeline import load_spec  # noqa: E402
from trainflow.tasks import (  # noqa: E402
    ensemble,
    evaluate,
    expect,
    fold,
    ingest,
    prune,
    quantize,
    report,
    shard,
    train,
)

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["train.epochs=4", "evaluate.cv.folds=2", "compress.prune.finetune_epochs=1"]
_lock = threading.Lock()
_inside = {"seconds": 0.0, "calls": 0}
_spans: list[tuple[str, float, float]] = []  # (task, start, end) of every body


def pipeline_tasks() -> list[Task]:
    return [
        ingest.ingest,
        expect.check_expectations,
        shard.shard,
        train.train_model,
        evaluate.evaluate_model,
        fold.train_fold,
        ensemble.ensemble_folds,
        quantize.quantize_model,
        prune.prune_model,
        report.write_report,
        report.publish_report,
        *(entry.impl for entry in registry.STEPS.values()),
    ]


def time_bodies(tasks: list[Task]) -> None:
    """Wrap each task's function so that the time inside it is added up (the wrapper keeps
    the function's name, module and signature, so Prefect sees the same task)."""
    for item in tasks:
        body = item.fn

        @functools.wraps(body)
        def timed(*args, __body=body, __name=item.name, **kwargs):
            start = time.perf_counter()
            try:
                return __body(*args, **kwargs)
            finally:
                end = time.perf_counter()
                with _lock:
                    _inside["seconds"] += end - start
                    _inside["calls"] += 1
                    _spans.append((__name, start, end))

        item.fn = timed


@task
def noop(i: int) -> int:
    return i


@flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
def bare(n: int) -> int:
    """n no-op tasks, called one after another as the pipeline calls its steps."""
    return sum(noop(i) for i in range(n))


def timed_bare(n: int) -> float:
    start = time.perf_counter()
    bare(n)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="CI-sized pipeline")
    args = parser.parse_args()
    before = harness.header("orchestration_overhead")
    time_bodies(pipeline_tasks())
    spec = load_spec(
        ROOT / "pipelines" / "digits_cnn.yaml",
        [
            f"outputs.store={_HOME}/store",
            f"outputs.runs={_HOME}/runs",
            *(QUICK if args.quick else []),
        ],
    )
    bare(3)  # starts the embedded server; not measured
    start = time.perf_counter()
    result = pipeline(spec)
    wall = time.perf_counter() - start
    inside, calls = _inside["seconds"], _inside["calls"]
    # where the overhead sits: the time before each task body since the previous one ended
    spans = sorted(_spans, key=lambda span: span[1])
    gaps = [
        (name, begin - previous)
        for (name, begin, _), previous in zip(spans, [start] + [end for _, _, end in spans])
    ]
    gaps.append(("(after the last task)", start + wall - spans[-1][2]))
    bare_s = [timed_bare(calls), timed_bare(calls)]
    bare_per_task = sum(bare_s) / len(bare_s) / calls
    overhead = wall - inside
    result = {
        "pipeline": "digits_cnn" + (" (--quick)" if args.quick else ""),
        "task_runs": calls,
        "folds": len(result["folds"]),
        "wall_s": round(wall, 2),
        "inside_tasks_s": round(inside, 2),
        "orchestration_s": round(overhead, 2),
        "orchestration_fraction": round(overhead / wall, 4),
        "trainflow_per_task_s": round(overhead / calls, 4),
        "bare_prefect_runs_s": [round(s, 2) for s in bare_s],
        "bare_prefect_per_task_s": round(bare_per_task, 4),
        "per_task_ratio": round(overhead / calls / bare_per_task, 2),
        "gaps_before_task_s": {
            f"{i:02d} {name}": round(gap, 3) for i, (name, gap) in enumerate(gaps)
        },
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result, indent=1))
    harness.finish("orchestration_overhead", before, result)


if __name__ == "__main__":
    main()
