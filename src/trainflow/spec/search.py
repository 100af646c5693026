"""The `search` section: a hyperparameter study over dotted spec paths (trainflow.study runs it).

Each trial is a variant of the spec with the space's values set at their paths, and is
cross-validated; every candidate value is validated against the spec before the study starts
(`check_space`), so a typo in a path or a value out of a field's limits is an error naming
search.space.<path>, not a failed trial an hour in.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, model_validator

from trainflow import registry
from trainflow.errors import SpecError
from trainflow.spec.base import Section
from trainflow.spec.metric_table import METRICS

if TYPE_CHECKING:  # built at run time from the registry's tables: opaque to mypy
    Sampler = Any
    Pruner = Any
else:
    Sampler = registry.union(registry.SEARCH_SAMPLERS)
    Pruner = registry.union(registry.SEARCH_PRUNERS)

MAX_GRID = 100_000  # points: a grid larger than this is a typo in a step, not a plan
Scalar = str | int | float | bool | None
WHEN: Any = Field(
    default_factory=dict,
    description="conditional: the parameter is drawn only in trials where each of these "
    "earlier space paths has this value (or one of a list of values), e.g. {model.type: mlp}",
)


class FloatParam(Section):
    type: Literal["float"] = "float"
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0, description="a grid's spacing (not with log)")
    when: dict[str, Scalar | list[Scalar]] = WHEN

    @model_validator(mode="after")
    def _range(self):
        _check_range(self.low, self.high, self.log)
        if self.log and self.step is not None:
            raise ValueError("log and step exclude each other: remove one")
        return self


class IntParam(Section):
    type: Literal["int"] = "int"
    low: int
    high: int
    log: bool = False
    step: int = Field(1, ge=1)
    when: dict[str, Scalar | list[Scalar]] = WHEN

    @model_validator(mode="after")
    def _range(self):
        _check_range(self.low, self.high, self.log)
        if self.log and self.step != 1:
            raise ValueError("log and step exclude each other: remove one")
        return self


class CategoricalParam(Section):
    """One of `choices`: scalars, or whole sections (a mapping replaces the value at the
    path, e.g. a `model` of another type)."""

    type: Literal["categorical"] = "categorical"
    choices: list[Any] = Field(..., min_length=1, max_length=1000)
    when: dict[str, Scalar | list[Scalar]] = WHEN


def _check_range(low: float, high: float, log: bool) -> None:
    if low > high:
        raise ValueError(f"low ({low}) is above high ({high})")
    if log and low <= 0:
        raise ValueError(f"a log range needs low > 0 (got {low})")


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]
# The loss, and every metric of the metric table, as measured on a fold's validation part.
OBJECTIVES = ("val_loss", *(f"val_{name}" for name in METRICS))


class ObjectiveSpec(Section):
    metric: Literal[OBJECTIVES] = Field(  # type: ignore[valid-type]
        "val_loss", description="the cross-validated metric: its mean over the folds"
    )
    direction: Literal["minimize", "maximize"] | None = Field(
        None, description="default: the metric's own (minimize a loss, maximize a score)"
    )

    @property
    def goal(self) -> Literal["minimize", "maximize"]:
        if self.direction is not None:
            return self.direction
        if self.metric == "val_loss":
            return "minimize"
        return METRICS[self.metric.removeprefix("val_")].direction


class NestedSpec(Section):
    """Nested cross-validation: the searchable rows (the train + validation parts; never the
    pipeline's test part) split into stratified outer folds by the spec's seed; for each, the
    study over the other outer folds' rows, its best spec scored on the held-out outer fold
    (flows/search.py). The outer scores estimate the tuned pipeline without the optimism of
    the inner best."""

    outer_folds: int = Field(5, ge=2, le=100, description="outer folds (each its own study)")


class SearchSpec(Section):
    space: dict[str, Param] = Field(..., min_length=1, max_length=100)
    sampler: Sampler = Field(default_factory=lambda: registry.SEARCH_SAMPLERS["tpe"].params())
    pruner: Pruner | None = None
    n_trials: int | None = Field(None, ge=1, le=100_000)
    timeout_s: float | None = Field(None, gt=0, le=30 * 24 * 3600)
    objective: ObjectiveSpec = ObjectiveSpec()
    storage: str | None = Field(
        None,
        description="an SQLAlchemy URL of the study's database (e.g. postgresql://...); "
        "default: a SQLite file in the store, studies/<name>.sqlite3",
    )
    parallel: int = Field(1, ge=1, le=256, description="trials at once")
    nested: NestedSpec | None = Field(
        None, description="nested CV: the study repeated inside each outer fold, scored on it"
    )
    refit: bool = Field(
        False,
        description="run the best trial's spec as a pipeline, its model trained on train + "
        "validation (train.fit_on) for the median epoch its CV folds chose (train.fit_epochs): "
        "best_spec.yaml holds that spec; ensembling, compression and promotion follow",
    )

    @model_validator(mode="after")
    def _budget(self):
        if self.n_trials is None and self.timeout_s is None and self.sampler.type != "grid":
            raise ValueError("give the study a budget: n_trials, timeout_s or both")
        return self


# ---- dotted paths into a raw spec ------------------------------------------------------------


def keys_of(path: str) -> list[str | int]:
    return [int(k) if k.isdecimal() else k for k in path.split(".")]


def get_path(raw: Any, path: str) -> Any:
    """The value at `path` in a raw spec, or None where the path leads nowhere."""
    node = raw
    for key in keys_of(path):
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]  # noqa: SIM114 - the two kinds of node, each with its own check
        else:
            return None
    return node


def set_path(raw: dict, path: str, value: Any) -> None:
    """Set `value` at `path` (missing mappings created); ValueError where it cannot go."""
    node: Any = raw
    keys = keys_of(path)
    for depth, key in enumerate(keys):
        where = ".".join(map(str, keys[: depth + 1]))
        if isinstance(node, list):
            if not isinstance(key, int) or key >= len(node):
                raise ValueError(f"{where}: no list item {key!r} (the list has {len(node)})")
        elif not isinstance(node, dict):
            raise ValueError(f"{where}: cannot set a key inside a {type(node).__name__}")
        if depth == len(keys) - 1:
            node[key] = copy.deepcopy(value)
        else:
            if isinstance(node, dict) and node.get(key) is None:
                node[key] = {}
            node = node[key]


def active(param: Any, raw: dict, only: Callable[[str], bool] = lambda key: True) -> bool:
    """Whether a conditional parameter is drawn in a trial whose spec so far is `raw` (its
    conditions on the paths `only` admits)."""
    for path, wanted in param.when.items():
        allowed = wanted if isinstance(wanted, list) else [wanted]
        if only(path) and get_path(raw, path) not in allowed:
            return False
    return True


# ---- values: what Optuna stores and what the spec receives ---------------------------------


def encode(choice: Any) -> Scalar:
    """An Optuna categorical choice: scalars as they are, a mapping or list as JSON text."""
    return (
        choice if choice is None or isinstance(choice, (str, int, float, bool)) else _json(choice)
    )


def decode(param: Any, value: Any) -> Any:
    if isinstance(param, CategoricalParam):
        return next(c for c in param.choices if encode(c) == value)
    return value


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def grid_values(path: str, param: Any) -> list[Any]:
    """Every value of a parameter on a grid (encoded as Optuna stores it)."""
    if isinstance(param, CategoricalParam):
        return [encode(c) for c in param.choices]
    if isinstance(param, FloatParam):
        if param.step is None:
            raise _problem(path, "a grid over a float range needs a step (e.g. step: 0.1)")
        count = math.floor((param.high - param.low) / param.step + 1e-9) + 1
        return [round(param.low + i * param.step, 12) for i in range(min(count, MAX_GRID + 1))]
    return list(range(param.low, param.high + 1, param.step))[: MAX_GRID + 1]


def candidates(param: Any) -> list[Any]:
    """The values checked against the spec before the study: the ends of a range, or every
    choice (a field's limits are ranges, so the ends stand for the values between)."""
    if isinstance(param, CategoricalParam):
        return list(param.choices)
    return [param.low, param.high]


def _problem(path: str, message: str) -> SpecError:
    return SpecError("search", [(f"search.space.{path}", message)])


# ---- the check before the study --------------------------------------------------------------


def check_space(raw: dict, search: SearchSpec, validate: Callable[[Any, str], Any]) -> None:
    """Every value the space can give, at its path, validates as part of the spec; grid and
    conditional rules hold. Raises one SpecError naming search.space.<path>."""
    base = {k: v for k, v in raw.items() if k != "search"}
    if (base.get("ensemble") or {}).get("type") == "top_k_trials":
        base["ensemble"] = None  # the study's ensemble (flows/search.py), not a trial's
    spec = validate(base, "search")
    if spec.evaluate.cv is None:
        raise SpecError(
            "search", [("search", "each trial is cross-validated: set evaluate.cv.folds")]
        )
    _check_pruned_metric(spec, search)
    if search.nested is not None:
        _check_nested_space(base, search)
    paths = list(search.space)
    for index, (path, param) in enumerate(search.space.items()):
        for key in param.when:
            if not any(_under(key, earlier) for earlier in paths[:index]):
                raise _problem(path, f"when: {key!r} is not an earlier path of search.space")
        if search.sampler.type == "grid":
            if param.when:
                raise _problem(path, "a grid draws every parameter in every trial: remove when")
            grid_values(path, param)
        context = _context_for(base, search, index)
        if context is None:
            raise _problem(path, f"its when ({param.when}) never holds for the earlier values")
        for value in candidates(param):
            variant = copy.deepcopy(context)
            try:
                set_path(variant, path, value)
                validate(variant, "search")
            except ValueError as exc:
                raise _problem(path, str(exc)) from None
            except SpecError as exc:
                where, message = exc.problems[0]
                raise _problem(path, f"the value {value!r} gives {where}: {message}") from None
    if search.sampler.type == "grid":
        size = math.prod(len(grid_values(p, q)) for p, q in search.space.items())
        if size > MAX_GRID:
            raise SpecError(
                "search", [("search.space", f"a grid of {size} points (max {MAX_GRID})")]
            )


def _under_path(path: str, key: str) -> bool:
    return _under(key, path)


def _under(key: str, path: str) -> bool:
    """`key` is `path` or lies inside it (model.type inside a `model` choice)."""
    return key == path or key.startswith(path + ".")


def _context_for(base: dict, search: SearchSpec, index: int) -> dict | None:
    """The spec before parameter `index` is set: each earlier parameter its `when` names is
    given the first of its values under which the parameter is drawn (None: none is)."""
    items = list(search.space.items())
    _, param = items[index]
    context = copy.deepcopy(base)
    for earlier_path, earlier in items[:index]:
        named = any(_under(key, earlier_path) for key in param.when)
        if not named or not active(earlier, context):
            continue
        for value in candidates(earlier):
            trial = copy.deepcopy(context)
            set_path(trial, earlier_path, value)
            if active(param, trial, functools.partial(_under_path, earlier_path)):
                context = trial
                break
    return context if active(param, context) else None


def _check_nested_space(base: dict, search: SearchSpec) -> None:
    """Nested CV splits the same searchable rows into the same outer folds for every trial:
    a parameter that changes those rows (the data source, a step up to the split) or the
    seed that draws the folds cannot vary."""
    steps = (base.get("data") or {}).get("steps") or []
    split = next((i for i, s in enumerate(steps) if s.get("type") == "split"), len(steps))
    for path in search.space:
        keys = keys_of(path)
        step = keys[2] if len(keys) > 2 and keys[:2] == ["data", "steps"] else None
        after = isinstance(step, int) and step > split  # a post-split step: fitted per fold
        if keys[0] == "seed" or (keys[0] == "data" and not after):
            raise _problem(
                path,
                "search.nested scores every trial on the same outer folds of the same rows: "
                "this path changes those rows (the source, a step up to the split) or the "
                "seed that draws the folds; keep it fixed, or remove search.nested",
            )


def _check_pruned_metric(spec: Any, search: SearchSpec) -> None:
    """A pruner needs the objective each epoch: the loop measures val_loss, val_accuracy and
    the early-stopping monitor, nothing else."""
    stopping = spec.train.early_stopping
    per_epoch = {"val_loss", "val_accuracy", *([stopping.monitor] if stopping else [])}
    metric = search.objective.metric
    if search.pruner is not None and metric not in per_epoch:
        raise SpecError(
            "search",
            [
                (
                    "search.pruner",
                    f"prunes on {metric} per epoch, which training measures only when it "
                    f"is train.early_stopping.monitor: set that monitor to {metric}, or "
                    f"remove the pruner",
                )
            ],
        )
