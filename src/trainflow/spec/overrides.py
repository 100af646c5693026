"""`--set key.path=value` overrides (and a run's parameters): one parser of key paths and
values, applied to the raw spec before it is validated."""

from __future__ import annotations

from typing import Any

from trainflow.errors import SpecError
from trainflow.spec.loading import parse_yaml


def short(value: Any, limit: int = 80) -> str:
    """A value as a message quotes it: its repr, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def parse_key_path(text: str) -> list[str]:
    """The keys of a `dotted.path` (ValueError for an empty one or an empty segment).

    The one parser of override paths: `--set`, and the check of what a run's parameters may
    set, read the same keys, so no spelling (`data..source.path`) means one thing to the
    check and another to the override.
    """
    keys = [k.strip() for k in text.strip().split(".")]
    if keys == [""]:
        raise ValueError("empty key path: write key.path=value")
    if "" in keys:
        raise ValueError(
            f"empty segment in key path {text.strip()!r}: write keys with one dot "
            "between them, e.g. train.lr=3e-4"
        )
    return keys


def parse_assignment(assignment: str) -> tuple[list[str], Any]:
    """The keys and the (YAML) value of a `dotted.path=value` override; ValueError if bad."""
    if not isinstance(assignment, str) or "=" not in assignment:
        raise ValueError(f"expected key.path=value, got {short(assignment)}")
    path, value_text = assignment.split("=", 1)
    keys = parse_key_path(path)
    try:
        value = parse_yaml(value_text) if value_text.strip() else None
    except ValueError as exc:
        raise ValueError(f"the value of {'.'.join(keys)}: {exc}") from None
    return keys, value


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one `dotted.path=value` override (value parsed as YAML) to the raw spec dict."""
    try:
        keys, value = parse_assignment(assignment)
    except ValueError as exc:
        raise SpecError("--set", [(str(assignment)[:80], str(exc))]) from None
    node: Any = raw
    for depth, name in enumerate(keys):
        key: str | int = name
        last = depth == len(keys) - 1
        where = ".".join(keys[: depth + 1])
        if isinstance(node, list):
            if not name.isdecimal() or int(name) >= len(node):
                raise SpecError("--set", [(where, f"no list item {name!r} (list has {len(node)})")])
            key = int(name)
        elif not isinstance(node, dict):
            raise SpecError("--set", [(where, f"cannot set a key inside a {type(node).__name__}")])
        if last:
            node[key] = value
        else:
            if isinstance(node, dict) and node.get(key) is None:
                node[key] = {}
            node = node[key]
