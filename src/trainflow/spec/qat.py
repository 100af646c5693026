"""train.qat: quantization-aware training (trainflow.engine.qat trains it, the quantize step
converts it), and what it cannot hold, said at validation."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PositiveInt

from trainflow.spec.base import Section

QAT_MODELS = ("mlp", "cnn")  # the static int8 families (spec.compress.STATIC_INT8_MODELS)


class QatSpec(Section):
    """From `start_epoch` on, the network trains with fake quantization (torch.ao FX
    prepare_qat_fx, static int8's qconfig on `backend`), so its weights learn to survive int8;
    compress.quantize static_int8 then converts the trained network (convert_fx) instead of
    calibrating it. Best-epoch tracking (and early stopping's patience) restarts at the
    switch: the package is the converted QAT model, so only QAT epochs can be it. Early
    stopping before start_epoch does not end the run: it brings the switch forward to the next
    epoch (fake-quantized fine-tuning of the converged fp32 network)."""

    start_epoch: PositiveInt = Field(
        ...,
        description="the first epoch trained with fake quantization (1: all of them), or "
        "the epoch after early stopping ends the fp32 epochs, if sooner",
    )
    freeze_bn_epoch: PositiveInt | None = Field(
        None,
        description="from this epoch on, batch-norm running statistics stop updating (the "
        "int8 model folds them into the convolutions); default: never",
    )
    freeze_observers_epoch: PositiveInt | None = Field(
        None,
        description="from this epoch on, the activation and weight ranges (scale, zero "
        "point) stop updating and training adapts to them; default: never",
    )
    backend: Literal["x86"] = Field(
        "x86", description="the int8 engine; must be compress.quantize's backend"
    )


def qat_train_refusal(train: Any) -> str | None:
    """Why train.qat cannot hold with the rest of the train section, or None."""
    qat = train.qat
    if qat is None:
        return None
    pooled = train.fit_on == "train+validation" and train.fit_epochs
    last = train.fit_epochs if pooled else train.epochs  # (what the loop runs)
    for name in ("start_epoch", "freeze_bn_epoch", "freeze_observers_epoch"):
        epoch, first = getattr(qat, name), 1 if name == "start_epoch" else qat.start_epoch
        if epoch is not None and epoch > last:
            return (
                f"qat.{name} ({epoch}) is after the last epoch (epochs: {last}): it would "
                f"never take effect; give an epoch from {first} to {last}"
            )
    for name in ("freeze_bn_epoch", "freeze_observers_epoch"):
        epoch = getattr(qat, name)
        if epoch is not None and epoch < qat.start_epoch:
            return (
                f"qat.{name} ({epoch}) is before qat.start_epoch ({qat.start_epoch}), when "
                f"there is nothing quantized to freeze: give an epoch from {qat.start_epoch}"
            )
    if train.precision in ("bf16", "fp16"):
        return (
            f"qat trains with fake quantization in fp32 (torch.ao's fake-quant kernels take no "
            f"{train.precision}), and train.precision is {train.precision}: set it to fp32 or "
            "auto (auto is fp32 under qat)"
        )
    clash = [
        (train.distributed, f"distributed ({getattr(train.distributed, 'strategy', '')})"),
        (train.compile, "compile"),
        (train.swa, "swa"),
        (train.ema, "ema"),
        (train.freeze or train.unfreeze, "freeze/unfreeze"),
    ]
    for on, name in clash:
        if on:
            return (
                f"qat is built for one process training the network itself, and train.{name} "
                f"is set (it would hold the network before fake quantization replaces it): "
                f"remove train.{name.split(' ')[0]} or train.qat"
            )
    return None


def qat_refusal(spec: Any) -> str | None:
    """Why train.qat cannot hold with the model and compress sections, or None."""
    qat = spec.train.qat
    if qat is None:
        return None
    if spec.model.type not in QAT_MODELS:
        return (
            f"train.qat trains for static int8, which takes the {' and '.join(QAT_MODELS)} "
            f"families; model.type is {spec.model.type} (no int8 kernels for its layers): "
            "remove train.qat (compress.quantize dynamic_int8 quantizes its Linear layers)"
        )
    quantize = spec.compress.quantize
    if quantize is not None and quantize.type == "auto":  # its static_int8 candidate converts
        quantize = next((m for m in quantize.methods if m.type == "static_int8"), quantize)
    if quantize is None or quantize.type != "static_int8":
        found = "none" if quantize is None else quantize.type
        return (
            f"train.qat trains for the static int8 conversion and compress.quantize is "
            f"{found}: set compress.quantize to {{type: static_int8}} (or auto with "
            "static_int8 among its methods), or remove train.qat"
        )
    if quantize.backend != qat.backend:
        return (
            f"train.qat.backend {qat.backend!r} differs from compress.quantize.backend "
            f"{quantize.backend!r}: the conversion needs the engine QAT trained for; set both "
            "alike"
        )
    if quantize.keep_fp32 or quantize.fallback != "none":
        return (
            "compress.quantize.keep_fp32 and fallback choose fp32 layers after training, and "
            "train.qat trained every layer for int8: remove them, or remove train.qat"
        )
    return None
