"""PipelineSpec: the whole YAML pipeline, loaded, overridden and validated in one pass."""

from __future__ import annotations

import hashlib
import json
import re
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, ValidationError, model_validator

from trainflow import registry
from trainflow.errors import SpecError, did_you_mean
from trainflow.spec.after_training import EvaluateSpec, OutputsSpec
from trainflow.spec.base import Section
from trainflow.spec.compress import CompressSpec, compress_refusal, with_gate_default
from trainflow.spec.data import ExpectSpec, ShardParams
from trainflow.spec.ensemble import check_ensemble
from trainflow.spec.fit_on import no_validation_refusal, pipeline_refusal
from trainflow.spec.loading import load_raw
from trainflow.spec.orchestration import OrchestrationSpec, RunnerSpec
from trainflow.spec.overrides import (  # noqa: F401 (parse_* re-exported: the CLI and deploy)
    apply_override,
    parse_assignment,
    parse_key_path,
)
from trainflow.spec.overrides import short as _short
from trainflow.spec.promote import PromoteSpec
from trainflow.spec.search import SearchSpec, check_space
from trainflow.spec.structured_prune import structured_refusal
from trainflow.spec.task import Task, declared_task, task_problems
from trainflow.spec.train import TrainSpec

if TYPE_CHECKING:  # built at run time from the registry's tables: opaque to mypy
    Source = Any
    Step = Any
    Model = Any
    Ensemble = Any
else:
    Source = registry.union(registry.SOURCES)
    Step = registry.union(registry.STEPS)
    Model = registry.union(registry.MODELS)
    Ensemble = registry.union(registry.ENSEMBLES)


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
        early = [
            f"steps.{i} ({step.type})"
            for i, step in enumerate(self.steps[: splits[0]])
            if getattr(step, "requires_split", False)
        ]
        if early:
            raise ValueError(
                f"{', '.join(early)} change(s) the training part only and must come after `split`"
            )
        return self

    @model_validator(mode="after")
    def _split_column_is_kept(self):
        """split strategy column: the column names each row's part, it is no feature (a
        feature equal to the part would teach nothing and could not be given at predict)."""
        split = self.split
        if split.strategy != "column":
            return self
        kept = getattr(self.source, "keep_columns", None)
        if kept is None:
            raise ValueError(
                f"split strategy column reads each row's part from a column, and a "
                f"{self.source.type} source has none: use a csv or parquet source, or "
                "another strategy"
            )
        if split.column not in kept:
            raise ValueError(
                f"split.column {split.column!r} names each row's part and is not a feature: "
                f"add it to data.source.keep_columns (keep_columns: [{split.column}])"
            )
        return self

    @property
    def split_index(self) -> int:
        return next(i for i, step in enumerate(self.steps) if step.type == "split")

    @property
    def pre_split(self) -> list:
        return self.steps[: self.split_index]

    @property
    def split(self):
        return self.steps[self.split_index]

    @property
    def post_split(self) -> list:
        return self.steps[self.split_index + 1 :]


