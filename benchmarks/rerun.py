"""Benchmark (b): a rerun of the unchanged digits pipeline against its cold run.

Both runs go through the real Prefect engine in one process, as `trainflow run` runs them, after a warm-up flow has started
the ephemeral server (its start-up is not part of either run). The cold run starts from an
empty store and an empty Prefect result storage.

    .venv/bin/python benchmarks/rerun.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from isolated_prefect import isolate  # noqa: E402  (before Prefect is imported)

_HOME = isolate()

from prefect import flow  # noqa: E402

from trainflow.runtime import run_pipeline  # noqa: E402
from trainflow.spec.pipeline import load_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@flow
def warm_up() -> None:
    """Starts the ephemeral server."""


def main() -> None:
    warm_up()
    spec = load_spec(ROOT / "pipelines" / "digits_cnn.yaml",
                     [f"outputs.store={_HOME}/store", f"outputs.runs={_HOME}/runs"])
    start = time.perf_counter()
    cold = run_pipeline(spec)
    cold_s = time.perf_counter() - start
    start = time.perf_counter()
    warm = run_pipeline(spec)
    warm_s = time.perf_counter() - start
    print(json.dumps({"cold_s": round(cold_s, 2), "rerun_s": round(warm_s, 2),
                      "rerun_fraction": round(warm_s / cold_s, 4),
                      "same_test_accuracy": cold["test"]["accuracy"] == warm["test"]["accuracy"]},
                     indent=1))


if __name__ == "__main__":
    main()
