"""PipelineSpec: the whole YAML pipeline, loaded, overridden and validated in one pass."""

from __future__ import annotations

import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from trainflow import registry
from trainflow.errors import SpecError
from trainflow.spec.base import Section
from trainflow.spec.evaluate import EvaluateSpec, OutputsSpec
from trainflow.spec.orchestration import OrchestrationSpec, RunnerSpec
from trainflow.spec.train import TrainSpec
from trainflow.tasks.expect import ExpectSpec
from trainflow.tasks.shard import ShardParams

Source = registry.union(registry.SOURCES)
Step = registry.union(registry.STEPS)
Model = registry.union(registry.MODELS)
Ensemble = registry.union(registry.ENSEMBLES)
Quantizer = registry.union(registry.QUANTIZERS)
Pruner = registry.union(registry.PRUNERS)


class DataSpec(Section):
    source: Source
    expect: ExpectSpec = ExpectSpec()
    steps: list[Step] = Field(..., min_length=1)
    shard: ShardParams = ShardParams()

    @model_validator(mode="after")
    def _one_split(self):
        splits = [i for i, step in enumerate(self.steps) if step.type == "split"]
        if len(splits) != 1:
            raise ValueError(f"steps must contain exactly one `split` step (found {len(splits)})")
        early = [f"steps.{i} ({step.type})" for i, step in enumerate(self.steps[:splits[0]])
                 if getattr(step, "requires_split", False)]
        if early:
            raise ValueError(f"{', '.join(early)} change(s) the training part only and must "
                             "come after `split`")
        return self

    @property
    def split_index(self) -> int:
        return next(i for i, step in enumerate(self.steps) if step.type == "split")

    @property
    def pre_split(self) -> list:
        return self.steps[:self.split_index]

    @property
    def split(self):
        return self.steps[self.split_index]

    @property
    def post_split(self) -> list:
        return self.steps[self.split_index + 1:]


class CompressSpec(Section):
    quantize: Quantizer | None = None
    prune: Pruner | None = None


class PipelineSpec(Section):
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    seed: int = Field(0, ge=0, lt=2**32)
    data: DataSpec
    model: Model
    train: TrainSpec = TrainSpec()
    evaluate: EvaluateSpec = EvaluateSpec()
    ensemble: Ensemble | None = None
    compress: CompressSpec = CompressSpec()
    outputs: OutputsSpec = OutputsSpec()
    runner: RunnerSpec = RunnerSpec()
    orchestration: OrchestrationSpec = OrchestrationSpec()

    @model_validator(mode="after")
    def _ensemble_needs_folds(self):
        if self.ensemble is not None and self.evaluate.cv is None:
            raise ValueError("ensemble combines the cross-validation fold models: set "
                             "evaluate.cv.folds or remove ensemble")
        return self

    def fingerprint(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


# ---- overrides -------------------------------------------------------------------------------

def apply_override(raw: dict, assignment: str) -> None:
    """Apply one `dotted.path=value` override (value parsed as YAML) to the raw spec dict."""
    if "=" not in assignment:
        raise SpecError("--set", [(assignment, "expected key.path=value")])
    path, value_text = assignment.split("=", 1)
    keys = [k for k in path.strip().split(".") if k]
    if not keys:
        raise SpecError("--set", [(assignment, "empty key path")])
    value = yaml.safe_load(value_text) if value_text.strip() else None
    node: Any = raw
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        where = ".".join(keys[:depth + 1])
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise SpecError("--set", [(where, f"no list item {key!r} (list has {len(node)})")])
            key = int(key)
        elif not isinstance(node, dict):
            raise SpecError("--set", [(where, f"cannot set a key inside a {type(node).__name__}")])
        if last:
            node[key] = value
        else:
            if isinstance(node, dict) and node.get(key) is None:
                node[key] = {}
            node = node[key]


# ---- error messages that name the YAML path --------------------------------------------------

def _unwrap(annotation: Any) -> list[Any]:
    """The model classes an annotation can hold (through Optional, list, Annotated, unions)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, list, tuple, dict):
        return [m for arg in typing.get_args(annotation) for m in _unwrap(arg)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def _yaml_path_and_model(raw: Any, loc: tuple) -> tuple[str, type[BaseModel] | None]:
    """Drop the union tags pydantic inserts into `loc`; find the model at the location."""
    parts: list[str] = []
    node, models = raw, [PipelineSpec]
    for item in loc:
        if isinstance(node, dict) and item not in node and node.get("type") == item:
            models = [m for m in models if item in str(m.model_fields.get("type").annotation)]
            continue
        parts.append(str(item))
        if isinstance(item, str):
            fields = [m.model_fields[item] for m in models if item in m.model_fields]
            models = [m for f in fields for m in _unwrap(f.annotation)]
        node = node[item] if isinstance(node, (dict, list)) and _has(node, item) else None
    if isinstance(node, dict) and "type" in node:
        models = [m for m in models if str(node["type"]) in str(
            m.model_fields["type"].annotation)] or models
    return ".".join(parts) or "(top level)", (models[0] if len(models) == 1 else None)


def _has(node: Any, item: Any) -> bool:
    if isinstance(node, dict):
        return item in node
    return isinstance(item, int) and 0 <= item < len(node)


def _describe(error: dict, raw: Any) -> tuple[str, str]:
    loc = error["loc"]
    kind = error["type"]
    if kind == "extra_forbidden":
        path, model = _yaml_path_and_model(raw, loc[:-1])
        key = loc[-1]
        full = f"{path}.{key}" if path != "(top level)" else str(key)
        allowed = sorted(model.model_fields) if model else []
        hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
        return full, f"unknown key {key!r}{hint}"
    path, _ = _yaml_path_and_model(raw, loc)
    message = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    if kind not in ("missing",) and not isinstance(value, (dict, list)):
        message += f" (got {value!r})"
    return path, message


def validate_spec(raw: Any, source: str = "spec") -> PipelineSpec:
    """Validate a raw spec dict; raise SpecError listing every problem with its YAML path."""
    if not isinstance(raw, dict):
        raise SpecError(source, [("(top level)", f"expected a mapping, got {type(raw).__name__}")])
    try:
        return PipelineSpec.model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(e, raw) for e in exc.errors(include_url=False)]
        raise SpecError(source, problems) from None


def load_raw(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SpecError(str(path), [("(file)", "spec file not found")])
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        raise SpecError(str(path), [(where, f"invalid YAML: {getattr(exc, 'problem', exc)}")]) \
            from None
    return raw if raw is not None else {}


def resolve_data_paths(raw: dict, base: Path) -> None:
    """A relative `data.source.path` in a spec file is relative to that file's folder."""
    source = raw.get("data", {}).get("source") if isinstance(raw.get("data"), dict) else None
    if isinstance(source, dict) and isinstance(source.get("path"), str):
        if not Path(source["path"]).is_absolute():
            source["path"] = str(base / source["path"])


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> PipelineSpec:
    """Read YAML, apply `key.path=value` overrides, validate the whole spec at once."""
    raw = load_raw(path)
    resolve_data_paths(raw, Path(path).resolve().parent)
    for assignment in overrides:
        apply_override(raw, assignment)
    return validate_spec(raw, str(path))


def schema_json() -> str:
    return json.dumps(PipelineSpec.model_json_schema(), indent=2)


