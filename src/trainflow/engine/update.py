"""How a batch turns into a loss and batches into optimizer steps: accumulation, clipping, L1,
label smoothing, class weights, mixed precision, truncated BPTT, adversarial examples,
distillation, multi-task heads and a step budget.

`Update` is configuration only, fixed when it is built; what changes while training (the
step count, the gradient norms, the grad scaler, the schedule) lives in the TrainingState
that `step` advances."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from trainflow.engine.adversarial import attack
from trainflow.engine.data import weighted_loss
from trainflow.engine.state import TrainingState
from trainflow.engine.target_scale import Regression
from trainflow.errors import TrainflowError
from trainflow.spec.train import Adversarial, GradClip, Swa, TrainSpec

# "auto" reaches here only when the loop is called directly, not through train_into
# (which resolves it, engine.compute): it trains at fp32, the reproducible baseline.
PRECISION = {"fp32": None, "auto": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Update:
    accumulate: int = 1
    clip: GradClip | None = None
    l1: float = 0.0
    label_smoothing: float = 0.0
    class_weights: torch.Tensor | None = None
    precision: torch.dtype | None = None
    device: torch.device = torch.device("cpu")
    max_steps: int | None = None
    tbptt: int | None = None
    adversarial: Adversarial | None = None
    distiller: Callable | None = None  # (hard loss, student logits, x) -> loss
    task_weights: dict[str, float] | None = None  # multi-task: auxiliary head -> loss weight
    log_every: int = 0  # measure the gradient norm on these steps (per-step rows)
    ema: bool = False  # train.ema: the average follows every optimizer step
    swa: Swa | None = None  # train.swa: its epochs run SWALR instead of the schedule
    regression: Regression | None = None  # a numeric target: its loss and scaling

    @classmethod
    def from_spec(
        cls,
        spec: TrainSpec,
        device: torch.device,
        class_weights: torch.Tensor | None = None,
        task_weights: dict[str, float] | None = None,
        distiller: Callable | None = None,
        regression: Regression | None = None,
    ) -> Update:
        if spec.precision == "fp16" and device.type != "cuda":
            raise TrainflowError(
                f"train.precision: fp16 needs a CUDA device, training runs on "
                f"{device.type}; use bf16 (autocast) on CPU"
            )
        return cls(
            spec.accumulate,
            spec.grad_clip,
            spec.l1,
            spec.label_smoothing,
            class_weights,
            PRECISION[spec.precision],
            device,
            spec.max_steps,
            spec.tbptt,
            spec.adversarial,
            distiller,
            task_weights,
            spec.log.every_steps,
            spec.ema is not None,
            spec.swa,
            regression,
        )

    def swa_phase(self, epoch: int) -> bool:
        """An epoch of train.swa's: the average and SWALR run it, not the schedule."""
        return self.swa is not None and epoch >= self.swa.start_epoch

    def done(self, steps: int) -> bool:
        return self.max_steps is not None and steps >= self.max_steps

    def autocast(self):
        if self.precision is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.precision)

    def loss(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        w: torch.Tensor | None,
        mix: Callable | None = None,
    ) -> tuple[torch.Tensor, int]:
        """The batch's loss (before the L1 term) and its main-target sample count."""
        aux = None
        if y.dim() == 2:  # multi-task labels: the main target, then the auxiliary ones
            y, aux = y[:, 0], y[:, 1:]
        with self.autocast():
            x = self.perturb(model, x, y)  # adversarial examples, when declared
            if mix is not None:  # mixup: a convex blend of pairs, and of their losses
                x, y, partner, lam = mix(x, y)
                out = self.forward(model, x)
                loss = lam * self.criterion(out, y, w) + (1 - lam) * self.criterion(out, partner, w)
            elif aux is not None and self.task_weights is not None:
                out, heads = model(x, heads=True)
                loss = self.criterion(out, y, w) + sum(
                    weight * nn.functional.cross_entropy(heads[task].float(), aux[:, i])
                    for i, (task, weight) in enumerate(self.task_weights.items())
                )
            else:
                out = self.forward(model, x)
                loss = self.criterion(out, y, w)
            if self.distiller:  # soft targets from the teacher
                loss = self.distiller(loss, out, x)
        return loss, len(y)

    def criterion(self, out: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        """The declared loss: a regression's on its scaled target, else cross-entropy (with
        class weights and label smoothing)."""
        if self.regression is not None:
            return self.regression.loss_of(out, y, w)
        return weighted_loss(out, y, self.class_weights, w, self.label_smoothing)

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The model's output; with truncated BPTT, the recurrent state over all but the last
        `tbptt` steps is computed without a graph and detached, so backpropagation through
        time stops `tbptt` steps from the end (memory and time bounded by the window)."""
        if not self.tbptt or x.shape[1] <= self.tbptt:
            return model(x)
        with torch.no_grad():
            _, state = model(x[:, : -self.tbptt], return_state=True)
        state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
        return model(x[:, -self.tbptt :], state=state)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial training: the first `ratio` of the batch replaced by attacks on it."""
        if self.adversarial is None:
            return x
        a = self.adversarial
        k = max(1, round(a.ratio * len(y)))
        adv = attack(model, x[:k], y[:k], a.method, a.epsilon, a.steps, a.step_size)
        return torch.cat([adv, x[k:]]) if k < len(y) else adv

    def penalty(self, model: nn.Module) -> torch.Tensor | float:
        """The L1 term: l1 x the sum of |w| over weight matrices and kernels (not biases)."""
        if not self.l1:
            return 0.0
        return self.l1 * sum(p.abs().sum() for p in model.parameters() if p.dim() > 1)

    def backward(
        self, model: nn.Module, loss: torch.Tensor, scaler: torch.amp.GradScaler | None = None
    ) -> None:
        """Accumulate this batch's share of the gradient of one optimizer step (with the L1
        term). The ops a knob that is off would add are left out: they cost per batch."""
        if self.l1:
            loss = loss + self.penalty(model)
        if self.accumulate > 1:
            loss = loss / self.accumulate
        (scaler.scale(loss) if scaler else loss).backward()

    def step(self, state: TrainingState) -> float | None:
        """Clip, step (through the grad scaler under fp16), clear, advance the schedule and
        the step count; the gradient norm when this step measured it."""
        model, optimizer, scaler = state.model, state.optimizer, state.scaler
        if scaler:
            scaler.unscale_(optimizer)
        norm = None
        if self.clip and self.clip.max_norm:
            norm = float(nn.utils.clip_grad_norm_(model.parameters(), self.clip.max_norm))
            state.position.grad_norms.append(norm)
        elif self.log_every and (state.steps + 1) % self.log_every == 0:
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            norm = float(nn.utils.get_total_norm(grads)) if grads else 0.0
        if state.layer_grads is not None:
            state.layer_grads.add(model)
        if self.clip and self.clip.value:
            nn.utils.clip_grad_value_(model.parameters(), self.clip.value)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if state.scheduler and not self.swa_phase(state.epoch):
            state.scheduler.step()
        if self.ema and state.averaged is not None:
            state.averaged.update_parameters(model)  # train.ema
        state.steps += 1
        return norm


def grad_scaler(spec: TrainSpec) -> torch.amp.GradScaler | None:
    """fp16 keeps its small gradients representable by scaling the loss (CUDA only)."""
    return torch.amp.GradScaler("cuda") if spec.precision == "fp16" else None
