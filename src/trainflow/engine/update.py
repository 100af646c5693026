"""The optimizer update and the knobs around it: accumulation, clipping, L1, label smoothing,
mixed precision, the per-step schedule and a step budget."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from trainflow.errors import TrainflowError
from trainflow.engine.adversarial import attack
from trainflow.engine.tracking import GradientNorms
from trainflow.spec.train import Adversarial, GradClip, TrainSpec

# "auto" reaches here only when the loop is called directly, not through train_into
# (which resolves it, engine.compute): it trains at fp32, the reproducible baseline.
PRECISION = {"fp32": None, "auto": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Update:
    """How batches turn into optimizer steps. `steps` counts optimizer steps over the run."""

    accumulate: int = 1
    clip: GradClip | None = None
    l1: float = 0.0
    label_smoothing: float = 0.0
    precision: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    max_steps: int | None = None
    tbptt: int | None = None
    adversarial: Adversarial | None = None
    distiller: Callable | None = None  # (hard loss, student logits, x) -> loss
    task_weights: dict[str, float] | None = None  # multi-task: auxiliary head -> loss weight
    log_every: int = 0  # measure the gradient norm on these steps (per-step rows)
    steps: int = 0
    grad_norms: list[float] = field(default_factory=list)
    last_loss: torch.Tensor | None = None  # the latest batch's loss, for per-step rows
    last_grad_norm: float | None = None  # the latest step's gradient norm, when measured
    layer_grads: GradientNorms | None = None  # per-parameter norms, when debugging

    @classmethod
    def from_spec(cls, spec: TrainSpec, device: torch.device,
                  scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> Update:
        dtype = PRECISION[spec.precision]
        if spec.precision == "fp16" and device.type != "cuda":
            raise TrainflowError(f"train.precision: fp16 needs a CUDA device, training runs on "
                                 f"{device.type}; use bf16 (autocast) on CPU")
        scaler = torch.amp.GradScaler("cuda") if spec.precision == "fp16" else None
        return cls(spec.accumulate, spec.grad_clip, spec.l1, spec.label_smoothing, dtype,
                   scaler, scheduler, spec.max_steps, spec.tbptt, spec.adversarial,
                   log_every=spec.log.every_steps,
                   layer_grads=GradientNorms() if spec.debug.layer_norms else None)

    @property
    def done(self) -> bool:
        return self.max_steps is not None and self.steps >= self.max_steps

    def autocast(self, device: torch.device):
        if self.precision is None:
            return nullcontext()
        return torch.autocast(device.type, dtype=self.precision)

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The model's output; with truncated BPTT, the recurrent state over all but the last
        `tbptt` steps is computed without a graph and detached, so backpropagation through
        time stops `tbptt` steps from the end (memory and time bounded by the window)."""
        if not self.tbptt or x.shape[1] <= self.tbptt:
            return model(x)
        with torch.no_grad():
            _, state = model(x[:, :-self.tbptt], return_state=True)
        state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
        return model(x[:, -self.tbptt:], state=state)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial training: the first `ratio` of the batch replaced by attacks on it."""
        if self.adversarial is None:
            return x
        a = self.adversarial
        k = max(1, round(a.ratio * len(y)))
        adv = attack(model, x[:k], y[:k], a.method, a.epsilon, a.steps, a.step_size)
        return torch.cat([adv, x[k:]]) if k < len(y) else adv

    def distill(self, hard: torch.Tensor, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.distiller(hard, out, x) if self.distiller else hard

    def penalty(self, model: nn.Module) -> torch.Tensor | float:
        """The L1 term: l1 x the sum of |w| over weight matrices and kernels (not biases)."""
        if not self.l1:
            return 0.0
        return self.l1 * sum(p.abs().sum() for p in model.parameters() if p.dim() > 1)

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate this batch's share of the gradient of one optimizer step."""
        scaled = loss / self.accumulate
        (self.scaler.scale(scaled) if self.scaler else scaled).backward()

    def step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Clip, step (through the grad scaler under fp16), clear, advance the schedule."""
        if self.scaler:
            self.scaler.unscale_(optimizer)
        self.last_grad_norm = None
        if self.clip and self.clip.max_norm:
            norm = nn.utils.clip_grad_norm_(model.parameters(), self.clip.max_norm)
            self.grad_norms.append(float(norm))
            self.last_grad_norm = self.grad_norms[-1]
        elif self.log_every and (self.steps + 1) % self.log_every == 0:
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            self.last_grad_norm = float(nn.utils.get_total_norm(grads)) if grads else 0.0
        if self.layer_grads is not None:
            self.layer_grads.add(model)
        if self.clip and self.clip.value:
            nn.utils.clip_grad_value_(model.parameters(), self.clip.value)
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if self.scheduler:
            self.scheduler.step()
        self.steps += 1
