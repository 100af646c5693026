"""Which spec values a run's parameters (the Prefect UI) may set: numbers, switches, choices.

An allowlist derived from the schema rather than a list of paths: a field may be set from the
UI only when nothing it can hold is free text. Every field that can hold a string (a path, a
URL, a column name, a glob) or anything at all (`Any`) is worker-only, and so is every
section that contains one, so a path-like field added later is worker-only the day it is
added. Such values stay as the spec file on the worker says.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

from pydantic import BaseModel

SAFE_SCALARS = (bool, int, float, type(None))


def free_text(annotation: Any, seen: frozenset = frozenset()) -> bool:
    """True when a value of this type can hold a string or anything else unchecked."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return free_text(typing.get_args(annotation)[0], seen)
    if origin is Literal:  # a fixed set of choices
        return False
    if origin in (typing.Union, types.UnionType, list, tuple, set, frozenset, dict):
        return any(
            free_text(arg, seen) for arg in typing.get_args(annotation) if arg is not Ellipsis
        )
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation not in seen and _model_free_text(annotation, seen)
    return annotation not in SAFE_SCALARS  # str, bytes, Path, Any, every type not known safe


def _model_free_text(model: type[BaseModel], seen: frozenset) -> bool:
    return any(free_text(f.annotation, seen | {model}) for f in model.model_fields.values())


def _members(annotation: Any) -> list[Any]:
    """The alternatives of an annotation, through Annotated and unions (None dropped)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _members(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _members(arg)]
    return [] if annotation is type(None) else [annotation]


def _step(annotations: list[Any], key: str) -> list[Any] | None:
    """The annotations of what `key` names inside a value of one of `annotations`; None when
    no alternative knows the key (validation then refuses it as an unknown key)."""
    found = []
    for annotation in (m for a in annotations for m in _members(a)):
        origin = typing.get_origin(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if key in annotation.model_fields:
                found.append(annotation.model_fields[key].annotation)
        elif origin in (list, tuple) and key.isdecimal():
            args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
            found.extend(args[:1] if origin is list else args)
    return found or None


def _optional(annotation: Any) -> bool:
    """True when the field may be None (an optional section or value: None turns it off)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _optional(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return any(_optional(arg) for arg in typing.get_args(annotation))
    return annotation is type(None)


def _takes_scalar(annotations: list[Any], value: Any) -> bool:
    """True when an alternative of `annotations` is a number or switch type that `value` is
    (bool counts as bool only: True is no share)."""
    kinds = {bool} if isinstance(value, bool) else {int, float}
    return any(m in kinds for a in annotations for m in _members(a) if isinstance(m, type))


def refusal(keys: list[str], root: type[BaseModel], value: Any = ...) -> str | None:
    """Why `value` at `keys` may not be set from a run's parameters; None when it may (or
    when it names no field at all, which validation reports as an unknown key). Turning an
    optional field off (`null`) is allowed even where it could hold text: no text arrives."""
    annotations: list[Any] = [root]
    for key in keys:
        if any(typing.get_origin(m) is dict for a in annotations for m in _members(a)):
            break  # a key inside a mapping: the mapping's own types decide
        found = _step(annotations, key)
        if found is None:
            return None
        annotations = found
    if value is None and any(_optional(a) for a in annotations):
        return None
    if isinstance(value, SAFE_SCALARS) and _takes_scalar(annotations, value):
        return None  # a number where text is one alternative (split.test: a share or values)
    if any(free_text(a) for a in annotations):
        return (
            f"{'.'.join(keys)} cannot be set from a run's parameters: it is or holds "
            "free text (a path, an address, a name), which stays as the spec file on "
            "the worker says; the UI sets numbers, switches and choices only"
        )
    return None
