"""Weight averaging (train.swa, train.ema) with torch.optim.swa_utils: the averaged model and
SWA's learning-rate schedule are pieces of the training state; the average is the model a
training ends with (evaluated, checkpointed as best.pt, packaged)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel, get_ema_multi_avg_fn, update_bn

from trainflow.errors import TrainflowError
from trainflow.spec.train import TrainSpec


def averaged_model(model: nn.Module, spec: TrainSpec) -> AveragedModel | None:
    """train.swa: an equal-weight average of the epochs' weights (batch norm recomputed at
    the end); train.ema: an exponential moving average of weights and buffers per step."""
    if spec.ema:
        return AveragedModel(
            model, multi_avg_fn=get_ema_multi_avg_fn(spec.ema.decay), use_buffers=True
        )
    return AveragedModel(model) if spec.swa else None


def swa_schedule(optimizer: torch.optim.Optimizer, spec: TrainSpec) -> SWALR | None:
    """SWALR: from swa.start_epoch, the learning rate anneals to swa.lr (stepped per epoch;
    built now, it leaves the rate as it is until then)."""
    if not spec.swa:
        return None
    return SWALR(optimizer, swa_lr=spec.swa.lr, anneal_epochs=spec.swa.anneal_epochs)


def average_epoch(averaged: AveragedModel, swa_lr: SWALR, model: nn.Module) -> None:
    """At the end of an SWA epoch: the weights join the average, SWALR takes its step."""
    averaged.update_parameters(model)
    swa_lr.step()


def final_weights(
    spec: TrainSpec,
    averaged: AveragedModel,
    batches: Iterable,
    device: torch.device,
    last_epoch: int,
) -> dict[str, torch.Tensor]:
    """The averaged weights a training ends with; for SWA, batch-norm statistics recomputed
    over the training rows (update_bn) first, without touching the run's generators."""
    if int(averaged.n_averaged.item()) == 0:
        start = spec.swa.start_epoch if spec.swa else 1
        raise TrainflowError(
            f"train.swa: training stopped at epoch {last_epoch}, before swa.start_epoch "
            f"({start}), so no weights were averaged: lower swa.start_epoch, or let training "
            "reach it (early_stopping.patience, max_steps)"
        )
    if spec.swa:
        with torch.random.fork_rng(devices=[]):
            update_bn(batches, averaged, device)
    return {k: v.detach().clone().cpu() for k, v in averaged.module.state_dict().items()}
