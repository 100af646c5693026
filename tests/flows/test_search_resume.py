"""A search killed with SIGKILL mid-study and run again: the finished trials are not run again,
the study continues to its budget, and it ends as the uninterrupted study did."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from benchmarks.reliability import environment
from tests.flows.test_search import SMALL, SPEC, search, trials

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("prefect_engine")]

# random draws with a seed, one trial at a time: a deterministic study
STUDY = ("search.sampler={type: random, seed: 5}", "search.n_trials=4")


def command(folder: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "trainflow.cli",
        "search",
        str(SPEC),
        *(f"--set={o}" for o in (*SMALL, *STUDY)),
        f"--set=outputs.store={folder / 'store'}",
        f"--set=outputs.runs={folder / 'runs'}",
    ]


def complete_trials(url: str, name: str) -> list:
    try:
        study = optuna.load_study(study_name=name, storage=url)
    except KeyError:  # not created yet
        return []
    return study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))


def complete_in_file(path: Path) -> int:
    """Complete trials in the study's SQLite file, read-only (the child may be creating it)."""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.Error:  # not there yet, or its tables not yet made
        return 0


def kill_after_two_trials(folder: Path, env: dict, url: str) -> None:
    """Start the search and SIGKILL it (and its server) once two trials are in its study."""
    folder.mkdir(parents=True)
    with (folder / "killed.log").open("wb") as log:
        process = subprocess.Popen(
            command(folder),
            env=env,
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 900
            path = Path(url.removeprefix("sqlite:///"))
            while process.poll() is None and time.monotonic() < deadline:
                if complete_in_file(path) >= 2:
                    break
                time.sleep(0.1)
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:  # it ended by itself: the assert below says how
                pass
            process.wait(30)
    assert process.returncode == -signal.SIGKILL, (folder / "killed.log").read_text()[-3000:]


def test_a_study_killed_mid_way_resumes_to_the_uninterrupted_result(tmp_path):
    reference, _ = search(tmp_path / "reference", *STUDY)
    folder = tmp_path / "killed"
    name = reference["study"]  # the same spec and space: the same study name
    url = f"sqlite:///{folder / 'store' / 'studies' / name}.sqlite3"
    env = environment(tmp_path / "prefect")
    kill_after_two_trials(folder, env, url)

    before = {t.number: t.datetime_complete for t in complete_trials(url, name)}
    assert 2 <= len(before) < 4  # killed mid-study
    done = subprocess.run(
        command(folder), env=env, cwd=folder, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = {"study": name, "storage": url}
    assert trials(resumed) == trials(reference)  # the same draws, values and states
    after = {t.number: t.datetime_complete for t in complete_trials(url, name)}
    assert {n: after[n] for n in before} == before  # finished trials were not run again
    for number in before:
        assert f"Task run 'trial-{number} " not in done.stdout + done.stderr
