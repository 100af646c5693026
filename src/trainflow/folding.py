"""A package's fitted numeric data steps as tensor operations, for an exported graph.

The steps that are elementwise on numeric columns (clean's numeric fill values, outliers'
clip bounds, normalize's shift/scale and log1p, anomalies' zscore/iqr flag) become small
modules run in float64 in front of the network, so that a serving runtime feeds the raw
numeric columns. Turning text into numbers (clean's fill of a text column, encode) cannot
live in a float graph: it stays outside, described step by step for the runtime, which
applies it first. Since those steps act on text columns only and the folded ones on numeric
columns only, doing the outside work first changes no value. A numeric step that needs more
than the value itself (quantile normalize, smooth's windows over rows, forward/backward fill)
is refused by name: a runtime would have to re-implement it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from trainflow.errors import TrainflowError
from trainflow.package import PackageStep
from trainflow.spec.steps import ANOMALY_FLAG as FLAG
from trainflow.spec.steps import one_hot_name
from trainflow.tables import IMAGE_COLUMN, TableSchema

INF = float("inf")


class ExportError(TrainflowError):
    """A model package that cannot be exported in the format asked for."""


def _kind(polars_type: str) -> str:
    if polars_type == "String":
        return "text"
    if polars_type.startswith(("Int", "UInt")):
        return "int"
    if polars_type.startswith("Float") or polars_type == "Boolean":
        return "float"  # a Boolean column enters as 0/1, filled like a number
    return "other"


@dataclass
class Plan:
    """Where each value the network reads comes from: graph inputs (in order), what the
    runtime does before the graph (`outside`), and the folded operations (`ops`, on column
    names), walked from the package's steps as the predictor applies them."""

    features: list[str]
    kinds: dict[str, str]
    image_shape: list[int] | None
    outside: list[dict[str, Any]] = field(default_factory=list)
    ops: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    folded: list[dict[str, Any]] = field(default_factory=list)
    derived: list[str] = field(default_factory=list)  # columns the graph computes itself
    touched: set[str] = field(default_factory=set)  # columns a folded operation changed

    @property
    def inputs(self) -> list[str]:
        return [c for c in self.features if c not in self.derived]


def plan(table: TableSchema, columns: dict[str, str], steps: list[PackageStep]) -> Plan:
    """The plan for rows passing `steps` (a member's: the shared ones, then its own)."""
    kinds = {
        c: "image" if c == IMAGE_COLUMN and table.image_shape else _kind(t)
        for c, t in columns.items()
    }
    odd = [f"{c} ({columns[c]})" for c in table.features if kinds.get(c) == "other"]
    if odd:
        raise ExportError(
            f"feature columns {odd} are neither numbers nor text, which an "
            "exported graph's float input cannot carry"
        )
    result = Plan(list(table.features), kinds, table.image_shape)
    for index, step in enumerate(steps):
        handler = _HANDLERS.get(step.type)
        if handler is None:
            raise ExportError(
                f"the {step.type} step of the package cannot be folded into an exported graph"
            )
        handler(
            result,
            step.params,
            step.state,
            f"the package's {step.type} step (number {index + 1} that rows pass)",
        )
    return result


def _clean(p: Plan, params: dict, state: dict, where: str) -> None:
    if params["missing"] in ("forward_fill", "backward_fill"):
        raise ExportError(
            f"{where} fills a missing value from the neighbouring rows "
            f"(missing: {params['missing']}), which a graph scoring rows one by "
            "one cannot do: retrain with missing: median, mean, mode or constant"
        )
    numeric = {}
    for column, value in state.get("fill", {}).items():
        if isinstance(value, str):
            p.outside.append(
                {
                    "step": "clean",
                    "column": column,
                    "fill_missing": value,
                    "do": f"replace a missing {column!r} with {value!r}",
                }
            )
        elif value is not None and column in p.kinds:
            numeric[column] = float(value)
            p.kinds[column] = "float"  # a filled integer column holds floats from here on
    _fold(p, "fill", numeric, {"step": "clean", "what": "fill missing values"})


