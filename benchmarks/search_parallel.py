"""A search's trial throughput: two trials at once (`search.parallel: 2`, thread pool) against
one at a time (issue 16, part 2).

The shipped breast_cancer_search study, its pruner off (every trial does its whole work) and a
seeded random sampler (both modes draw the same trials), run in a fresh store per mode through
the real Prefect engine (one in-process server for both). The figure is the trials' span in the
study's own records, first trial start to last trial end; the ratio is throughput at parallel 2
over parallel 1. The load average is printed beside it: on a shared machine it decides the
figure.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/search_parallel.py [--trials 4]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from isolated_prefect import isolate  # noqa: E402  (before Prefect is imported)

_HOME = isolate()

import optuna  # noqa: E402

from trainflow.flows.search import search_flow  # noqa: E402
from trainflow.spec.pipeline import load_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def span(parallel: int, trials: int, folder: Path) -> float:
    spec = load_spec(
        ROOT / "pipelines" / "breast_cancer_search.yaml",
        [
            f"outputs.store={folder / 'store'}",
            f"outputs.runs={folder / 'runs'}",
            f"search.parallel={parallel}",
            f"search.n_trials={trials}",
            "search.pruner=null",
            "search.sampler={type: random, seed: 0}",
            "train.threads=1",
        ],
    )
    result = search_flow(spec)(spec)
    study = optuna.load_study(study_name=result["study"], storage=result["storage"])
    done = study.get_trials()
    first = min(t.datetime_start for t in done)
    last = max(t.datetime_complete for t in done)
    return (last - first).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=4)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="trainflow-search-bench-"))
    load_before = os.getloadavg()
    seconds = {n: span(n, args.trials, folder / f"parallel{n}") for n in (1, 2)}
    print(
        json.dumps(
            {
                "trials": args.trials,
                "seconds": seconds,
                "throughput_ratio": seconds[1] / seconds[2],
                "load_before": load_before,
                "load_after": os.getloadavg(),
                "cores": os.cpu_count(),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
