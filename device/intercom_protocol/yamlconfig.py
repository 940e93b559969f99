"""YAML configuration with errors an installer can act on: every problem names its key path
and line, and all problems are reported at once rather than one per attempt.

PyYAML forgets where values came from, so the loader below keeps the line of every mapping
key and list item; `validate` walks a small declarative schema over the loaded data.
"""

from __future__ import annotations

import difflib
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


class YamlMap(dict[Any, Any]):
    """A mapping that remembers the 1-based line of each key."""

    line: int = 0
    lines: dict[Any, int]


class YamlList(list[Any]):
    line: int = 0
    lines: list[int]


class _LineLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> YamlMap:
        self.flatten_mapping(node)
        result = YamlMap()
        result.line = node.start_mark.line + 1
        result.lines = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                # `? [a, b]` or `? {a: 1}`: Python cannot even hold such a key in a dict, and no
                # configuration has one: a plain error with its line, not a TypeError.
                raise yaml.MarkedYAMLError("while reading a mapping", node.start_mark,
                                           "a key must be a plain word or number, not a list or a mapping",
                                           key_node.start_mark)
            key = self.construct_object(key_node, deep=True)
            if key in result:
                raise yaml.MarkedYAMLError(
                    "while reading a mapping", node.start_mark, f"key '{key}' appears twice", key_node.start_mark
                )
            result[key] = self.construct_object(value_node, deep=True)
            result.lines[key] = key_node.start_mark.line + 1
        return result

    def construct_sequence(self, node: yaml.SequenceNode, deep: bool = False) -> YamlList:
        result = YamlList(self.construct_object(child, deep=True) for child in node.value)
        result.line = node.start_mark.line + 1
        result.lines = [child.start_mark.line + 1 for child in node.value]
        return result


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _LineLoader.construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _LineLoader.construct_sequence)


@dataclass(frozen=True)
class Problem:
    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path} (line {self.line})" if self.line else self.path
        return f"{where}: {self.message}"


class ConfigError(Exception):
    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


@dataclass(frozen=True)
class Field:
    """One key of a schema. `kind` is checked first, then `check` (raising ValueError)."""

    kind: type | tuple[type, ...] | None = None
    required: bool = False
    default: Any = None
    check: Callable[[Any], None] | None = None
    schema: dict[str, Field] | None = None  # for a nested mapping
    items: Field | None = None  # for a list
    help: str = ""
    #: For a nested mapping: absent means the feature is off (None), not "all defaults".
    optional_section: bool = False


_KIND_NAMES = {str: "a string", int: "a whole number", float: "a number", bool: "true or false",
               list: "a list", dict: "a mapping"}


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)


def _matches(value: Any, kind: type | tuple[type, ...]) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        return False  # YAML's yes/true is not a number
    if float in kinds and isinstance(value, int):
        return True
    return isinstance(value, kinds)


#: More values than any configuration has; a file whose aliases expand past it is refused.
MAX_VALUES = 100_000


def _expanded_size(value: Any, memo: dict[int, int]) -> int:
    """How many values the document holds once its aliases (`*name`) are expanded, counted
    without expanding them: a few lines of nested aliases (a "billion laughs") would
    otherwise take gigabytes in the checks that walk the file."""
    key = id(value)
    if key in memo:
        return memo[key]
    memo[key] = 1  # a cycle counts once
    if isinstance(value, dict):
        size = 1 + sum(_expanded_size(v, memo) for v in value.values())
    elif isinstance(value, list):
        size = 1 + sum(_expanded_size(v, memo) for v in value)
    else:
        size = 1
    memo[key] = size
    return size