def _encode(p: Plan, params: dict, state: dict, where: str) -> None:
    for column, categories in state["categories"].items():
        if column not in p.features:
            continue
        if column in p.touched:
            raise ExportError(
                f"{where} encodes column {column!r} after a folded step changed "
                "it, so the runtime's outside work would come after the graph's"
            )
        rule = {
            "unknown": params["unknown"],
            "step": "encode",
            "column": column,
            "method": params["method"],
            "categories": categories,
        }
        position = p.features.index(column)
        if params["method"] == "ordinal":
            p.outside.append(
                {
                    **rule,
                    "columns": [column],
                    "do": (
                        f"replace {column!r} by the index of its value in categories (-1 for a "
                        "missing or unseen value)"
                    ),
                }
            )
            p.kinds[column] = "int"
            continue
        names = [one_hot_name(column, c) for c in categories]
        p.outside.append(
            {
                **rule,
                "columns": names,
                "do": (
                    f"replace {column!r} by one 0/1 column per category, named "
                    f"'{column}=<category>' (all 0 for a missing or unseen value)"
                ),
            }
        )
        p.features[position : position + 1] = names
        p.kinds.update(dict.fromkeys(names, "float"))


def _normalize(p: Plan, params: dict, state: dict, where: str) -> None:
    method = params["method"]
    if method == "quantile":
        raise ExportError(
            f"{where} is normalize with method quantile: its interpolation "
            "through the training quantiles is not folded into exported graphs "
            "(use standard, minmax, robust, max_abs or log1p to export)"
        )
    columns = (
        [f"channel_{i}" for i in range(p.image_shape[0])] if p.image_shape else list(p.features)
    )
    text = [c for c in columns if p.kinds.get(c) == "text"]
    if text:
        raise ExportError(f"{where} scales text columns {text}")
    if method == "log1p":
        _fold(
            p,
            "log1p",
            dict.fromkeys(columns, True),
            {"step": "normalize", "what": "sign(x) * log1p(|x|)"},
        )
    else:
        _fold(
            p,
            "affine",
            {c: (state["shift"][c], state["scale"][c]) for c in columns},
            {"step": "normalize", "what": f"{method}: (x - shift) / scale"},
        )
    p.kinds.update({c: "float" for c in columns if c in p.kinds})


def _outliers(p: Plan, params: dict, state: dict, where: str) -> None:
    if params["action"] != "clip":
        return  # drop: every row to score passes as it is
    bounds = {c: (lo, hi, p.kinds.get(c) == "int") for c, (lo, hi) in state["bounds"].items()}
    _fold(p, "clip", bounds, {"step": "outliers", "what": "clip to the fitted bounds"})


def _anomalies(p: Plan, params: dict, state: dict, where: str) -> None:
    if params["action"] != "flag":
        return  # report, drop: every row to score passes as it is
    if "bounds" not in state:
        raise ExportError(
            f"{where} flags rows with a fitted {params['method']} detector, which no package holds"
        )
    _fold(
        p,
        "flag",
        {c: tuple(b) for c, b in state["bounds"].items()},
        {
            "step": "anomalies",
            "what": f"add the 0/1 column {FLAG!r}: any value outside its fitted bounds",
        },
    )
    if FLAG not in p.features:
        p.features.append(FLAG)
        p.derived.append(FLAG)


def _smooth(p: Plan, params: dict, state: dict, where: str) -> None:
    raise ExportError(
        f"{where} is smooth: its rolling windows read the neighbouring rows "
        "(order_by/group_by), which a graph scoring rows one by one cannot"
    )


def _fold(p: Plan, kind: str, per_column: dict[str, Any], summary: dict[str, Any]) -> None:
    if not per_column:
        return
    p.ops.append((kind, per_column))
    p.touched.update(per_column)
    p.folded.append({**summary, "columns": list(per_column)})


_HANDLERS = {
    "clean": _clean,
    "encode": _encode,
    "normalize": _normalize,
    "outliers": _outliers,
    "anomalies": _anomalies,
    "smooth": _smooth,
}


# ---- the plan as modules --------------------------------------------------------------


class _Fill(nn.Module):
    def __init__(self, mask: torch.Tensor, value: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)
        self.register_buffer("value", value)

    def forward(self, x):
        return torch.where(torch.isnan(x) & self.mask, self.value, x)