class PipelineSpec(Section):
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    seed: int = Field(0, ge=0, lt=2**32)
    task: Task = Field(
        "auto",
        description="classification (class labels) or regression (a numeric target); auto: "
        "a float target with more than 20 distinct values is a regression, else class labels",
    )
    data: DataSpec
    model: Model
    train: TrainSpec = TrainSpec()
    evaluate: EvaluateSpec = EvaluateSpec()
    ensemble: Ensemble | None = None
    compress: CompressSpec = CompressSpec()
    outputs: OutputsSpec = OutputsSpec()
    promote: PromoteSpec = PromoteSpec()
    runner: RunnerSpec = RunnerSpec()
    orchestration: OrchestrationSpec = OrchestrationSpec()
    search: SearchSpec | None = None  # a study of variants of this spec (flows/search.py)

    @model_validator(mode="before")
    @classmethod
    def _gate_metric(cls, data: Any) -> Any:  # compress.gate: the early-stopping metric
        return with_gate_default(data)

    @model_validator(mode="after")
    def _compress_fits_the_model(self):  # static int8's families; a gate on a computed metric
        reason = compress_refusal(self)
        if reason:
            raise ValueError(reason)
        return self

    @model_validator(mode="after")
    def _qat_fits_the_model(self):  # train.qat: the static int8 conversion it trains for
        from trainflow.spec.qat import qat_refusal  # (a hunk apart from the shared imports)

        reason = qat_refusal(self)
        if reason:
            raise ValueError(reason)
        return self

    @model_validator(mode="after")
    def _structured_pruning_fits_the_model(self):  # plain mlp/cnn sequences only
        reason = structured_refusal(self)
        if reason:
            raise ValueError(reason)
        return self

    @model_validator(mode="after")
    def _ensemble_needs_folds(self):
        if self.ensemble is not None and self.evaluate.cv is None:
            raise ValueError(
                "ensemble combines the cross-validation fold models: set "
                "evaluate.cv.folds or remove ensemble"
            )
        if self.ensemble is not None and self.evaluate.cv.rows == "all":
            raise ValueError(
                "evaluate.cv.rows: all draws the folds from every row, the test part too, so "
                "no row is left to score the ensemble of the fold models on: use rows: "
                "train+validation, or remove ensemble"
            )
        cv, search = self.evaluate.cv, self.search
        if cv and cv.rows == "all" and search is not None and search.nested:
            raise ValueError(
                "search.nested draws its own outer folds from the table: "
                "evaluate.cv.rows: all would put their held-out rows in the inner "
                "folds; use rows: train+validation"
            )
        check_ensemble(self)  # a study for top_k_trials, variants that validate
        return self

    @model_validator(mode="after")
    def _knobs_fit_the_task(self):  # where the spec tells the task; else preflight checks
        task = declared_task(self)
        problems = task_problems(self, task) if task else []
        if problems:
            raise ValueError(f"{problems[0][0]}: {problems[0][1]}")
        return self

    @model_validator(mode="after")
    def _threshold_on_a_binary_target(self):
        reason = self.evaluate.threshold_refusal(self.data.source)
        if reason:
            raise ValueError(reason)
        return self

    @model_validator(mode="after")
    def _fit_on_leaves_validation(self):  # train.fit_on, search.refit (trainflow.spec.fit_on)
        reason = pipeline_refusal(self) or no_validation_refusal(self)
        if reason:
            raise ValueError(reason)
        return self

    @model_validator(mode="after")
    def _explain_serves_the_model(self):  # else the explain task says so, after training
        explain = self.evaluate.explain
        reason = explain.refusal(self.data.source.type, self.model.type) if explain else None
        if (
            explain
            and not reason
            and explain.scores_a_package(self.data.source.type, self.model.type)
        ):
            reason = _unpackaged_step(self.data.steps)
        if reason:
            raise ValueError(reason)
        return self

    def fingerprint(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


def _unpackaged_step(steps: list[Any]) -> str | None:
    """Permutation importance scores the raw test rows through the run's model package:
    the first data step whose fitted state a package cannot hold, as a refusal."""
    for index, step in enumerate(steps):
        check = getattr(step, "prediction_refusal", None)
        why = check() if callable(check) else None
        if why:
            return (
                "evaluate.explain: permutation importance scores the raw test rows through "
                f"the run's model package, and data.steps.{index} cannot be packaged: {why}; "
                "or remove evaluate.explain"
            )
    return None


# ---- error messages that name the YAML path --------------------------------------------------

MAX_PROBLEMS = 30  # a fuzzed list of 10,000 bad items is still one screen of problems


BRANCH = re.compile(r"[\[\]'-]")  # pydantic's labels of union branches: list[int], ...
SCALARS = ("int", "float", "str", "bool", "bytes", "none")


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


def _tagged(models: list[type[BaseModel]], tag: Any) -> list[type[BaseModel]]:
    """The models whose `type` literal admits `tag` (a discriminated union's member)."""
    return [
        m
        for m in models
        if "type" in m.model_fields and repr(str(tag)) in str(m.model_fields["type"].annotation)
    ]


def _yaml_path_and_model(raw: Any, loc: tuple) -> tuple[str, type[BaseModel] | None]:
    """Drop the union tags pydantic inserts into `loc`; find the model at the location."""
    parts: list[str] = []
    node = raw
    models: list[type[BaseModel]] = [PipelineSpec]
    for i, item in enumerate(loc):
        if isinstance(node, dict) and item not in node and node.get("type") == item:
            models = _tagged(models, item)
            continue
        # The branch of a plain union (`int | list[int]`): not a key, yet the error is inside.
        if (
            isinstance(item, str)
            and node is not None
            and (
                not isinstance(node, dict)
                or (
                    item not in node
                    and (i < len(loc) - 1 or BRANCH.search(item) or item in SCALARS)
                )
            )
        ):
            continue
        parts.append(str(item))
        if isinstance(item, str):
            fields = [m.model_fields[item] for m in models if item in m.model_fields]
            models = [m for f in fields for m in _unwrap(f.annotation)]
        node = node[item] if isinstance(node, (dict, list)) and _has(node, item) else None
    if isinstance(node, dict) and isinstance(node.get("type"), str):
        models = _tagged(models, node["type"]) or models
    return ".".join(parts) or "(top level)", (models[0] if len(models) == 1 else None)


def _has(node: Any, item: Any) -> bool:
    if isinstance(node, dict):
        return item in node
    return isinstance(item, int) and 0 <= item < len(node)


def _quoted(text: Any) -> list[str]:
    """The values pydantic lists in a message ("'relu', 'gelu' or 'tanh'")."""
    return re.findall(r"'([^']*)'", str(text))


def _describe(error: Any, raw: Any) -> tuple[str, str]:
    loc = error["loc"]
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        path, model = _yaml_path_and_model(raw, loc[:-1])
        key = loc[-1]
        full = f"{path}.{key}" if path != "(top level)" else str(key)
        allowed = sorted(model.model_fields) if model else []
        close = did_you_mean(key, allowed)  # a close key says it all; else every allowed one
        listed = f" (allowed keys: {', '.join(allowed)})" if allowed and not close else ""
        return full, f"unknown key {_short(key)}{close}{listed}"
    path, _ = _yaml_path_and_model(raw, loc)
    message = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    if kind not in ("missing",) and not isinstance(value, (dict, list)):
        message += f" (got {_short(value)})"
    if kind == "union_tag_invalid":
        message += did_you_mean(ctx.get("tag"), _quoted(ctx.get("expected_tags")))
    elif kind in ("literal_error", "enum") and isinstance(value, str):
        message += did_you_mean(value, _quoted(ctx.get("expected")))
    return path, message


def validate_spec(raw: Any, source: str = "spec") -> PipelineSpec:
    """Validate a raw spec dict; raise SpecError listing every problem with its YAML path."""
    if not isinstance(raw, dict):
        raise SpecError(source, [("(top level)", f"expected a mapping, got {type(raw).__name__}")])
    try:
        spec = PipelineSpec.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        problems = [_describe(e, raw) for e in errors[:MAX_PROBLEMS]]
        if len(errors) > MAX_PROBLEMS:
            problems.append(("...", f"and {len(errors) - MAX_PROBLEMS} more problem(s)"))
        raise SpecError(source, problems) from None
    if spec.search is not None:  # every value of the space, at its path, before any trial
        try:
            check_space(raw, spec.search, validate_spec)
        except SpecError as exc:
            raise SpecError(source, exc.problems) from None
    return spec


def resolve_data_paths(raw: dict, base: Path) -> None:
    """A relative `data.source.path` in a spec file is relative to that file's folder."""
    data = raw.get("data")
    source = data.get("source") if isinstance(data, dict) else None
    path = source.get("path") if isinstance(source, dict) else None
    if isinstance(source, dict) and isinstance(path, str) and not Path(path).is_absolute():
        source["path"] = str(base / path)


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> PipelineSpec:
    """Read YAML, apply `key.path=value` overrides, validate the whole spec at once."""
    raw = load_raw(path)
    resolve_data_paths(raw, Path(path).resolve().parent)
    for assignment in overrides:
        apply_override(raw, assignment)
    return validate_spec(raw, str(path))


def schema_json() -> str:
    return json.dumps(PipelineSpec.model_json_schema(), indent=2)
