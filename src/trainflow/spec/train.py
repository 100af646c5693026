"""Train section: optimizer, learning rate, batch size, epochs, early stopping, device."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, PositiveInt, model_validator

from trainflow import registry
from trainflow.spec import fit_on as fitting
from trainflow.spec.augment import AugmentSpec
from trainflow.spec.base import MAX_BATCH, MAX_EPOCHS, MAX_STEPS, Section
from trainflow.spec.distributed import Distributed, ddp_refusal
from trainflow.spec.loader import LoaderSpec
from trainflow.spec.loss import LossSpec
from trainflow.spec.metric_table import MONITORS, monitor_mode
from trainflow.spec.optimizers import AdamParams
from trainflow.spec.qat import QatSpec, qat_train_refusal

# The unions of the registry's kinds: a new optimizer or schedule is one line there.
if TYPE_CHECKING:  # built at run time from the registry's tables: opaque to mypy
    Optimizer = Any
    Schedule = Any
    Monitor = str
else:
    Optimizer = registry.union(registry.OPTIMIZERS)
    Schedule = registry.union(registry.SCHEDULES)
    Monitor = Literal[MONITORS]  # the metric table's names (trainflow.spec.metric_table)


class GradClip(Section):
    """Clip gradients before each optimizer step: by their global L2 norm, or each value."""

    max_norm: float | None = Field(None, gt=0)
    value: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_kind(self):
        if (self.max_norm is None) == (self.value is None):
            raise ValueError("give grad_clip either max_norm or value")
        return self


class EarlyStopping(Section):
    """Stop when `monitor` has not improved by more than `min_delta` for `patience` epochs;
    the epoch it was best at gives best.pt (the model every later step uses). Its direction
    (`mode`) follows from the metric (trainflow.spec.metric_table): lower for the losses,
    higher for the others."""

    monitor: Monitor = Field(
        "val_loss",
        description="the validation metric that picks the best epoch: "
        + ", ".join(MONITORS)
        + " (the loop computes it each epoch, beside val_loss and val_accuracy)",
    )
    patience: PositiveInt = 5
    min_delta: float = Field(0.0, ge=0.0)

    @property
    def mode(self) -> Literal["min", "max"]:
        return monitor_mode(self.monitor)


class Pretrained(Section):
    """Weights to start from: a trainflow model folder (e.g. a run's model artifact), a
    trainflow checkpoint or a plain PyTorch state dict, loaded with weights_only=True."""

    path: str
    replace_head: bool = Field(
        False,
        description="keep the output layer fresh (a new number "
        "of classes); every other key must match",
    )


class Distill(Section):
    """Train against a teacher's soft targets: loss = alpha * T^2 * KL(teacher || student at
    temperature T) + (1 - alpha) * the hard-label loss."""

    teacher: str = Field(..., description="a trained model folder (model.json + best.pt)")
    temperature: float = Field(4.0, gt=0, le=100)
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the soft (teacher) loss")


class Adversarial(Section):
    """Adversarial training: a `ratio` of each batch is replaced by FGSM or PGD examples
    within `epsilon` (max-norm, in the units of the normalized inputs)."""

    method: Literal["fgsm", "pgd"] = "pgd"
    epsilon: float = Field(..., gt=0)
    steps: int | None = Field(
        None, gt=0, le=1000, description="PGD steps (default 7; FGSM takes one)"
    )
    step_size: float | None = Field(
        None, gt=0, description="PGD step (default 2.5 * epsilon / steps)"
    )
    ratio: float = Field(0.5, gt=0, le=1, description="fraction of each batch attacked")

    @model_validator(mode="after")
    def _fgsm_one_step(self):
        if self.method == "fgsm" and (self.steps is not None or self.step_size is not None):
            raise ValueError(
                "fgsm takes one step of size epsilon: drop steps and step_size (or use method: pgd)"
            )
        return self


class LogSpec(Section):
    """What training records besides the per-epoch rows of metrics.jsonl."""

    every_steps: int = Field(
        0,
        ge=0,
        description="also a metrics.jsonl row (step, epoch, "
        "loss, lr, grad_norm) every N optimizer steps (0: per epoch only)",
    )
    tensorboard: str | None = Field(
        None,
        description="a folder for TensorBoard event files "
        "(a subfolder per run); needs trainflow[tensorboard]",
    )


class DebugSpec(Section):
    """Model debugging output, per epoch, in debug.jsonl (and TensorBoard when on)."""

    layer_norms: bool = Field(
        False, description="each parameter's weight norm and its mean gradient norm over the epoch"
    )
    dead_units: bool = Field(
        False,
        description="per ReLU layer, the fraction of units that never fire on the validation set",
    )
    detect_anomaly: bool = Field(
        False,
        description="autograd anomaly detection: a NaN in "
        "the backward pass stops training naming the operation "
        "(slow: debugging only)",
    )


class BatchRamp(Section):
    """Start with a small batch and grow it linearly to batch_size over the first epochs."""

    start: PositiveInt
    epochs: int = Field(..., gt=0, le=MAX_EPOCHS)


class AutoBatch(Section):
    """Find the largest batch (batch_size x 2^k) whose training step fits in memory_mb."""

    memory_mb: float = Field(..., gt=0, description="memory budget of a training step")
    max: int = Field(8192, gt=0, le=MAX_BATCH, description="upper bound of the search")


class Swa(Section):
    """Stochastic weight averaging (torch.optim.swa_utils): from `start_epoch` on, the
    learning rate anneals to `lr` (SWALR) and the weights at each epoch's end join a running
    average; batch-norm statistics are recomputed over the training rows at the end. The
    averaged weights are the model evaluated and packaged."""

    start_epoch: PositiveInt
    lr: float = Field(..., gt=0, le=10, description="the SWA learning rate (SWALR's swa_lr)")
    anneal_epochs: PositiveInt = Field(1, description="epochs SWALR takes to reach `lr`")


class Ema(Section):
    """An exponential moving average of the weights (and buffers), updated after every
    optimizer step: avg = decay * avg + (1 - decay) * weights. The average is the model
    evaluated and packaged."""

    decay: float = Field(..., gt=0, lt=1)


class TrainSpec(Section):
    optimizer: Optimizer = Field(default_factory=lambda: AdamParams(type="adamw"))
    lr: float = Field(1e-3, gt=0, le=10)
    schedule: Schedule | None = None
    weight_decay: float = Field(0.0, ge=0)
    no_decay: list[Literal["bias", "norm"]] = Field(
        default_factory=list, description="parameters without weight decay: biases, norm layers"
    )
    lr_multipliers: dict[str, float] = Field(
        default_factory=dict,
        description="parameter-name glob -> factor on lr (e.g. a lower "
        "lr for a pretrained backbone: {'0.*': 0.1})",
    )
    l1: float = Field(0.0, ge=0, description="L1 penalty on weights (not biases) in the loss")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    loss: LossSpec | None = Field(
        None, description="default: cross_entropy for a classification, mse for a regression"
    )
    target_scaling: Literal["standard", "none"] = Field(
        "standard",
        description="regression: standard trains on (y - mean) / std of the training rows' "
        "target (every metric and prediction in the target's own units); none: as given",
    )
    batch_size: int = Field(64, gt=0, le=MAX_BATCH)
    batch_ramp: BatchRamp | None = None
    auto_batch: AutoBatch | None = Field(
        None, description="search the largest batch that fits, starting from batch_size"
    )
    accumulate: int = Field(1, gt=0, le=4096, description="batches per optimizer step")
    tbptt: PositiveInt | None = Field(
        None,
        description="truncated backpropagation through time (recurrent models): the "
        "gradient flows through the last `tbptt` steps of each sequence; the state over the "
        "steps before them is computed without a graph and detached",
    )
    grad_clip: GradClip | None = None
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="mixed precision: bf16 autocast (CPU or CUDA), fp16 with a grad "
        "scaler (CUDA only); auto: bf16 where the device has bf16 units and a short probe of "
        "the model measures it faster, else fp32 (the choice is remembered per machine and "
        "model, and recorded in model.json)",
    )
    threads: Literal["auto"] | Annotated[int, Field(ge=1, le=1024)] = Field(
        "auto",
        description="torch threads while training; auto: one, or all usable cores "
        "where a short probe of the model measures them faster (remembered per machine and "
        "model, recorded in model.json)",
    )
    epochs: int = Field(20, gt=0, le=MAX_EPOCHS)
    max_steps: int | None = Field(
        None,
        gt=0,
        le=MAX_STEPS,
        description="stop after this many optimizer steps (epochs is then an upper bound)",
    )
    class_weights: Literal["none", "balanced"] = Field(
        "none", description="balanced: weight each class's loss by n / (classes * count)"
    )
    sampler: Literal["shuffle", "weighted"] = Field(
        "shuffle", description="weighted: draw rows with replacement, classes equally likely"
    )
    augment: AugmentSpec | None = None
    early_stopping: EarlyStopping | None = None
    checkpoint_every: int = Field(1, ge=0, description="Write last.pt every N epochs (0: at end)")
    checkpoint_every_steps: int = Field(
        0,
        ge=0,
        description="also write last.pt every N optimizer steps, mid-epoch (0: off); "
        "a resume continues from the batch position, bit-identical to an uninterrupted run",
    )
    keep_last: int = Field(
        2,
        ge=1,
        le=100,
        description="resumable checkpoints kept while "
        "training (last.pt, last.prev.pt, last.prev2.pt, ...); a damaged "
        "one falls back to the next older",
    )
    checkpoint_interval_s: float = Field(
        30.0, ge=0, description="...but at most once per this many seconds (0: no limit)"
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    compile: bool = Field(
        False,
        description="run the model through torch.compile (the "
        "first steps pay for compilation; needs a C++ compiler on CPU)",
    )
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    deterministic: bool = Field(
        False,
        description="torch deterministic algorithms only (an "
        "error where an op has none; slower on CUDA)",
    )
    loader: LoaderSpec = Field(default_factory=LoaderSpec)
    pretrained: Pretrained | None = Field(
        None,
        description="start from these weights (a warm start); without it, a fresh initialization",
    )
    freeze: list[str] = Field(
        default_factory=list, description="parameter-name globs (e.g. '0.*') that do not train"
    )
    unfreeze: dict[PositiveInt, list[str]] = Field(
        default_factory=dict,
        description="epoch -> globs of `freeze` that train from that epoch on (gradual unfreezing)",
    )

    distill: Distill | None = None
    adversarial: Adversarial | None = None
    task_weights: dict[str, float] = Field(
        default_factory=dict,
        description="multi-task: loss weight of each auxiliary target's "
        "head (data.source.aux_targets), 1 when not given; the main target weighs 1",
    )
    log: LogSpec = Field(default_factory=LogSpec)
    debug: DebugSpec = Field(default_factory=DebugSpec)
    swa: Swa | None = None
    ema: Ema | None = None
    fit_on: Literal["train", "train+validation"] = Field(
        "train",
        description="the parts the model trains on: train (validation picks the best epoch "
        "and early-stops), or train+validation (the data steps fitted on both, a fixed "
        "fit_epochs, the last epoch the model; the CV folds are unchanged): trainflow.spec.fit_on",
    )
    fit_epochs: int | None = Field(
        None, gt=0, le=MAX_EPOCHS, description="epochs on train+validation (default: epochs)"
    )

    distributed: Distributed | None = Field(
        None, description="data-parallel training across processes (DDP): trainflow.engine.ddp"
    )
    qat: QatSpec | None = Field(
        None, description="quantization-aware training for compress.quantize static_int8"
    )

    @model_validator(mode="after")
    def _qat_knobs(self):  # train.qat: its epochs, and what it is not built to run with
        reason = qat_train_refusal(self)
        if reason:
            raise ValueError(reason)
        return self

    @model_validator(mode="after")
    def _distributed_knobs(self):
        reason = ddp_refusal(self)
        if reason:
            raise ValueError(reason)
        return self

    @model_validator(mode="after")
    def _fit_on_knobs(self):
        reason = fitting.train_refusal(self)
        if reason:
            raise ValueError(reason)
        return self

    @model_validator(mode="after")
    def _one_average(self):
        if self.swa and self.ema:
            raise ValueError("swa and ema both average the weights into one model: choose one")
        if self.swa and self.swa.start_epoch > self.epochs:
            raise ValueError(
                f"swa.start_epoch ({self.swa.start_epoch}) is after the last epoch "
                f"(epochs: {self.epochs}): no weights would be averaged; start at an epoch "
                f"from 1 to {self.epochs}"
            )
        return self

    @model_validator(mode="after")
    def _ramp_below_batch_size(self):
        if self.batch_ramp and self.batch_ramp.start >= self.batch_size:
            raise ValueError(
                f"batch_ramp.start ({self.batch_ramp.start}) must be below "
                f"batch_size ({self.batch_size})"
            )
        if self.batch_ramp and self.auto_batch:
            raise ValueError("batch_ramp and auto_batch both set the batch size: choose one")
        return self

    @model_validator(mode="before")
    @classmethod
    def _start_was_removed(cls, data):
        # `start: cold|warm` repeated what `pretrained` says; a spec that still sets it is told
        # the fix rather than getting pydantic's bare "extra inputs are not permitted".
        if isinstance(data, dict) and "start" in data:
            raise ValueError(
                f"train.start ({data['start']!r}) was removed: `pretrained` alone "
                "says how training starts. Delete `start`; for a warm start give "
                "pretrained: {path: ...}, for a cold one leave pretrained out"
            )
        return data

    def content_paths(self) -> list[Path]:
        """The files training reads besides the data (pretrained weights, a teacher): their
        bytes enter the cache key (trainflow.caching), so a changed file is never served."""
        paths = [Path(self.pretrained.path)] if self.pretrained else []
        return paths + ([Path(self.distill.teacher)] if self.distill else [])

    @model_validator(mode="after")
    def _precision_on_device(self):
        if self.precision == "fp16" and self.device in ("cpu", "mps"):
            raise ValueError(
                f"precision fp16 needs a CUDA device (device is {self.device}); use bf16 on CPU"
            )
        return self

    on_corrupt: Literal["error", "skip"] = Field(
        "error",
        description="a training shard that fails its sha256: stop, or skip it and "
        "report the samples lost",
    )