class _Clip(nn.Module):
    """polars clips an integer column to bounds cast to its type: the clipped float,
    truncated, is the same number."""

    def __init__(self, low: torch.Tensor, high: torch.Tensor, truncate: torch.Tensor):
        super().__init__()
        self.register_buffer("low", low)
        self.register_buffer("high", high)
        self.register_buffer("truncate", truncate)

    def forward(self, x):
        x = torch.minimum(torch.maximum(x, self.low), self.high)
        return torch.where(self.truncate, torch.trunc(x), x)


class _Affine(nn.Module):
    def __init__(self, shift: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.register_buffer("shift", shift)
        self.register_buffer("scale", scale)

    def forward(self, x):  # subtract, then divide: the same float64 operations as polars
        return (x - self.shift) / self.scale


class _Log1p(nn.Module):
    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, x):
        return torch.where(self.mask, torch.sign(x) * torch.log1p(torch.abs(x)), x)


class _Flag(nn.Module):
    """Appends 1.0 where any bounded column is outside its bounds (a missing value is not)."""

    def __init__(self, low: torch.Tensor, high: torch.Tensor):
        super().__init__()
        self.register_buffer("low", low)
        self.register_buffer("high", high)

    def forward(self, x):
        outside = ((x < self.low) | (x > self.high)).any(dim=1, keepdim=True)
        return torch.cat([x, outside.to(x.dtype)], dim=1)


class Prep(nn.Module):
    """Raw numeric inputs (batch, columns) float32 -> the network's input, through the folded
    operations in float64 (as polars computes them), cast to float32 like training's."""

    def __init__(self, ops: list[nn.Module], order: list[int], shape: list[int]):
        super().__init__()
        self.ops = nn.ModuleList(ops)
        self.register_buffer("order", torch.tensor(order, dtype=torch.long))
        self.shape = list(shape)

    def forward(self, x):
        x = x.reshape(x.shape[0], -1).double()
        for op in self.ops:
            x = op(x)
        if len(self.order):  # a derived column the network reads before the last one
            x = torch.index_select(x, 1, self.order)
        x = x.float()
        return x.reshape([x.shape[0], *self.shape])


def build_prep(p: Plan, inputs: list[str], input_shape: list[int]) -> Prep:
    """The plan's operations over the working columns: `inputs` (the graph's, in order; each
    image channel's pixels for an image), then each derived column as it is added."""
    slots = _slots(p, inputs)
    ops = []
    for kind, per_column in p.ops:
        ops.append(_module(kind, per_column, slots))
        if kind == "flag" and FLAG in p.derived and FLAG not in slots:
            slots.append(FLAG)
    order = [slots.index(c) for c in p.features] if not p.image_shape else []
    return Prep(ops, [] if order == list(range(len(slots))) else order, input_shape)


def _slots(p: Plan, inputs: list[str]) -> list[str]:
    if not p.image_shape:
        return list(inputs)
    channels, *pixels = p.image_shape
    per_channel = 1
    for size in pixels:
        per_channel *= size
    return [f"channel_{c}" for c in range(channels) for _ in range(per_channel)]


def _module(kind: str, per_column: dict[str, Any], slots: list[str]) -> nn.Module:
    def vector(pick, default) -> torch.Tensor:
        return torch.tensor(
            [pick(per_column[s]) if s in per_column else default for s in slots],
            dtype=torch.float64,
        )

    def mask(pick=lambda value: True) -> torch.Tensor:  # default: the columns named
        return torch.tensor([s in per_column and bool(pick(per_column[s])) for s in slots])

    if kind == "fill":
        return _Fill(mask(), vector(float, 0.0))
    if kind == "clip":
        return _Clip(
            vector(lambda b: b[0], -INF), vector(lambda b: b[1], INF), mask(lambda b: b[2])
        )
    if kind == "affine":
        return _Affine(vector(lambda s: s[0], 0.0), vector(lambda s: s[1], 1.0))
    if kind == "log1p":
        return _Log1p(mask())
    return _Flag(vector(lambda b: b[0], -INF), vector(lambda b: b[1], INF))
