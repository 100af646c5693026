"""The rules every benchmark here follows, in one place, so that its figures hold on a busy machine.

- The machine is printed first: load average, CPU model and the flags that decide which kernels
  run (AVX2, AVX-512, bf16, AMX), core count, the thread settings. The load average is printed
  again at the end.
- Threads are pinned (`pin_threads`): OMP/MKL/OpenBLAS variables for child processes, torch's
  intra-op pool and the BLAS pools of this process, so no contender gets a different pool size.
- Contenders run interleaved, each once per run (`interleave`), the order rotated by one each
  run (AB BA AB... for two), so each contender runs first equally often. A change in the
  neighbours' load then reaches every contender alike.
- The run count is fixed before the first run and there is no retry: a benchmark reports what
  its runs measured.
- Each run measures wall time and CPU time: the process's CPU time (all its threads, plus the
  children it waited for) for work done here, or a fresh subprocess's rusage (`run_process`) for
  what a user waits for from a command.
- A comparison is the median of the per-run ratios (contender / baseline, paired by run) with a
  bootstrap interval over the pairs (2,000 resamples, fixed seed): `paired_ratio`.
- The result is printed as a table and as one JSON line (the last line of the output).
"""

from __future__ import annotations

import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

# The flags that decide which kernels torch, oneDNN and ONNX Runtime pick on x86.
FLAGS = (
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "neon",
    "asimd",
    "sve",
)
# POLARS_MAX_THREADS only takes effect in a process that has not imported polars yet.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "POLARS_MAX_THREADS",
)
SEED = 0
RESAMPLES = 2000


@dataclass(frozen=True)
class Sample:
    """One contender's one run."""

    wall_s: float
    cpu_s: float


def cpu() -> dict:
    """CPU model, core count and which of FLAGS /proc/cpuinfo lists (empty where it is absent)."""
    info = {
        "model": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "flags": [],
    }
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    fields: dict[str, str] = {}
    for line in text.splitlines():  # the first processor's block is enough
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    present = set((fields.get("flags") or fields.get("Features") or "").split())
    info["model"] = fields.get("model name", info["model"])
    info["flags"] = [flag for flag in FLAGS if flag in present]
    return info


def threads() -> dict:
    """The thread settings in force: the variables, and torch's pools where torch is loaded."""
    info = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        info["torch_interop_threads"] = torch.get_num_interop_threads()
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        info["torch"] = torch.__version__
    return info


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def pin_threads(count: int) -> int:
    """Pin every thread pool to `count`: child processes through the variables, this one directly.

    Set before numpy or torch is imported where possible (OpenMP reads the variables once); the
    calls below fix the pools of libraries already loaded.
    """
    for name in THREAD_VARIABLES:
        os.environ[name] = str(count)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(count)
        try:
            torch.set_num_interop_threads(count)
        except RuntimeError:  # only settable before torch's first parallel work
            pass
    if "numpy" in sys.modules:
        try:
            from threadpoolctl import threadpool_limits

            threadpool_limits(count)
        except ImportError:
            pass
    return count


def machine() -> dict:
    """What `header` prints and the JSON result carries."""
    return {
        "load_average": load_average(),
        "cpu": cpu(),
        "threads": threads(),
        "python": platform.python_version(),
    }


def header(name: str) -> dict:
    """Print the machine before the runs (one line a field) and return it for the result."""
    info = machine()
    print(f"# {name}", flush=True)
    print(f"# load average (1, 5, 15 min) before: {info['load_average']}")
    print(
        f"# CPU: {info['cpu']['model']}, {info['cpu']['cpus']} logical CPUs, "
        f"flags: {' '.join(info['cpu']['flags']) or 'none of ' + ' '.join(FLAGS)}"
    )
    print(f"# threads: {json.dumps(info['threads'])}", flush=True)
    return info


def measure(fn: Callable[[], object]) -> tuple[Sample, object]:
    """Wall and CPU time of one call in this process (all threads, and children waited for)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall, cpu_start = time.perf_counter(), time.process_time()
    value = fn()
    wall, cpu_s = time.perf_counter() - wall, time.process_time() - cpu_start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s += (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    return Sample(wall, cpu_s), value


def run_process(
    argv: Sequence[str], env: dict | None = None, cwd: str | Path | None = None
) -> tuple[Sample, str]:
    """A fresh process, as a user starts it: its wall time, its own rusage (user + system, and
    that of the children it waited for) and its standard output.

    Output goes to files, not pipes, so a chatty command cannot block on a full pipe while we
    wait for it. A failing command raises with the end of its output.
    """
    with tempfile.TemporaryFile(mode="w+") as out, tempfile.TemporaryFile(mode="w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), env=env, cwd=cwd, stdout=out, stderr=err, text=True)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C: do not leave the command running on its own
            proc.kill()
            proc.wait()
            raise
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped: Popen must not wait
        out.seek(0)
        err.seek(0)
        text, errors = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, argv))} exited {proc.returncode}:\n{(text + errors)[-3000:]}"
        )
    return Sample(wall, usage.ru_utime + usage.ru_stime), text


def order(names: Sequence[str], run: int) -> list[str]:
    """The contenders' order in run `run`: rotated by one each run (AB BA AB... for two)."""
    names = list(names)
    shift = run % len(names)
    return names[shift:] + names[:shift]


