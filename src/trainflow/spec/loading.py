"""Reading spec YAML: text files only, duplicate keys refused, sizes and nesting bounded.

A spec is untrusted input (a file, a `--set` value, a run's parameters from the UI), so every
way PyYAML or Python can fail on it becomes a SpecError naming the file and the line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from trainflow.errors import SpecError

MAX_BYTES = 10 * 2**20  # a spec is a page of settings; anything this big is not one
MAX_VALUES = 100_000  # counted through aliases: `&a [*b, *b]` chains grow exponentially
MAX_DEPTH = 32
MERGE = "tag:yaml.org,2002:merge"


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A key written twice in one mapping (PyYAML would silently keep the last one)."""

    def __init__(self, key: Any, first: yaml.Mark, again: yaml.Mark):
        self.key = key
        super().__init__(
            problem=f"duplicate key {key!r} (first at line {first.line + 1}): keep one of them",
            problem_mark=again,
        )


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate keys in a mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == MERGE:  # `<<: *defaults` overrides on purpose
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: the base class names it
                continue
            if first is not key_node.start_mark:
                raise DuplicateKeyError(key, first, key_node.start_mark)
        return super().construct_mapping(node, deep)


def parse_yaml(text: str) -> Any:
    """The value of one YAML document; ValueError with the line of the problem."""
    try:
        value = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except DuplicateKeyError as exc:
        raise ValueError(f"line {exc.problem_mark.line + 1}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ValueError(f"{where}invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
    except RecursionError:
        raise ValueError(f"invalid YAML: nested more than {MAX_DEPTH} levels deep") from None
    check_size(value)
    return value


def check_size(value: Any) -> None:
    """ValueError when `value` holds more than MAX_VALUES values or nests past MAX_DEPTH."""
    stack, count = [(value, 1)], 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise ValueError(
                f"more than {MAX_VALUES} values (aliases counted as copies): a "
                "spec is a page of settings"
            )
        if depth > MAX_DEPTH and isinstance(node, (dict, list)):
            raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def load_raw(path: str | Path) -> dict:
    """The mapping a spec file holds (empty file: {}); SpecError naming what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(
            str(path),
            [
                (
                    "(file)",
                    "spec file not found"
                    if not path.exists()
                    else "not a file: give the path of a .yaml spec",
                )
            ],
        )
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise SpecError(
                str(path),
                [("(file)", f"{size:,} bytes: a spec is at most {MAX_BYTES:,} bytes of YAML")],
            )
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError(
            str(path), [("(file)", f"cannot read it ({exc.strerror or exc})")]
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(
            str(path),
            [("(file)", f"not UTF-8 text (byte {exc.start}): a spec is a YAML text file")],
        ) from None
    try:
        raw = parse_yaml(text)
    except ValueError as exc:
        where, _, why = (
            str(exc).partition(": ") if str(exc).startswith("line") else ("(file)", "", str(exc))
        )
        raise SpecError(str(path), [(where, why)]) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpecError(
            str(path),
            [
                (
                    "(top level)",
                    f"expected a mapping of sections (name: "
                    f"..., data: ..., model: ...), got a {_kind(raw)}",
                )
            ],
        )
    return raw


def _kind(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(
        type(value), type(value).__name__
    )