def load_text(text: str, source: str = "<config>") -> Any:
    try:
        data = yaml.load(text, Loader=_LineLoader)  # a SafeLoader subclass
        if _expanded_size(data, {}) > MAX_VALUES:
            raise ConfigError(source, [Problem("(file)", None, f"its aliases (*name) expand to more than "
                                                               f"{MAX_VALUES:,} values; write the values out")])
        return data
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise ConfigError(source, [Problem("(file)", line, f"not valid YAML: {exc.problem or exc}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, [Problem("(file)", None, f"not valid YAML: {exc}")]) from None


def load_file(path: str | Path, schema: dict[str, Field]) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [Problem("(file)", None, f"cannot read: {exc.strerror}")]) from None
    return load(text, schema, str(path))


def load(text: str, schema: dict[str, Field], source: str = "<config>") -> dict[str, Any]:
    data = load_text(text, source)
    if data is None:
        data = YamlMap()
    problems: list[Problem] = []
    result = _validate_map(data, schema, "", None, problems)
    if problems:
        raise ConfigError(source, problems)
    return result


def _validate_map(data: Any, schema: dict[str, Field], path: str, line: int | None,
                  problems: list[Problem]) -> dict[str, Any]:
    if not isinstance(data, dict):
        problems.append(Problem(path or "(top level)", line, f"must be a mapping of keys, not {type(data).__name__}"))
        return {}
    lines = getattr(data, "lines", {})
    result: dict[str, Any] = {}
    for key in data:
        if key not in schema:
            hint = difflib.get_close_matches(str(key), list(schema), n=1)
            suggestion = f"; did you mean '{hint[0]}'?" if hint else f"; known keys: {', '.join(schema)}"
            problems.append(Problem(_join(path, key), lines.get(key), f"unknown key{suggestion}"))
    for key, spec in schema.items():
        sub = _join(path, key)
        if key not in data:
            if spec.required:  # point at the parent key, where the missing one belongs
                problems.append(Problem(sub, line, f"is required{_help(spec)}"))
            elif spec.schema is not None and not spec.optional_section:
                result[key] = _validate_map(YamlMap(), spec.schema, sub, None, problems)
            else:
                result[key] = spec.default
            continue
        result[key] = _validate_value(data[key], spec, sub, lines.get(key, line), problems)
    return result


def _validate_value(value: Any, spec: Field, path: str, line: int | None, problems: list[Problem]) -> Any:
    if spec.schema is not None:
        return _validate_map(value, spec.schema, path, line, problems)
    if spec.kind is not None and not _matches(value, spec.kind):
        shown = "nothing (null)" if value is None else repr(value)
        problems.append(Problem(path, line, f"must be {_kind_name(spec.kind)}, not {shown}{_help(spec)}"))
        return spec.default
    if spec.check is not None:
        try:
            spec.check(value)
        except ValueError as exc:
            problems.append(Problem(path, line, str(exc)))
            return spec.default
    if spec.items is not None:
        item_lines = getattr(value, "lines", [line] * len(value))
        return [_validate_value(v, spec.items, f"{path}[{i}]", item_lines[i], problems) for i, v in enumerate(value)]
    return value


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _help(spec: Field) -> str:
    return f" ({spec.help})" if spec.help else ""


def one_of(*choices: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, not {value!r}")
    return check


def in_range(low: float, high: float) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if not low <= value <= high:
            raise ValueError(f"must be between {low:g} and {high:g}, not {value!r}")
    return check


def nonempty(value: Any) -> None:
    if not value:
        raise ValueError("must not be empty")


class NotWritten(Exception):
    """`write_example` did not write: one line for the installer."""


def write_example(package: str, name: str, path: Path) -> None:
    """Write the annotated example YAML a package ships (`<package>/examples/<name>`) to `path`,
    for `intercom init` and `intercom-server init`: an installer who used pip has no checkout
    to copy it from. Never overwrites; raises NotWritten with what to do otherwise."""
    text = (resources.files(package) / "examples" / name).read_text(encoding="utf-8")
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # a file where a directory must be: not "the YAML exists"
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path.parent)) from None
        # O_EXCL: an existing file (an installer's edited YAML) is never replaced, not even by a race.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise NotWritten(f"{path} exists already; nothing was written (edit it, or move it away first)") from None
    except OSError as exc:
        raise NotWritten(f"cannot write {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
