"""How long `trainflow` keeps a user waiting (issue 15 part 8), each command a fresh process.

Per run, in a new folder with an empty store and an empty Prefect home, in this order:
1. `trainflow validate --schema-only` of the pipeline (the spec check; plain `validate` also
   runs the preflight, whose failing case is figure 2);
2. a run that fails preflight (the pipeline on a CSV whose target has a single class):
   the time to its `error:` line and exit 2;
3. the cold run of the pipeline (it starts the warm local server, trainflow.warmserver);
4. the fully cached rerun of the same spec (every computing task `Cached`, the warm server
   reused, as when a user reruns within TRAINFLOW_SERVER_IDLE_S), a fresh `trainflow` process
   that the warm worker serves when it is ready (trainflow.warmworker: the first `run` started
   it; the script says whether it did), then the same rerun without a worker
   (TRAINFLOW_WORKER_IDLE_S=0: everything imported in the command, as before the worker);
5. the cost of a cached task: from the server's records of the rerun, the median time between
   one cached task's end and the next one's in the same flow (the thread pool runs a flow's
   tasks one after another, so the gap is what one more cached task costs);
6. where the rerun's wall time went: the pipeline flow run's own span on the server (from its
   start to its end) against the command's wall time (the rest is the process: imports, the
   preflight, finding the server, waiting for the run's records, exit).
The warm server and the warm worker are stopped at the end of each run, so the next run's
cold start is cold. A command the worker serves runs in the worker's child, not its own: its
CPU time here is the command's plus that child's (from the worker's log).

Method (benchmarks/harness.py): threads pinned (--threads, default 1); a fixed --runs, no
warm-up (cold starts are what is measured); wall time and the command's own CPU time (rusage
of it and the children it waited for: the warm server, not a child waited for, is not in it);
medians with a 95 % bootstrap interval over the runs; the machine and load average printed.
Targets (idle machine): rerun <= 3 s, cold <= 8 s, cached task <= 30 ms, preflight failure
< 1 s, validate <= 0.5 s.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cli_latency.py [--pipeline breast_cancer_mlp]
        [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import harness
import httpx

ROOT = Path(__file__).resolve().parents[1]
TRAINFLOW = Path(sys.executable).with_name("trainflow")
FIGURES = ("validate", "preflight failure", "cold run", "cached rerun", "rerun, no worker")


def environment(folder: Path) -> dict:
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(folder / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOCAL_STORAGE_PATH=str(folder / "prefect" / "storage"),
        PREFECT_LOGGING_LEVEL="WARNING",
        TRAINFLOW_SERVER_IDLE_S="600",
        TRAINFLOW_WORKER_IDLE_S="600",
        TRAINFLOW_WORKER_DIR=str(folder / "w"),  # this run's worker, found and stopped here
    )
    env.pop("PREFECT_API_URL", None)  # the local server, as a user without a server gets
    return env


def timed(argv: list[str], env: dict, cwd: Path, exit_code: int = 0) -> harness.Sample:
    """A fresh process's wall and CPU time; it must exit with `exit_code`."""
    if exit_code == 0:
        return harness.run_process(argv, env=env, cwd=cwd)[0]
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=out)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    if code != exit_code or "error:" not in text:
        raise RuntimeError(f"{' '.join(argv)} exited {code}, not {exit_code}:\n{text[-3000:]}")
    return harness.Sample(wall, usage.ru_utime + usage.ru_stime)


def single_class_csv(folder: Path) -> Path:
    path = folder / "one_class.csv"
    path.write_text("x,label\n" + "".join(f"{i},a\n" for i in range(50)))
    return path


def warm_server(folder: Path) -> dict:
    states = list((folder / "prefect" / "trainflow-servers").glob("*.json"))
    if len(states) != 1:
        raise RuntimeError(f"expected one warm server in {folder}, found {len(states)}")
    return json.loads(states[0].read_text())


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def cached_task_gaps(port: int) -> tuple[list[float], list[str], float]:
    """Seconds between consecutive cached tasks' ends within each flow of the latest run, the
    tasks of that run that were not Cached (the uncached ones by design, promote,
    publish_report and measure_latency, and any that recomputed), and the run's own span."""
    api = f"http://127.0.0.1:{port}/api"
    latest = httpx.post(
        f"{api}/flow_runs/filter",
        json={
            "sort": "START_TIME_DESC",
            "limit": 1,
            "flows": {"name": {"any_": ["trainflow-pipeline"]}},
        },
    ).json()[0]
    subflows = httpx.post(
        f"{api}/flow_runs/filter",
        json={"flow_runs": {"parent_flow_run_id": {"any_": [latest["id"]]}}},
    ).json()
    runs = httpx.post(
        f"{api}/task_runs/filter",
        json={"flow_runs": {"id": {"any_": [latest["id"], *(f["id"] for f in subflows)]}}},
    ).json()
    by_flow: dict[str, list[tuple[float, str]]] = {}
    computed = sorted(r["name"].rsplit("-", 1)[0] for r in runs if r["state"]["name"] != "Cached")
    for r in runs:
        if r["end_time"]:
            end = _seconds(r["end_time"])
            by_flow.setdefault(r["flow_run_id"], []).append((end, r["state"]["name"]))
    gaps = []
    for ends in by_flow.values():
        ends.sort()
        gaps += [
            b[0] - a[0] for a, b in zip(ends, ends[1:]) if a[1] == "Cached" and b[1] == "Cached"
        ]
    span = _seconds(latest["end_time"]) - _seconds(latest["start_time"])
    return gaps, computed, span


def worker_log(folder: Path) -> list[str]:
    return [line for p in (folder / "w").glob("*.log") for line in p.read_text().splitlines()]


