"""Interrupt a training right after its optimizer step N, from outside the loop (the loop has
no hook for tests): torch's global optimizer-step hook counts the steps, and torch's global
forward pre-hook acts at the first forward pass after step N (the next batch, or the epoch's
validation). By then the loop has done all it does after a step: its checkpoint is written,
or handed to the background writer, and its per-step row is logged."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from torch.nn.modules.module import register_module_forward_pre_hook
from torch.optim.optimizer import register_optimizer_step_post_hook


@contextmanager
def after_step(step: int, action: Callable[[], None]) -> Iterator[None]:
    """Run `action` once, as the first forward pass after optimizer step `step` begins."""
    steps, fired = [0], [False]

    def count(optimizer, args, kwargs) -> None:
        steps[0] += 1

    def act(module, args) -> None:
        if steps[0] == step and not fired[0]:
            fired[0] = True
            action()

    counting = register_optimizer_step_post_hook(count)
    acting = register_module_forward_pre_hook(act)
    try:
        yield
    finally:
        counting.remove()
        acting.remove()


# For a training in other processes (torchrun's ranks): a sitecustomize module on the
# children's PYTHONPATH, which every Python process imports at start-up (a standard Python
# feature: nothing in trainflow knows of it). In the rank named, the optimizer-step hook above
# stops the rank for good inside step N: the run can go no further, while the background
# checkpoint writer finishes the save it was handed. A test then kills the run at that point,
# whatever the machine's load (polling a file for a moment is a race the run can win).
_FREEZE = '''\
"""tests/interrupt.py's freeze: rank {rank} stops inside its optimizer step {step}."""
import os

if os.environ.get("RANK") == "{rank}":
    import time
    from pathlib import Path

    from torch.optim.optimizer import register_optimizer_step_post_hook

    _steps = [0]

    def _freeze(optimizer, args, kwargs):
        _steps[0] += 1
        if _steps[0] == {step}:
            Path({marker!r}).write_text(str(os.getpid()))
            while True:  # until the test's kill (torchrun's SIGTERM)
                time.sleep(3600)

    register_optimizer_step_post_hook(_freeze)
'''


def frozen_at_step(folder: Path, step: int, rank: int = 0) -> tuple[dict[str, str], Path]:
    """An environment for a child process whose torchrun rank `rank` stops inside optimizer
    step `step` (its sitecustomize is written into `folder`), and the file that rank writes
    once stopped."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / "frozen"
    code = _FREEZE.format(rank=rank, step=step, marker=str(marker))
    (folder / "sitecustomize.py").write_text(code)
    paths = [str(folder), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}, marker


def descendants(pid: int) -> list[int]:
    """The process ids under `pid` (Linux /proc), children before their own."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:  # it ended meanwhile
            continue
        for child in map(int, children):
            found += [child, *descendants(child)]
    return found


def wait_gone(pids: list[int], timeout: float = 120) -> None:
    """Wait until none of `pids` runs any more (a zombie counts as gone)."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                break
            if state in ("Z", "X"):
                break
            time.sleep(0.05)
    left = [pid for pid in pids if Path(f"/proc/{pid}").exists() and _alive(pid)]
    assert not left, f"processes {left} still run {timeout:.0f} s after their parent's kill"


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False
