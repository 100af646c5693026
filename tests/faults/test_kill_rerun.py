"""SIGKILL of `trainflow run` at random points, then a rerun: the same metrics and artifact bytes
as a run that was never interrupted. (benchmarks/reliability.py runs the long version.)"""

from __future__ import annotations

import random

import pytest

from benchmarks.reliability import artifacts, complete, environment, kill_after

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def test_runs_killed_at_random_points_rerun_to_the_uninterrupted_bytes(tmp_path, prefect_home):
    env = environment(prefect_home(tmp_path / "prefect"))
    reference = complete(tmp_path / "reference", env)
    rng = random.Random(13)
    # one kill at a random point of the data steps, one at a random point of training
    phases = [
        kill_after(tmp_path / "killed", env, rng.uniform(0.0, 1.0), when)
        for when in ("Task run 'ingest-", "epoch 2 ")
    ]
    assert complete(tmp_path / "killed", env) == reference, phases
    assert artifacts(tmp_path / "killed" / "store") == artifacts(
        tmp_path / "reference" / "store"
    ), phases