def interleave(
    contenders: dict[str, Callable[[], Sample]], runs: int, warmup: int = 1
) -> dict[str, list[Sample]]:
    """Run every contender once per run, in `order`, for a fixed number of runs.

    Each callable does one run and returns its Sample (from `measure` or `run_process`), so a
    contender may prepare things outside the measured part. `warmup` interleaved rounds come
    first and are not kept (first-call allocations, page cache, lazy imports).
    """
    if runs < 2:
        raise ValueError(f"runs={runs}: a paired comparison needs at least 2 runs")
    samples: dict[str, list[Sample]] = {name: [] for name in contenders}
    for run in range(-warmup, runs):
        for name in order(list(contenders), run):
            sample = contenders[name]()
            if run >= 0:
                samples[name].append(sample)
    return samples


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def paired_ratio(
    contender: Sequence[float],
    baseline: Sequence[float],
    level: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> dict:
    """Median of the per-run ratios contender/baseline and its bootstrap interval (pairs kept)."""
    if len(contender) != len(baseline) or len(contender) < 2:
        raise ValueError("paired_ratio needs two equally long lists of at least 2 runs")
    ratios = [a / b for a, b in zip(contender, baseline)]
    rng = random.Random(seed)
    stats = sorted(median(rng.choices(ratios, k=len(ratios))) for _ in range(resamples))
    tail = (1 - level) / 2
    low = stats[int(tail * (resamples - 1))]
    high = stats[round((1 - tail) * (resamples - 1))]
    return {"median": median(ratios), "low": low, "high": high, "level": level, "runs": len(ratios)}


def summarize(samples: dict[str, list[Sample]], baseline: str) -> dict:
    """Per contender: median wall and CPU seconds; against the baseline, both paired ratios."""
    out = {}
    for name, runs in samples.items():
        row = {
            "wall_s": median([s.wall_s for s in runs]),
            "cpu_s": median([s.cpu_s for s in runs]),
            "runs": [asdict(s) for s in runs],
        }
        if name != baseline:
            for metric in ("wall_s", "cpu_s"):
                row[f"{metric[:-2]}_ratio"] = paired_ratio(
                    [getattr(s, metric) for s in runs],
                    [getattr(s, metric) for s in samples[baseline]],
                )
        out[name] = row
    return out


def _ratio_text(r: dict) -> str:
    return f"{r['median']:.3f} ({r['low']:.3f}-{r['high']:.3f})"


def table(summary: dict, unit: float = 1.0, unit_name: str = "s") -> str:
    """Markdown table: medians and the paired ratios with their 95 % intervals."""
    head = (
        f"| contender | wall {unit_name} (median) | CPU {unit_name} (median) | "
        "wall / baseline (95 %) | CPU / baseline (95 %) |"
    )
    lines = [head, "|---|---|---|---|---|"]
    for name, row in summary.items():
        wall = _ratio_text(row["wall_ratio"]) if "wall_ratio" in row else "baseline"
        cpu_r = _ratio_text(row["cpu_ratio"]) if "cpu_ratio" in row else "baseline"
        lines.append(
            f"| {name} | {row['wall_s'] / unit:.4g} | {row['cpu_s'] / unit:.4g} | "
            f"{wall} | {cpu_r} |"
        )
    return "\n".join(lines)


def finish(name: str, before: dict, result: dict) -> dict:
    """Print the load average after the runs and the one-line JSON result (the last line)."""
    after = load_average()
    print(f"# load average (1, 5, 15 min) after: {after}")
    line = {"benchmark": name, "machine": before, "load_average_after": after, **result}
    print(json.dumps(line, separators=(",", ":"), default=str), flush=True)
    return line


def conclude(
    name: str,
    before: dict,
    samples: dict[str, list[Sample]],
    baseline: str,
    unit: float = 1.0,
    unit_name: str = "s",
    **extra,
) -> dict:
    """The usual ending: the table, the load average after, the JSON line."""
    summary = summarize(samples, baseline)
    print(table(summary, unit, unit_name))
    return finish(name, before, {"baseline": baseline, "summary": summary, **extra})


def prepared_shards(spec, store: str):
    """The spec's data steps run in process, as the prepare-data flow runs them (ingest, the
    steps before the split, the split, the steps after it), ending in its shards' artifact.
    trainflow is imported here: a benchmark points Prefect at its home before that."""
    from trainflow import registry
    from trainflow.tasks.ingest import ingest
    from trainflow.tasks.shard import shard

    table = ingest.fn(spec.data.source, store)
    for params in spec.data.pre_split:
        table = registry.STEPS[params.type].impl.fn(table, params, spec.seed, store)
    splits = registry.STEPS["split"].impl.fn(table, spec.data.split, spec.seed, store)
    for params in spec.data.post_split:
        splits = registry.STEPS[params.type].impl.fn(splits, params, spec.seed, store)
    return shard.fn(splits, spec.data.shard, store, spec.seed)
