"""Reliability figures for RELIABILITY.md: `trainflow run` killed with SIGKILL at random points
(every rerun must complete with the uninterrupted run's metrics and artifact bytes), and spec
fuzzing (every mutant must give a validation error, never a traceback).

    .venv/bin/python benchmarks/reliability.py --kills 20 --mutants 5000

The kill part runs the real CLI in subprocesses (each with the embedded Prefect server), so
every figure is what a user sees. tests/faults/test_kill_rerun.py runs a short version.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also when tests import it as a module
import harness  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TRAINFLOW = Path(sys.executable).with_name("trainflow")
SPEC = ROOT / "pipelines" / "breast_cancer_mlp.yaml"
SMALL = ["train.epochs=6", "evaluate.cv.folds=2", "compress.prune.finetune_epochs=1"]
FINISHED = re.compile(r"Task run '([a-z_]+)-[0-9a-f]+' - Finished")


def command() -> list[str]:
    """The run, with its outputs relative to the folder it runs in: runs in two folders then
    have the same spec, so their artifacts (packages hold the spec) can be compared byte for
    byte."""
    sets = [*SMALL, "outputs.store=store", "outputs.runs=runs"]
    return [str(TRAINFLOW), "run", str(SPEC), *(arg for s in sets for arg in ("--set", s))]


def environment(home: Path) -> dict[str, str]:
    """A child's environment: its own Prefect home, one torch thread, no analytics."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
        OMP_NUM_THREADS="1",
    )
    return env


def complete(folder: Path, env: dict) -> dict:
    """Run to the end; the test metrics it prints (an AssertionError with the output if not)."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        command(), env=env, cwd=folder, capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0:
        raise AssertionError(
            f"exit {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return json.loads(done.stdout[done.stdout.index("{\n") : done.stdout.rindex("}") + 1])["test"]


def kill_after(folder: Path, env: dict, seconds: float, when: str | None = None) -> str:
    """Start a run and SIGKILL its main process (no cleanup runs) `seconds` after it started,
    or after its log first matches the regex `when`; returns the phase it was killed in:
    after which task (the last one the run logged as finished)."""
    log = folder.parent / f"{folder.name}.kill.log"
    folder.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            command(),
            env=env,
            cwd=folder,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 900
            while (
                when
                and process.poll() is None
                and time.monotonic() < deadline
                and not re.search(when, log.read_text(errors="replace"))
            ):
                time.sleep(0.05)
            process.wait(seconds)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait(30)
        finally:  # whatever the run left behind must not outlive the caller
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if process.returncode == 0:
        return "finished before the kill"
    finished = FINISHED.findall(log.read_text(errors="replace"))
    return f"after {finished[-1]}" if finished else "before the first task"


def artifacts(store: Path) -> set[str]:
    """Every committed (content-addressed) artifact of a store, as kind/fingerprint."""
    return {
        f"{kind.name}/{item.name}"
        for kind in store.iterdir()
        if kind.is_dir()
        for item in kind.iterdir()
        if re.fullmatch("[0-9a-f]{64}", item.name)
    }


def kills(tries: int, seed: int) -> dict:
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="trainflow-kills-"))
    env = environment(work / "prefect")
    complete(work / "warm-up", env)  # the Prefect home's first start migrates its database
    started = time.monotonic()
    reference = complete(work / "reference", env)
    duration = time.monotonic() - started
    wanted = artifacts(work / "reference" / "store")
    table: dict[str, Counter] = defaultdict(Counter)
    for i in range(tries):
        folder = work / f"killed-{i}"
        phase = kill_after(folder, env, rng.uniform(1.0, duration))
        try:
            same = complete(folder, env) == reference and artifacts(folder / "store") == wanted
        except AssertionError:
            same = False
        table[phase]["tries"] += 1
        table[phase]["survived" if same else "lost"] += 1
    return {
        "reference_run_s": round(duration, 1),
        "per_phase": {k: dict(v) for k, v in sorted(table.items())},
    }


# ---- spec fuzzing ---------------------------------------------------------------------------

SCALARS = [
    0,
    -1,
    1e300,
    float("nan"),
    "",
    "x",
    None,
    True,
    [],
    {},
    [1, 2],
    {"type": "x"},
    "../../etc/passwd",
    "\x00",
    2**70,
    "1e12",
]


def mutate(node, rng: random.Random):
    """One random change somewhere in a parsed spec: a key renamed, dropped, retyped or set."""
    if isinstance(node, dict) and node and rng.random() < 0.7:
        key = rng.choice(sorted(node, key=str))
        choice = rng.random()
        if choice < 0.15:
            node.pop(key)
        elif choice < 0.3:
            node[key + rng.choice(["s", "_", "x"])] = node.pop(key)
        elif choice < 0.5:
            node[key] = rng.choice(SCALARS)
        else:
            node[key] = mutate(node[key], rng)
        return node
    if isinstance(node, list) and node and rng.random() < 0.7:
        i = rng.randrange(len(node))
        node[i] = mutate(node[i], rng)
        return node
    return rng.choice(SCALARS)


def fuzz(mutants: int, seed: int) -> dict:
    """Mutants of every shipped spec through the YAML loader and validation, in-process."""
    import yaml

    from trainflow.errors import TrainflowError
    from trainflow.spec.pipeline import load_spec

    rng = random.Random(seed)
    specs = sorted((ROOT / "pipelines").glob("*.yaml"))
    outcomes: Counter = Counter()
    crashes: Counter = Counter()
    with tempfile.TemporaryDirectory() as folder:
        for i in range(mutants):
            raw = yaml.safe_load(rng.choice(specs).read_text())
            path = Path(folder) / f"mutant-{i % 50}.yaml"
            if rng.random() < 0.05:  # bytes that are not a YAML document at all
                path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))))
            else:
                path.write_text(yaml.safe_dump(mutate(raw, rng), allow_unicode=True))
            try:
                load_spec(path)
                outcomes["valid"] += 1
            except TrainflowError:
                outcomes["validation error"] += 1
            except Exception as exc:  # noqa: BLE001 - what the fuzzer is looking for
                outcomes["traceback"] += 1
                crashes[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1
    return {
        "mutants": mutants,
        "outcomes": dict(outcomes),
        "crashes": dict(crashes.most_common(10)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--mutants", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    before = harness.header("reliability")
    result = {"fuzz": fuzz(args.mutants, args.seed)}
    print(json.dumps(result, indent=1), flush=True)
    result["kills"] = kills(args.kills, args.seed)
    print(json.dumps(result, indent=1))
    harness.finish("reliability", before, result)


if __name__ == "__main__":
    main()
