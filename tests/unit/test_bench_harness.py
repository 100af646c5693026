"""The statistics and the run order of benchmarks/harness.py, on synthetic runs (no timing).

Unit tests, fast (about a second): not marked `slow`, so `pytest -m "not slow"` runs them.
"""

import math
import random
import sys

import pytest

from benchmarks.harness import Sample, interleave, median, order, paired_ratio, run_process


def synthetic_pairs(true_ratio: float, runs: int, seed: int) -> tuple[list[float], list[float]]:
    """Pairs on a machine whose load drifts a lot between runs but little within one run."""
    rng = random.Random(seed)
    contender, baseline = [], []
    for _ in range(runs):
        load = rng.uniform(1.0, 3.0)  # the neighbours' load: the same for both sides of a pair
        baseline.append(0.3 * load * math.exp(rng.gauss(0, 0.02)))
        contender.append(0.3 * true_ratio * load * math.exp(rng.gauss(0, 0.02)))
    return contender, baseline


def test_the_interval_contains_the_true_ratio_in_nearly_every_trial():
    trials = [paired_ratio(*synthetic_pairs(1.08, 15, seed), resamples=500) for seed in range(40)]
    covered = sum(r["low"] <= 1.08 <= r["high"] for r in trials)
    assert covered >= 34  # a 95 % interval: about 38 of 40; a broken one misses often
    assert all(r["low"] <= r["median"] <= r["high"] for r in trials)
    # Pairing removes the load drift: the interval is narrow although single runs vary 3x.
    assert all(r["high"] - r["low"] < 0.1 for r in trials)


def test_the_interval_excludes_a_ratio_the_pairs_do_not_support():
    r = paired_ratio(*synthetic_pairs(1.08, 15, seed=1))
    assert not r["low"] <= 1.0 <= r["high"]
    assert r["runs"] == 15


def test_the_interval_is_the_same_on_every_call():
    pairs = synthetic_pairs(1.5, 9, seed=3)
    assert paired_ratio(*pairs) == paired_ratio(*pairs)


def test_unpaired_or_single_runs_are_refused():
    with pytest.raises(ValueError):
        paired_ratio([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        paired_ratio([1.0], [1.0])


def test_median():
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 2.0, 3.0]) == 2.5


def test_contenders_are_interleaved_not_run_in_blocks():
    calls = []

    def contender(name):
        def run():
            calls.append(name)
            return Sample(1.0, 1.0)

        return run

    samples = interleave({"A": contender("A"), "B": contender("B")}, runs=4, warmup=1)
    assert calls == ["B", "A", "A", "B", "B", "A", "A", "B", "B", "A"]  # warm-up pair first
    assert {name: len(runs) for name, runs in samples.items()} == {"A": 4, "B": 4}


def test_three_contenders_each_lead_equally_often():
    firsts = [order(["A", "B", "C"], run)[0] for run in range(6)]
    assert sorted(firsts) == ["A", "A", "B", "B", "C", "C"]
    assert all(sorted(order(["A", "B", "C"], run)) == ["A", "B", "C"] for run in range(6))


def test_a_fixed_run_count_below_two_is_refused():
    with pytest.raises(ValueError):
        interleave({"A": lambda: Sample(1, 1), "B": lambda: Sample(1, 1)}, runs=1)


def test_a_fresh_process_reports_its_own_cpu_time():
    busy = "import time\nend = time.process_time() + 0.2\nwhile time.process_time() < end: pass"
    sample, _ = run_process([sys.executable, "-c", busy])
    assert sample.cpu_s >= 0.2
    assert sample.wall_s >= sample.cpu_s * 0.5
    with pytest.raises(RuntimeError, match="exited 3"):
        run_process([sys.executable, "-c", "raise SystemExit(3)"])
