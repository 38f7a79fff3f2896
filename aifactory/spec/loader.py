"""Read a site spec's YAML into plain data plus the position of every value.

The lexical rules of the contract live here:
- only `true`/`false` are booleans (YAML 1.2), so `country: NO` is the string "NO";
- a mapping with a duplicate key is an error;
- keys starting with `x-` are extension keys and are dropped;
- bounds for hostile input: file size, nesting depth and the number of nodes after alias expansion
  (a "billion laughs" file is refused before it can use memory).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from aifactory.errors import AifactoryError, Location, Problem, SpecError
from aifactory.spec.grammar import printable

MAX_FILE_BYTES = 10 * 1024 * 1024
MAX_DEPTH = 64
MAX_NODES = 250_000  # a 10,000-host spec has about 10,000; a legitimate one stays far below

PathKey = tuple[str | int, ...]


def format_path(path: PathKey) -> str:
    """('node_pools', 1, 'fabrics', 0) -> 'node_pools[1].fabrics[0]' (a key's control characters
    written as escapes: a path is printed to terminals)."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{printable(str(part))}" if out else printable(str(part))
    return out


@dataclass
class LoadedYaml:
    """Plain data and where each value (and each mapping key) was written."""

    file: str
    data: Any
    values: dict[PathKey, tuple[int, int]] = field(default_factory=dict)
    keys: dict[PathKey, tuple[int, int]] = field(default_factory=dict)
    raw: bytes = b""  # the bytes that were parsed (read once, so the digest matches what was read)

    def location(self, path: PathKey, *, key: bool = False, at: PathKey | None = None) -> Location:
        """The nearest recorded position for a path (an absent field points at its parent).

        `key` prefers where a mapping key was written over where its value starts; `at` names
        another path whose position to report (a missing field is reported where its parent's key is).
        """
        table = self.keys if key else self.values
        probe = path if at is None else at
        while True:
            found = table.get(probe) or self.values.get(probe) or self.keys.get(probe)
            if found or not probe:
                break
            probe = probe[:-1]
        line, column = found if found else (None, None)
        return Location(file=self.file, line=line, column=column, path=format_path(path) or None)


try:  # libyaml parses events about 15x faster; the Python composer above it keeps the depth bound
    from yaml._yaml import CParser as _Parser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml.parser import Parser as _PyParser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Parser(Reader, Scanner, _PyParser):  # type: ignore[no-redef]  # the pure-Python stand-in for CParser
        def __init__(self, stream: str) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            _PyParser.__init__(self)


class _Loader(Composer, _Parser, SafeConstructor, Resolver):
    """A safe loader with YAML 1.2 booleans and a bound on nesting depth while composing.

    Events come from libyaml when PyYAML has it; nodes are composed in Python so that
    `compose_node` below sees every level.
    """

    def __init__(self, stream: str) -> None:
        _Parser.__init__(self, stream)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                event = self.peek_event()
                mark = event.start_mark if event is not None else None
                if mark is None:
                    raise _Bound(f"nesting deeper than {MAX_DEPTH} levels")
                raise _Bound(f"nesting deeper than {MAX_DEPTH} levels", mark.line + 1, mark.column + 1)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


# YAML 1.2 (core schema) for booleans and numbers: YAML 1.1 reads `NO` as false, `010` as 8 and
# `1:30` as 90; here the first is a string and the others are strings the model then refuses, so a
# surprising reading is an error instead of a silently different value.
_YAML_1_1_ONLY = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _YAML_1_1_ONLY]
    for first, resolvers in Resolver.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?(?:0|[1-9][0-9]*)|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?|\.[0-9]+(?:[eE][-+]?[0-9]+)?)"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


