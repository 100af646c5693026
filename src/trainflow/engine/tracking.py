"""What training reports besides its weights: metrics.jsonl (per-epoch rows, and per-step
rows when asked), TensorBoard event files, and model debugging output (debug.jsonl).

metrics.jsonl and debug.jsonl hold only what the seed determines, so a rerun writes the same
bytes (the model artifact is content-addressed); wall-clock numbers (seconds, samples per
second) go to the Prefect run and TensorBoard instead.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn

from trainflow.errors import TrainflowError

DEAD_UNIT_ACTIVATIONS = (nn.ReLU,)


def tensorboard_writer(folder: str | Path):
    """A TensorBoard event-file writer (tensorboardX: no TensorFlow, no tensorboard server
    needed to write; view with `tensorboard --logdir FOLDER`)."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise TrainflowError(
            "train.log.tensorboard needs the tensorboardX package: "
            "pip install 'trainflow[tensorboard]'"
        ) from None
    return SummaryWriter(str(folder), flush_secs=10)


class Tracker:
    """Writes the rows of one training run; `steps` are the per-step rows so far (kept in
    checkpoints, so a resumed run's log is complete)."""

    def __init__(
        self,
        out_dir: Path | None,
        tensorboard: str | None,
        every_steps: int,
        history: list[dict],
        steps: list[dict],
    ):
        self.every_steps, self.steps = every_steps, steps
        # open for the whole run (closed by close()): rows are written as they come
        self.log = open(out_dir / "metrics.jsonl", "w") if out_dir else None  # noqa: SIM115
        if self.log is not None:  # a resumed run's log holds its earlier rows
            for row in self._in_order(history, steps):
                self.log.write(json.dumps(row) + "\n")
        self.debug: TextIO | None = None
        if tensorboard:
            run = f"{time.strftime('%Y%m%dT%H%M%S')}-{out_dir.name if out_dir else 'run'}"
            self.board = tensorboard_writer(Path(tensorboard) / run)
        else:
            self.board = None

    @staticmethod
    def _in_order(history: list[dict], steps: list[dict]) -> list[dict]:
        """Step rows before the epoch row that closes their epoch."""
        out, pending = [], list(steps)
        for row in history:
            while pending and pending[0]["epoch"] <= row["epoch"]:
                out.append(pending.pop(0))
            out.append(row)
        return out + pending

    def wants_step(self, step: int) -> bool:
        return bool(self.every_steps) and step % self.every_steps == 0

    def step(self, row: dict) -> None:
        self.steps.append(row)
        if self.log:
            self.log.write(json.dumps(row) + "\n")
        if self.board:
            for key in ("loss", "lr", "grad_norm"):
                if key in row:
                    self.board.add_scalar(f"step/{key}", row[key], row["step"])

    def epoch(self, row: dict, seconds: float, samples: int) -> None:
        if self.log:
            self.log.write(json.dumps(row) + "\n")
        if self.board:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self.board.add_scalar(f"epoch/{key}", value, row["epoch"])
            self.board.add_scalar("epoch/samples_per_s", samples / max(seconds, 1e-9), row["epoch"])

    def debug_row(self, out_dir: Path | None, row: dict) -> None:
        if out_dir is None:
            return
        if self.debug is None:
            self.debug = open(out_dir / "debug.jsonl", "w")  # noqa: SIM115
        self.debug.write(json.dumps(row) + "\n")
        if self.board:
            for name, norms in row.get("layers", {}).items():
                for key, value in norms.items():
                    self.board.add_scalar(f"debug/{key}/{name}", value, row["epoch"])
            for name, value in row.get("dead_units", {}).items():
                self.board.add_scalar(f"debug/dead_units/{name}", value, row["epoch"])

    def close(self) -> None:
        for handle in (self.log, self.debug, self.board):
            if handle is not None:
                handle.close()


class GradientNorms:
    """Per-parameter gradient L2 norms, averaged over the optimizer steps of an epoch."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, model: nn.Module) -> None:
        norms = {
            n: p.grad.detach().norm() for n, p in model.named_parameters() if p.grad is not None
        }
        values = torch.stack(list(norms.values())).tolist() if norms else []
        for name, value in zip(norms, values):
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.count += 1

    def take(self) -> dict[str, float]:
        means = {n: s / max(self.count, 1) for n, s in self.sums.items()}
        self.sums, self.count = {}, 0
        return means

    def state_dict(self) -> dict:
        return {"sums": dict(self.sums), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.sums, self.count = dict(state["sums"]), state["count"]


def layer_report(model: nn.Module, grads: dict[str, float]) -> dict[str, dict[str, float]]:
    """Per parameter: its weight norm and its mean gradient norm over the epoch."""
    out = {}
    for name, param in model.named_parameters():
        out[name] = {"weight_norm": float(param.detach().norm())}
        if name in grads:
            out[name]["grad_norm"] = grads[name]
    return out


@torch.no_grad()
def dead_units(
    model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 256
) -> dict[str, float]:
    """Per ReLU module: the fraction of its units (features, or channels of a feature map)
    that output zero for every one of the samples `x` (dead ReLUs)."""
    alive: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, DEAD_UNIT_ACTIVATIONS):

            def record(_module, _inputs, output, name=name):
                units = output.detach().transpose(0, 1).reshape(output.shape[1], -1)
                active = (units > 0).any(dim=1)
                alive[name] = alive[name] | active if name in alive else active

            hooks.append(module.register_forward_hook(record))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(x), batch_size):
            model(x[start : start + batch_size].to(device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return {name: 1.0 - active.float().mean().item() for name, active in alive.items()}


def debug_report(
    model: nn.Module,
    layer_grads: GradientNorms | None,
    val_x: torch.Tensor | None,
    device: torch.device,
) -> dict:
    """debug.jsonl's row for an epoch: per-parameter weight and gradient norms (when
    measured), and the fraction of dead ReLU units on the validation inputs `val_x`."""
    out: dict[str, Any] = {}
    if layer_grads is not None:
        out["layers"] = layer_report(model, layer_grads.take())
    if val_x is not None and len(val_x):
        out["dead_units"] = dead_units(model, val_x, device)
    return out
