"""What a training writes while it runs: last.pt on its schedule (per epoch, per step, at
most once per interval, in the background; the first one as soon as it is due), the tracker's
rows and, at the end, best.pt."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from trainflow.engine import checkpoint
from trainflow.engine.setup import Setup
from trainflow.engine.state import TrainingState
from trainflow.engine.tracking import Tracker, debug_report


class Outputs:
    def __init__(
        self,
        out_dir: Path | None,
        run: Setup,
        state: TrainingState,
        on_epoch: Callable[[dict], None] | None = None,
    ):
        spec = run.spec
        # fsdp: every rank writes its shards of each checkpoint into out_dir (engine.fsdp)
        self.shared = out_dir if run.world.sharded else None
        out_dir = out_dir if run.world.writes else None  # DDP: rank 0 alone writes
        self.out_dir, self.run, self.state, self.on_epoch = out_dir, run, state, on_epoch
        self.every, self.every_steps = spec.checkpoint_every, spec.checkpoint_every_steps
        self.interval, self.keep = spec.checkpoint_interval_s, spec.keep_last
        self.tracker = Tracker(
            out_dir,
            spec.log.tensorboard if run.world.writes else None,
            spec.log.every_steps,
            state.run.history,
            state.run.step_rows,
        )
        self.writer = checkpoint.BackgroundWriter() if out_dir else None
        # The interval spaces checkpoints out; it does not delay the first: a run stopped
        # after its first due point (the end of epoch 1 by default, or the first
        # checkpoint_every_steps step) resumes from there, not from epoch 1. A small model's
        # checkpoint costs milliseconds, and a big one's first save is one save.
        self.saved_at, self.saved_epoch = -math.inf, 0
        self.pooled: dict | None = None

    def __enter__(self) -> Outputs:
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.writer:
                self.writer.close()
        finally:
            self.tracker.close()

    def _due(self, every: int, count: int) -> bool:
        return (
            self.writer is not None
            and bool(every)
            and count % every == 0
            and time.monotonic() - self.saved_at >= self.interval
        )

    def _save(self) -> None:
        if self.shared is not None:  # fsdp: a checkpoint folder, every rank its shards
            from trainflow.engine import fsdp

            state = self.state
            fsdp.save(self.shared / "last.dcp", state.model, state.optimizer, self.saved_state())
        else:
            assert self.writer is not None and self.out_dir is not None  # (_due says so)
            self.writer.save(self.out_dir / "last.pt", self.saved_state(), self.keep)
        self.saved_at = time.monotonic()

    def saved_state(self) -> dict:
        """last.pt: the training state and the world size it ran on (a resume on another
        is refused: engine.ddp.check_world)."""
        saved = {**self.state.state_dict(), "world_size": self.run.world.size}
        if saved["position"] and self.pooled:  # mid-epoch under DDP: the sums of all ranks
            saved["position"] = {**saved["position"], **self.pooled}
        return saved

    def after_step(self, loss: torch.Tensor, grad_norm: float | None) -> None:
        """train.checkpoint_every_steps (a diverged run is never saved) and train.log's
        per-step rows."""
        state, world = self.state, self.run.world
        due = self._due(self.every_steps, state.steps)
        if self.every_steps and world.size > 1:  # DDP: every rank follows rank 0's choice
            due = world.agree(due)
        if due:
            state.position.mean_loss()  # raises for a diverged run
            self.pooled = world.pooled(state.position)  # DDP: every rank's rows so far
            if self.writer or self.shared:
                self._save()
        if self.tracker.wants_step(state.steps):
            self.tracker.step(
                {
                    "step": state.steps,
                    "epoch": state.epoch,
                    "loss": float(loss),
                    "lr": state.optimizer.param_groups[0]["lr"],
                    **({"grad_norm": grad_norm} if grad_norm is not None else {}),
                }
            )

    def after_epoch(self, row: dict, seconds: float) -> None:
        """The epoch's row, its debug row (train.debug), the caller's `on_epoch` (with the
        wall-clock figures metrics.jsonl leaves out) and train.checkpoint_every."""
        run, state = self.run, self.state
        self.tracker.epoch(row, seconds, len(run.train))
        debug = run.spec.debug
        if debug.layer_norms or debug.dead_units:
            self.tracker.debug_row(
                self.out_dir,
                {
                    "epoch": state.epoch,
                    **debug_report(
                        state.model,
                        state.layer_grads,
                        run.val.x if debug.dead_units else None,
                        run.update.device,
                    ),
                },
            )
        if self.on_epoch:
            self.on_epoch({**row, "seconds": seconds, "samples_per_s": len(run.train) / seconds})
        due = self._due(self.every, state.epoch)
        if self.shared is not None:  # fsdp: every rank saves its shards when rank 0 is due
            due = run.world.agree(due)
        if due:
            self._save()
            self.saved_epoch = state.epoch

    def finish(self, best_state: dict, best_epoch: int, **extra: dict) -> None:
        """last.pt of the last epoch (when its schedule skipped it), best.pt (with `extra`'s
        pieces: train.qat's prepared state), and only last.pt kept of the rotation."""
        whole = None
        if self.shared is not None:  # fsdp: last.pt whole, gathered from every rank's shards
            from trainflow.engine import fsdp

            whole = fsdp.gathered(self.state.model, self.state.optimizer)
        if self.out_dir is None or self.writer is None:
            return
        self.writer.wait()
        last = self.out_dir / "last.pt"
        if whole is not None and self.state.run.history:
            checkpoint.save_rotating(last, {**self.saved_state(), **whole}, self.keep)
        elif self.saved_epoch != self.state.epoch and self.state.run.history:
            checkpoint.save_rotating(last, self.saved_state(), self.keep)
        best = {"model": best_state, "epoch": best_epoch, **extra}
        checkpoint.save(self.out_dir / "best.pt", best)
        checkpoint.drop_rotation(last)
