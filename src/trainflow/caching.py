"""The cache policy Prefect uses for trainflow tasks: content keys and validated hits.

A key is the hash of the task name, its canonical inputs (artifact refs by fingerprint, spec
sections as canonical JSON), the fingerprint of the code that implements it and the versions of
the libraries it calls. No run id: keys are stable across runs and machines. A recorded hit
counts only while every artifact it refers to is present with its fingerprint; otherwise the
stale record is dropped so that Prefect sees a miss and recomputes.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import sys
import types
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.settings import get_current_settings
from pydantic import BaseModel

from trainflow.artifacts import ArtifactRef

LIBRARIES = ("torch", "numpy", "polars", "pyarrow", "scikit-learn", "imbalanced-learn",
             "webdataset", "albumentations", "trainflow")


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


@lru_cache(maxsize=None)
def code_fingerprint(module_name: str) -> str:
    """sha256 over the source of a module and every trainflow module it imports, transitively."""
    seen: set[str] = set()
    pending = [module_name]
    while pending:
        name = pending.pop()
        module = sys.modules.get(name)
        if name in seen or module is None:
            continue
        seen.add(name)
        for value in vars(module).values():
            owner = value.__name__ if isinstance(value, types.ModuleType) else getattr(
                value, "__module__", None)
            if isinstance(owner, str) and owner.startswith("trainflow") and owner not in seen:
                pending.append(owner)
    digest = hashlib.sha256()
    for name in sorted(seen):
        try:
            digest.update(f"{name}\0{inspect.getsource(sys.modules[name])}\n".encode())
        except (OSError, TypeError):
            digest.update(f"{name}\0<no source>\n".encode())
    return digest.hexdigest()


def canonical(value: Any) -> Any:
    """A JSON-ready form of a task input; artifacts are represented by their fingerprint."""
    if isinstance(value, ArtifactRef):
        return {"artifact": value.kind, "fingerprint": value.fingerprint}
    if isinstance(value, BaseModel):
        dumped = canonical(value.model_dump(mode="json"))
        content = getattr(value, "content_fingerprint", None)
        return {"config": dumped, "content": content()} if callable(content) else dumped
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"cannot build a cache key from a {type(value).__name__} input")


def _refs_in(value: Any) -> list[dict]:
    """Every serialized ArtifactRef (a dict with uri, fingerprint and kind) inside a record."""
    if isinstance(value, dict):
        if {"uri", "fingerprint", "kind"} <= value.keys():
            return [value]
        return [ref for v in value.values() for ref in _refs_in(v)]
    if isinstance(value, list):
        return [ref for v in value for ref in _refs_in(v)]
    return []


def record_path(key: str) -> Path:
    return Path(get_current_settings().results.local_storage_path).expanduser() / key


def drop_stale_record(key: str) -> bool:
    """Delete the result record for `key` if an artifact it names is missing or altered."""
    path = record_path(key)
    if not path.exists():
        return False
    try:
        record = json.loads(path.read_bytes())
        result = record.get("result")
        payload = json.loads(result) if isinstance(result, str) else result
        refs = _refs_in(payload)
        valid = all(ArtifactRef.model_validate(ref).is_valid() for ref in refs)
    except (ValueError, TypeError):
        valid = False
    if not valid:
        path.unlink(missing_ok=True)
    return not valid


@dataclass
class ContentCache(CachePolicy):
    """Key = task name + canonical inputs + code fingerprint + library versions."""

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any],
                    flow_parameters: dict[str, Any], **kwargs: Any) -> str | None:
        task = task_ctx.task
        material = {
            "task": task.name,
            "inputs": canonical(inputs),
            "code": code_fingerprint(task.fn.__module__),
            "libraries": library_versions(),
        }
        key = "trainflow-" + hashlib.sha256(
            json.dumps(material, sort_keys=True).encode()).hexdigest()
        drop_stale_record(key)
        return key


CACHED = dict(cache_policy=ContentCache(), persist_result=True, result_serializer="json")
