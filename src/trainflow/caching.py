"""The cache policy Prefect uses for trainflow tasks: content keys and validated hits.

A key is the hash of the task name, its canonical inputs (artifact refs by fingerprint, spec
sections as canonical JSON), the fingerprint of the code that implements it and the versions of
the libraries it calls. No run id: keys are stable across runs and machines. A recorded hit
counts only while its record is plain JSON of the task's declared result and every artifact it
refers to is present with its fingerprint and backs the record's numbers; otherwise the record
is dropped so that Prefect sees a miss and recomputes.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import types
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, get_type_hints

from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.serializers import JSONSerializer
from prefect.settings import get_current_settings
from pydantic import BaseModel, TypeAdapter

from trainflow.artifacts import ArtifactRef, fingerprint_path
from trainflow.errors import ArtifactError
from trainflow.logs import run_logger
from trainflow.sourcegraph import code_scope, source, tree_digest

# What `result_serializer="json"` writes into a record's metadata: the only serializer a
# record may name (any other, pickle above all, would run what the record holds).
JSON = JSONSerializer()
JSON_SERIALIZER = JSON.model_dump(mode="json")

LIBRARIES = (
    "torch",
    "numpy",
    "polars",
    "pyarrow",
    "scikit-learn",
    "imbalanced-learn",
    "webdataset",
    "albumentations",
    "scipy",  # normalize's robust statistics, the weighted ensemble's solver
    "optuna",  # a trial's draws
    "captum",  # explanations (absent unless trainflow[explain])
    "trainflow",
)


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def code_fingerprint(module_name: str) -> str:
    """sha256 over the source of the code a task's module runs (trainflow.sourcegraph): the
    module, the trainflow modules it imports, transitively, and the implementations of the
    registry kinds it looks up; nothing else, so that editing a data step leaves the key of
    training alone.

    Finding that scope parses every module (about 1 s on an idle machine, per process), so
    the fingerprints are remembered on disk under the digest of all of trainflow's sources:
    any edit anywhere is another digest, computed afresh; the same code reads them back."""
    known = _remembered()
    if module_name not in known:
        digest = hashlib.sha256()
        for name in code_scope(module_name):
            digest.update(f"{name}\0{source(name)}\n".encode())
        known[module_name] = digest.hexdigest()
        _remember(known)
    return known[module_name]


def _memo_path() -> Path:
    home = Path(get_current_settings().home).expanduser()
    return home / "trainflow-code" / f"{tree_digest()}.json"


@cache
def _remembered() -> dict[str, str]:
    """The fingerprints computed before for this very code (empty when none or unreadable)."""
    try:
        known = json.loads(_memo_path().read_text())
    except (OSError, ValueError):
        return {}
    valid = isinstance(known, dict) and all(
        isinstance(k, str) and isinstance(v, str) and len(v) == 64 for k, v in known.items()
    )
    return known if valid else {}


def _remember(known: dict[str, str]) -> None:
    """Write the memo atomically (two commands writing at once: the last one wins, and a
    fingerprint it lacks is computed again next time); a read-only home just skips it."""
    path = _memo_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(known, sort_keys=True))
        os.replace(temporary, path)
    except OSError:
        pass


def canonical(value: Any) -> Any:
    """A JSON-ready form of a task input; artifacts are represented by their fingerprint."""
    if isinstance(value, ArtifactRef):
        return {"artifact": value.kind, "fingerprint": value.fingerprint}
    if isinstance(value, BaseModel) and _refs_in(value):  # artifacts in a model (RunOutputs)
        return {name: canonical(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, BaseModel):
        dumped = canonical(value.model_dump(mode="json"))
        paths = getattr(value, "content_paths", None)
        if not callable(paths):
            return dumped
        return {
            "config": dumped,
            "content": "|".join(fingerprint_path(p) if p.exists() else "missing" for p in paths()),
        }
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"cannot build a cache key from a {type(value).__name__} input")


def record_path(key: str) -> Path:
    return Path(get_current_settings().results.local_storage_path).expanduser() / key


@cache
def result_type(fn: Any) -> Any:
    """The result a task declares (its return annotation), or None when it declares none
    (then no record of it is ever served, and the warning says so)."""
    if "return" not in getattr(fn, "__annotations__", {}):
        return None
    # The return annotation alone: a parameter's (an nn.Module a task module imports inside
    # the function, so that importing the flow loads no torch) need not resolve.
    # Its module's names, not fn.__globals__: a task sent to a Dask worker arrives pickled by
    # value (the module's name is the Task, not the function) with only the globals it uses.
    try:
        scope = vars(importlib.import_module(fn.__module__))
    except (ImportError, TypeError, ValueError):  # no module of its own (made in a test)
        scope = fn.__globals__
    returns = types.FunctionType((lambda: None).__code__, scope)
    returns.__annotations__ = {"return": fn.__annotations__["return"]}
    try:
        return get_type_hints(returns).get("return")
    except (NameError, TypeError):  # an annotation that does not resolve: nothing declared
        return None


@cache
def _adapter(declared: Any) -> TypeAdapter:
    return TypeAdapter(declared)


def drop_stale_record(key: str, declared: Any) -> bool:
    """Delete the result record for `key` unless Prefect may serve it: its serializer is
    trainflow's JSON, its payload is exactly a value of the task's declared result, and every
    artifact that value names is intact and backs the numbers the record carries. Prefect
    decodes a record with whatever serializer it names (pickle runs code), so anything else is
    deleted before Prefect reads it; the task then recomputes and records the key afresh."""
    path = record_path(key)
    if not path.exists():
        return False
    problem = record_problem(path, declared)
    if problem is None:
        return False
    run_logger().warning("result record %s is not served, the task recomputes: %s", key, problem)
    path.unlink(missing_ok=True)
    return True


def record_problem(path: Path, declared: Any) -> str | None:
    """Why the record at `path` must not be served, or None when it may be."""
    if declared is None:
        return "the task declares no result type to check the record against"
    try:
        record = json.loads(path.read_bytes())
        serializer = record["metadata"]["serializer"]
        payload = record["result"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        return f"not a readable result record ({exc.__class__.__name__})"
    if serializer != JSON_SERIALIZER:
        kind = serializer.get("type") if isinstance(serializer, dict) else serializer
        if kind != JSON_SERIALIZER["type"]:
            return f"its serializer is {kind!r}, not trainflow's JSON"
        return "its serializer is JSON with other settings (library, decoder) than trainflow's"
    if not isinstance(payload, str):
        return "its result is not JSON text"
    try:
        raw = json.loads(payload)
        value = _adapter(declared).validate_python(_plain(raw))
        again = json.loads(JSON.dumps(value))
    except (ValueError, TypeError, RecursionError) as exc:
        return f"its result is not a {_name(declared)} ({exc.__class__.__name__})"
    if _canon(again) != _canon(raw):
        return f"its result is not exactly what a {_name(declared)} is stored as"
    for ref in _refs_in(value):
        try:
            ref.verify()
        except ArtifactError as exc:
            return str(exc)
        if ref.path.name != ref.fingerprint or ref.path.parent.name != ref.kind:
            return f"its {ref.kind} artifact {ref.path} is not at its content address"
    return None


def _plain(value: Any) -> Any:
    """The JSON without Prefect's object wrappers ({"__class__": name, "data": ...}), read
    without importing anything they name; the declared type rebuilds the objects, and the
    comparison with their encoding then rejects any name but theirs. No result of a trainflow
    task is an exception, so Prefect's exception form (which names a class) is refused."""
    if isinstance(value, dict):
        if value.keys() == {"__class__", "data"}:
            return _plain(value["data"])
        if "__class__" in value or "__exc_type__" in value:
            raise ValueError("an object form Prefect would import a class for")
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _refs_in(value: Any) -> list[ArtifactRef]:
    """Every ArtifactRef inside a validated result."""
    if isinstance(value, ArtifactRef):
        return [value]
    if isinstance(value, BaseModel):
        value = dict(value)
    if isinstance(value, dict):
        return [ref for v in value.values() for ref in _refs_in(v)]
    if isinstance(value, (list, tuple)):
        return [ref for v in value for ref in _refs_in(v)]
    return []


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _name(declared: Any) -> str:
    return getattr(declared, "__name__", None) or str(declared)


@dataclass
class ContentCache(CachePolicy):
    """Key = task name + canonical inputs + code fingerprint + library versions."""

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        task = task_ctx.task
        material = {
            "task": task.name,
            "inputs": canonical(inputs),
            "code": code_fingerprint(task.fn.__module__),
            "libraries": library_versions(),
        }
        key = (
            "trainflow-" + hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
        )
        drop_stale_record(key, result_type(task.fn))
        return key


CACHED: dict[str, Any] = {
    "cache_policy": ContentCache(),
    "persist_result": True,
    "result_serializer": "json",
}