class _Bound(AifactoryError):
    """A bound crossed deep inside PyYAML's composer or the walker (internal control flow: it carries
    the position out to `_bounded`, which turns it into the SpecError a command raises)."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__(message)
        self.line, self.column = line, column


class _Walker:
    """Turns composed nodes into data, recording positions; counts nodes to bound aliases."""

    def __init__(self, loader: _Loader, result: LoadedYaml) -> None:
        self.loader = loader
        self.result = result
        self.visited = 0
        self.problems: list[Problem] = []

    def walk(self, node: Node, path: PathKey) -> Any:
        self.visited += 1
        if self.visited > MAX_NODES:
            raise _Bound(
                f"more than {MAX_NODES:,} values after expanding aliases",
                node.start_mark.line + 1,
                node.start_mark.column + 1,
            )
        self.result.values.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
        if isinstance(node, MappingNode):
            if node.tag != "tag:yaml.org,2002:map":
                return self._problem(node, path, "yaml-tag", f"unsupported YAML tag {node.tag}")
            return self._mapping(node, path)
        if isinstance(node, SequenceNode):
            if node.tag != "tag:yaml.org,2002:seq":
                return self._problem(node, path, "yaml-tag", f"unsupported YAML tag {node.tag}")
            return [self.walk(child, path + (i,)) for i, child in enumerate(node.value)]
        if isinstance(node, ScalarNode):
            return self._scalar(node, path)
        return self._problem(node, path, "yaml-node", f"unsupported YAML node {node.tag}")

    def _scalar(self, node: ScalarNode, path: PathKey) -> Any:
        if node.tag == "tag:yaml.org,2002:timestamp":
            try:
                return self.loader.construct_yaml_timestamp(node)
            except ValueError as exc:  # 2030-13-45 looks like a date but is none
                self._problem(node, path, "bad-date", f"'{node.value}' is not a valid date: {exc}")
                return None
        if node.tag in (
            "tag:yaml.org,2002:str",
            "tag:yaml.org,2002:null",
            "tag:yaml.org,2002:bool",
            "tag:yaml.org,2002:int",
            "tag:yaml.org,2002:float",
        ):
            return self.loader.construct_object(node, deep=True)
        self._problem(node, path, "yaml-tag", f"unsupported YAML tag {node.tag}")
        return None

    def _mapping(self, node: MappingNode, path: PathKey) -> dict[str, Any]:
        out: dict[str, Any] = {}
        seen: dict[str, int] = {}
        merged: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                merged.update(self._merge_source(value_node, path))
                continue
            if not isinstance(key_node, ScalarNode) or key_node.tag not in (
                "tag:yaml.org,2002:str",
                "tag:yaml.org,2002:int",
                "tag:yaml.org,2002:bool",
                "tag:yaml.org,2002:float",
                "tag:yaml.org,2002:null",
            ):
                self._problem(key_node, path, "yaml-key", "a mapping key must be a plain string")
                continue
            key = str(key_node.value)
            if key in seen:
                self._problem(
                    key_node,
                    path + (key,),
                    "duplicate-key",
                    f"duplicate key '{key}' (first written on line {seen[key]})",
                )
                continue
            seen[key] = key_node.start_mark.line + 1
            if key.startswith("x-"):
                continue
            self.result.keys[path + (key,)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = self.walk(value_node, path + (key,))
        for key, value in merged.items():
            out.setdefault(key, value)
        return out

    def _merge_source(self, node: Node, path: PathKey) -> dict[str, Any]:
        sources = node.value if isinstance(node, SequenceNode) else [node]
        merged: dict[str, Any] = {}
        for source in sources:
            value = self.walk(source, path)
            if not isinstance(value, dict):
                self._problem(source, path, "yaml-merge", "a merge key (<<) must name a mapping")
                continue
            for key, item in value.items():
                merged.setdefault(key, item)
        return merged

    def _problem(self, node: Node, path: PathKey, code: str, message: str) -> None:
        """Record a problem; the value it was about reads as None."""
        self.problems.append(
            Problem(
                code,
                message,
                Location(
                    self.result.file,
                    node.start_mark.line + 1,
                    node.start_mark.column + 1,
                    format_path(path) or None,
                ),
            )
        )


@contextmanager
def _bounded(file: str) -> Iterator[None]:
    """Turn a crossed bound (or Python's own recursion limit) into a plain SpecError."""
    try:
        yield
    except _Bound as bound:
        raise SpecError(
            f"refused: {bound.message}",
            location=Location(file, bound.line, bound.column),
            code="spec-too-complex",
        ) from None
    except RecursionError:
        raise SpecError(
            "refused: the document nests too deeply", location=Location(file), code="spec-too-complex"
        ) from None


def _compose(loader: _Loader, file: str) -> Node | None:
    try:
        with _bounded(file):
            return loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise SpecError(
            f"not valid YAML: {exc.problem or exc.context}",
            location=Location(file, mark.line + 1 if mark else None, mark.column + 1 if mark else None),
            code="yaml-syntax",
        ) from None
    except yaml.YAMLError as exc:
        raise SpecError(
            f"not valid YAML: {' '.join(str(exc).split())}", location=Location(file), code="yaml-syntax"
        ) from None


def load_yaml_text(text: str, file: str) -> LoadedYaml:
    """Parse YAML text within the bounds; every problem names the file, line and column."""
    result = LoadedYaml(file=file, data=None)
    loader = _Loader(text)
    try:
        root = _compose(loader, file)
        if root is None:
            raise SpecError(
                "the file is empty",
                location=Location(file),
                code="spec-empty",
                hint="start from `aifactory init NAME --jurisdiction CC`",
            )
        walker = _Walker(loader, result)
        with _bounded(file):
            result.data = walker.walk(root, ())
        if walker.problems:
            raise SpecError(
                f"{len(walker.problems)} problem(s) reading the YAML",
                location=Location(file),
                problems=walker.problems,
                code="yaml-structure",
            )
        return result
    finally:
        loader.dispose()


def load_yaml_file(path: str | Path) -> LoadedYaml:
    file = str(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise SpecError(f"no such file: {file}", location=Location(file), code="spec-not-found") from None
    except IsADirectoryError:
        raise SpecError(
            f"{file} is a folder, not a site spec", location=Location(file), code="spec-not-found"
        ) from None
    except OSError as exc:
        raise SpecError(
            f"cannot read {file}: {exc.strerror}", location=Location(file), code="spec-unreadable"
        ) from None
    if len(raw) > MAX_FILE_BYTES:
        raise SpecError(
            f"refused: the file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MB",
            location=Location(file),
            code="spec-too-large",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(
            f"not UTF-8 text (byte {exc.start})", location=Location(file), code="spec-encoding"
        ) from None
    loaded = load_yaml_text(text, file)
    loaded.raw = raw
    return loaded
