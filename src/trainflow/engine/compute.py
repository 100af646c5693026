"""Compute defaults that fit the machine: the torch thread count and autocast precision that
`train.threads: auto` and `train.precision: auto` resolve to.

A short probe times forward/backward steps of a copy of the model on a real batch at each
candidate (1 and all usable threads; fp32, and bf16 where the device has bf16 units),
interleaved, and keeps the baseline (one thread, fp32) unless a candidate is clearly faster.
The choice is remembered per (CPU model and flags, torch version, usable cores, device,
architecture, batch shape) in a small JSON file per key, so two runs of a spec on one machine
choose alike and give the same bytes, whatever the machine's load at the second run. The
cache key of a training holds the spec's `auto`, not the choice: keys stay the same across
machines, and the model folder (model.json) records what was used.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import os
import platform
import random
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from trainflow.engine.data import Split
from trainflow.errors import TrainflowError
from trainflow.spec.train import TrainSpec

PROBE_ROUNDS = 9  # timed measurements per candidate (after two warm-up steps), interleaved
MIN_MEASURE_S = 0.02  # a measurement repeats a fast step up to this long, so timer noise fades
MIN_ROUNDS, BUDGET_S = 3, 3.0  # past 3 rounds, no new round starts after 3 s of probing
LOSER = 3.0  # a candidate this many times slower than the baseline at warm-up is out
MARGIN = 0.9  # a candidate must take under 90 % of the baseline's step time to be chosen
PROBE_VERSION = 5  # bump when the probe or its rule changes, so old choices are not reused


@dataclass(frozen=True)
class Choice:
    """What a training used; `threads_spec` / `precision_spec` are what the spec said."""

    threads: int
    precision: str
    threads_spec: int | str
    precision_spec: str


def usable_cores() -> int:
    """Cores this process may run on, capped by OMP_NUM_THREADS when the user set it (an
    environment that asks for one thread gets one)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cap = os.environ.get("OMP_NUM_THREADS", "")
    return max(1, min(cores or 1, int(cap))) if cap.isdigit() and int(cap) > 0 else cores or 1


def cpu_identity() -> dict:
    """The CPU model and its feature flags (from /proc/cpuinfo where there is one)."""
    model, flags = platform.processor() or platform.machine(), list[str]()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model in ("", platform.machine()):
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = sorted(value.split())
    except OSError:
        pass
    return {"model": model, "flags": flags}


def bf16_units(device: torch.device) -> bool:
    """Whether the device computes bf16 natively (emulated bf16 is many times slower)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool({"avx512_bf16", "amx_bf16"} & set(cpu_identity()["flags"]))
    return False


def cache_dir() -> Path:
    """Where probe results live: per machine (not per store), so runs in two stores on one
    machine choose alike. TRAINFLOW_COMPUTE_CACHE moves it."""
    env = os.environ.get("TRAINFLOW_COMPUTE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "trainflow" / "compute"


def candidates(threads: int | str, precision: str, device: torch.device) -> list[tuple[int, str]]:
    """(threads, precision) pairs to probe; the first is the baseline."""
    cores = usable_cores()
    thread_options = (
        [threads]
        if threads != "auto"
        else (
            [1, cores]
            if device.type == "cpu" and cores > 1
            else [cores if device.type != "cpu" else 1]
        )
    )
    precision_options = (
        [precision]
        if precision != "auto"
        else (
            ["fp32", "bf16"] if device.type in ("cpu", "cuda") and bf16_units(device) else ["fp32"]
        )
    )
    return [(int(t), p) for p in precision_options for t in thread_options]


def resolve(
    net: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    threads: int | str,
    precision: str,
    device: torch.device,
) -> Choice:
    """The threads and precision to train `net` with: the spec's values, or for `auto` the
    remembered (else probed) fastest."""
    options = candidates(threads, precision, device)
    if len(options) == 1:
        return Choice(*options[0], threads, precision)
    key = probe_key(net, batch, options, device)
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        chosen = remembered(folder, key, lambda: probe(net, batch, options, device))
    except OSError as exc:
        raise TrainflowError(
            f"train.threads / train.precision auto: cannot keep the probe's choice in {folder} "
            f"({exc.strerror or exc}); set TRAINFLOW_COMPUTE_CACHE to a writable folder, or "
            "give train.threads and train.precision explicitly"
        ) from None
    return Choice(int(chosen["threads"]), chosen["precision"], threads, precision)


def remembered(folder: Path, key: str, measure_now) -> dict:
    """The choice recorded under `key`, measured and recorded first when there is none; two
    runs at once probe once (the second waits on the lock, then reads)."""
    path = folder / f"{key}.json"
    with open(folder / f"{key}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            write_json(path, measure_now())
        return json.loads(path.read_text())


def probe(
    net: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    options: list[tuple[int, str]],
    device: torch.device,
) -> dict:
    relative = measure(net, batch, options, device)
    best = pick(options, relative)
    return {
        "threads": best[0],
        "precision": best[1],
        "cpu": cpu_identity()["model"],
        "torch": torch.__version__,
        "step_time_vs_baseline": {f"{t}/{p}": round(s, 4) for (t, p), s in zip(options, relative)},
    }


def pick(options: list[tuple[int, str]], seconds: list[float]) -> tuple[int, str]:
    """The fastest candidate if it beats the baseline (the first) by the margin, else the
    baseline: a near tie keeps one thread and fp32, the choice that never loses much.
    `seconds` are step times, absolute or relative to the baseline's."""
    best = min(range(len(options)), key=seconds.__getitem__)
    return options[best] if seconds[best] < MARGIN * seconds[0] else options[0]