def by_worker(argv: list[str], env: dict, folder: Path) -> tuple[harness.Sample, bool]:
    """A fresh command's time; whether the warm worker served it, and then its CPU time with
    the worker's child that ran it (the command itself only waits)."""
    before = len(worker_log(folder))
    sample = timed(argv, env, folder)
    ended = [line for line in worker_log(folder)[before:] if " exited " in line]
    if not ended:
        return sample, False
    child_cpu = float(ended[-1].rsplit("(", 1)[1].split()[0])
    return harness.Sample(sample.wall_s, sample.cpu_s + child_cpu), True


def stop_worker(folder: Path) -> None:
    for state in (folder / "w").glob("*.json"):
        try:
            os.kill(json.loads(state.read_text())["pid"], signal.SIGTERM)
        except (ProcessLookupError, ValueError, KeyError):
            pass


def one_run(spec: Path, folder: Path) -> tuple[dict, float, list[str], float, dict[str, bool]]:
    folder.mkdir(parents=True)
    env = environment(folder)
    outputs = [f"outputs.store={folder / 'store'}", f"outputs.runs={folder / 'runs'}"]
    sets = [a for s in outputs for a in ("--set", s)]
    run = [str(TRAINFLOW), "run", str(spec), *sets]
    bad = f"data.source={{type: csv, path: {single_class_csv(folder)}, target: label}}"
    got = {
        "validate": timed([str(TRAINFLOW), "validate", "--schema-only", str(spec)], env, folder),
        "preflight failure": timed([*run, "--set", bad], env, folder, exit_code=2),
    }
    try:
        got["cold run"], cold_served = by_worker(run, env, folder)
        got["cached rerun"], served = by_worker(run, env, folder)
        server = warm_server(folder)
        try:
            gaps, computed, span = cached_task_gaps(server["port"])  # the worker's rerun
            got["rerun, no worker"] = timed(run, {**env, "TRAINFLOW_WORKER_IDLE_S": "0"}, folder)
        finally:
            os.kill(server["pid"], signal.SIGTERM)
    finally:
        stop_worker(folder)
    print(
        f"# the warm worker served the cold run: {'yes' if cold_served else 'no'}, "
        f"the cached rerun: {'yes' if served else 'no'}",
        flush=True,
    )
    gap = harness.median(gaps) if gaps else float("nan")
    return got, gap, computed, span, {"cold run": cold_served, "cached rerun": served}


def interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Median and its bootstrap interval (harness.RESAMPLES resamples, fixed seed)."""
    rng = random.Random(harness.SEED)
    stats = sorted(
        harness.median(rng.choices(values, k=len(values))) for _ in range(harness.RESAMPLES)
    )
    tail = (1 - level) / 2
    return (
        harness.median(values),
        stats[int(tail * (harness.RESAMPLES - 1))],
        stats[round((1 - tail) * (harness.RESAMPLES - 1))],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default="breast_cancer_mlp")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    harness.pin_threads(args.threads)
    before = harness.header("cli_latency")
    spec = ROOT / "pipelines" / f"{args.pipeline}.yaml"
    samples: dict[str, list[harness.Sample]] = {name: [] for name in FIGURES}
    gaps = []
    spans = []
    recomputed: list[list[str]] = []
    by_the_worker: list[dict[str, bool]] = []  # which commands the warm worker served
    with tempfile.TemporaryDirectory(prefix="trainflow-cli-") as tmp:
        for run in range(args.runs):
            got, gap, computed, span, served = one_run(spec, Path(tmp) / f"run{run}")
            by_the_worker.append(served)
            for name, sample in got.items():
                samples[name].append(sample)
            gaps.append(gap)
            spans.append(span)
            shown = ", ".join(f"{n} {s.wall_s:.2f} s" for n, s in got.items())
            print(
                f"# run {run + 1}: {shown}, cached task {gap * 1e3:.0f} ms, the rerun's flow "
                f"run {span:.2f} s of its wall; not Cached in the rerun: {', '.join(computed)}",
                flush=True,
            )
            recomputed.append(computed)
    print("| figure | wall s, median (95 %) | CPU s, median (95 %) |\n|---|---|---|")
    result = {}
    for name, runs in samples.items():
        wall, cpu = (interval([getattr(s, m) for s in runs]) for m in ("wall_s", "cpu_s"))
        result[name] = {"wall_s": wall, "cpu_s": cpu, "runs": [s.__dict__ for s in runs]}
        print(
            f"| {name} | {wall[0]:.2f} ({wall[1]:.2f}-{wall[2]:.2f}) | "
            f"{cpu[0]:.2f} ({cpu[1]:.2f}-{cpu[2]:.2f}) |"
        )
    task = interval([g for g in gaps if g == g] or [float("nan")])  # nan: nothing was Cached
    result["cached task"] = {"wall_s": task, "runs": gaps}
    print(f"| cached task | {task[0] * 1e3:.0f} ms ({task[1] * 1e3:.0f}-{task[2] * 1e3:.0f}) | |")
    flow_span = interval(spans)
    result["rerun flow run"] = {"wall_s": flow_span, "runs": spans}
    print(
        f"| the rerun's flow run (server's span) | {flow_span[0]:.2f} "
        f"({flow_span[1]:.2f}-{flow_span[2]:.2f}) | |"
    )
    harness.finish(
        "cli_latency",
        before,
        {
            "pipeline": args.pipeline,
            "runs": args.runs,
            "threads": args.threads,
            "figures": result,
            "not_cached_in_rerun": recomputed,
            "served_by_warm_worker": by_the_worker,
        },
    )


if __name__ == "__main__":
    main()