def probe_key(
    net: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    options: list[tuple[int, str]],
    device: torch.device,
) -> str:
    described = {
        "probe": PROBE_VERSION,
        "cpu": cpu_identity(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "options": options,
        "architecture": repr(net),
        "parameters": sum(p.numel() for p in net.parameters()),
        "batch": [list(batch[0].shape), str(batch[0].dtype)],
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:24]


def measure(
    net: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    options: list[tuple[int, str]],
    device: torch.device,
) -> list[float]:
    """Step time of each candidate relative to the baseline's (the first: 1.0), the median of
    per-round ratios of forward/backward steps on a copy of the model, the candidates
    interleaved per round so that a burst of load falls on all of them alike. A
    candidate over LOSER times the baseline after the warm-up round is not timed further (it
    has lost; this bounds the probe). The global RNG and thread count are left as they were:
    the run's bytes do not see the probe."""
    before = torch.get_num_threads()
    times: list[list[float]] = [[] for _ in options]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        probe = copy.deepcopy(net).to(device).train()
        x, y = batch[0].to(device), batch[1].to(device)
        try:
            # two warm-up steps each: the first of a kind builds its kernels (bf16's are slow
            # to build), the second says what a step costs
            warm = [
                [steps_seconds(probe, x, y, option, device, 1) for _ in range(2)][1]
                for option in options
            ]
            reps = max(1, min(50, round(MIN_MEASURE_S / max(warm[0], 1e-6))))
            alive = [i for i, s in enumerate(warm) if i == 0 or s < LOSER * warm[0]]
            started = time.perf_counter()
            for round_ in range(PROBE_ROUNDS):
                if round_ >= MIN_ROUNDS and time.perf_counter() - started > BUDGET_S:
                    break  # a big model: fewer rounds, so the probe stays short
                # a fixed shuffle per round: no candidate always follows the same other one
                # (a step after a two-thread one runs slow on a busy two-core machine)
                for i in random.Random(round_).sample(alive, len(alive)):
                    times[i].append(steps_seconds(probe, x, y, options[i], device, reps))
        finally:
            torch.set_num_threads(before)
    # each round's time over the baseline's time in the same round: load that comes and goes
    # falls on both sides of a ratio
    return [
        statistics.median(a / b for a, b in zip(t, times[0])) if t else warm[i] / warm[0]
        for i, t in enumerate(times)
    ]


def steps_seconds(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    option: tuple[int, str],
    device: torch.device,
    reps: int,
) -> float:
    """Seconds per forward/backward step at (threads, precision), over `reps` steps; fast
    steps after an untimed one (the first step after a change of thread count pays for it)."""
    torch.set_num_threads(option[0])
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(option[1])
    untimed = 1 if reps > 1 else 0  # a slow step dwarfs what a change of threads costs
    for rep in range(reps + untimed):
        if rep == untimed:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(net(x).float(), y)
        loss.backward()
        net.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / reps


def write_json(path: Path, value: dict) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(value, indent=1, sort_keys=True))
    os.replace(temporary, path)


_threads_lock = threading.Lock()
_threads_users = 0
_threads_before = 0


@contextmanager
def threads_set(count: int) -> Iterator[None]:
    """torch's thread count at `count` while the block runs, restored after the last of the
    blocks open at once ends (folds train in threads of one process, and torch's count is the
    process's)."""
    global _threads_users, _threads_before
    with _threads_lock:
        if _threads_users == 0:
            _threads_before = torch.get_num_threads()
        _threads_users += 1
        torch.set_num_threads(count)
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0:
                torch.set_num_threads(_threads_before)


def probe_batch(
    x: torch.Tensor, y: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A training-sized batch of real rows (repeated when there are fewer)."""
    repeats = -(-batch_size // max(len(x), 1))
    return x.repeat(repeats, *[1] * (x.dim() - 1))[:batch_size], y.repeat(repeats)[:batch_size]


def record(choice: Choice) -> dict:
    return asdict(choice)


def choose(net: nn.Module, train: TrainSpec, val: Split, device: torch.device) -> Choice:
    """What `train` resolves to for `net` on `device`, probing on a batch of validation rows
    (always in memory, streamed training or not)."""
    # train.qat: fake quantization trains in fp32 (torch.ao's fake-quant kernels take no bf16)
    precision = "fp32" if train.qat and train.precision == "auto" else train.precision
    return resolve(
        net, probe_batch(val.x, val.y, train.batch_size), train.threads, precision, device
    )


def applied(train: TrainSpec, choice: Choice) -> TrainSpec:
    """The spec the loop trains with: `auto` replaced by what it resolved to."""
    return train.model_copy(update={"threads": choice.threads, "precision": choice.precision})
