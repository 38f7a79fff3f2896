"""Hostile values in every string field of the spec: each is refused, naming the field.

The fields come from walking the committed JSON Schema (docs/site-v1.schema.json), not from a
list: a string field added to the model (and so to the schema) is attacked here without editing
this file. Each hostile value goes into one field of a small valid site (the objects the field
lives in are created when the site lacks them); `aifactory validate` must exit 1 with a problem
at exactly that field path, on a line, with no traceback and no raw control character in its
output.

Free text exists only where the schema says so (the free-text grammar): there, shell characters
are text and are accepted, while control characters, template delimiters and over-long values
are refused like everywhere else.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from base_spec import BASE

from aifactory.spec.grammar import TEXT_PATTERN
from aifactory.spec.loader import PathKey, format_path
from aifactory.spec.schema import DEFAULT_OUTPUT

SCHEMA = json.loads(DEFAULT_OUTPUT.read_text())

# (what it is, the value, whether it is harmless in free text)
HOSTILE: list[tuple[str, str, bool]] = [
    ("jinja-expression", "{{ lookup('pipe', 'touch /tmp/aifactory-canary') }}", False),
    ("jinja-statement", "{% for x in range(9) %}x{% endfor %}", False),
    ("jinja-comment", "{# hidden #}", False),
    ("newline", "/d\nExecStartPre=/bin/sh -c id", False),
    ("nul", "/d\x00x", False),
    ("escape", "\x1b[2J\x1b[31mred", False),
    ("line-separator", "/d\u2028x", False),
    ("bidi-override", "/d\u202ex", False),
    ("command-substitution", "$(touch /tmp/aifactory-canary)", True),
    ("backticks", "`id`", True),
    ("semicolon", "a;reboot", True),
    ("exports-options", "/d *(rw,no_root_squash,insecure)", True),
    ("dotdot", "/data/../etc", True),
    ("double-slash", "/data//etc", True),
    ("long", "a" * 5000, False),
    ("long-path", "/" + "a" * 4999, False),
]
BASE_DATA: dict[str, Any] = yaml.safe_load(BASE)
# The small site lacks an egress rule, a description and endpoints: give it one of each, so that
# the fields sit beside real values.
BASE_DATA["site"]["description"] = "Base site, for hostile-value tests"
BASE_DATA["egress"]["allow"] = [{"name": "mirror", "endpoint": "mirror.example:443", "country": "NG"}]
BASE_DATA["storage"][0]["endpoint"] = "10.20.0.250@o2ib:/lake"
BASE_DATA["access"][0]["expires"] = "2030-06-30"
# And a loop (docs/loop.md) with every string field set, its schedule and its digest among them.
BASE_DATA["loop"] = [
    {
        "model": "triage",
        "trigger": {"schedule": "Mon,Thu 02:30"},
        "evaluation": {"dataset": "images", "version": 1, "digest": "sha256:" + "0" * 64},
        "metrics": [
            {
                "name": "accuracy",
                "better": "higher",
                "min_improvement": 0.01,
                "min_relative_improvement": 0.01,
            }
        ],
        "sign_off": {"by": ["ciso@health.example"]},
    }
]


def _ref_name(node: dict[str, Any]) -> str | None:
    """The $defs name a property points at (through `X | None` and list items)."""
    if "$ref" in node:
        return str(node["$ref"].rsplit("/", 1)[1])
    for branch in node.get("anyOf", []) + ([node["items"]] if "items" in node else []):
        found = _ref_name(branch)
        if found:
            return found
    return None


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    """A property's schema: follow `$ref`, and take the non-null branch of `X | None`."""
    if "$ref" in node:
        return _resolve(SCHEMA["$defs"][node["$ref"].rsplit("/", 1)[1]])
    if "anyOf" in node:
        branches = [b for b in node["anyOf"] if b.get("type") != "null"]
        assert len(branches) == 1, f"a union the walk does not know: {node}"
        return _resolve(branches[0])
    return node


def _is_string(node: dict[str, Any]) -> bool:
    return node.get("type") == "string" or any(k in node for k in ("pattern", "enum", "const"))


Field = tuple[PathKey, str, str]  # (path, pattern, the $defs object it belongs to)


def string_fields(schema: dict[str, Any], data: Any, path: PathKey = (), owner: str = "") -> Iterator[Field]:
    """Every string field under an object schema, at places the data has (a list of objects:
    each element; an absent object or list: created, first element)."""
    for name, raw in schema.get("properties", {}).items():
        node = _resolve(raw)
        here = data.get(name) if isinstance(data, dict) else None
        child = _ref_name(raw) or owner
        if _is_string(node):
            yield path + (name,), node.get("pattern", ""), owner
        elif node.get("type") == "array":
            items = _resolve(node["items"])
            if _is_string(items):
                yield path + (name, 0), items.get("pattern", ""), owner
            else:
                elements = here if isinstance(here, list) and here else [{}]
                for index, element in enumerate(elements):
                    yield from string_fields(items, element, path + (name, index), child)
        elif node.get("type") == "object" or "properties" in node:
            yield from string_fields(node, here if isinstance(here, dict) else {}, path + (name,), child)


def _with_value(path: PathKey, value: str) -> dict[str, Any]:
    """The base site with one field set to a value, creating the objects and lists on the way."""
    data = copy.deepcopy(BASE_DATA)
    node: Any = data
    for part, after in zip(path, path[1:], strict=False):
        if isinstance(part, int):
            while len(node) <= part:
                node.append({})
            node = node[part]
        else:
            if not isinstance(node.get(part), list | dict):
                node[part] = [] if isinstance(after, int) else {}
            node = node[part]
    if isinstance(path[-1], int):
        while len(node) <= path[-1]:
            node.append(value)
    node[path[-1]] = value
    return data


FIELDS: list[Field] = sorted(
    set(string_fields(SCHEMA, BASE_DATA, (), "SiteSpec")), key=lambda f: format_path(f[0])
)


def test_the_walk_finds_every_kind_of_string_field() -> None:
    """The walk reaches names, references, enums, patterns and free text in every object of the
    schema (a check on the walk itself, so that an empty walk cannot pass the test below)."""
    paths = {format_path(p) for p, _, _ in FIELDS}
    assert len(FIELDS) >= 50
    for expected in (
        "schema",
        "site.description",
        "node_pools[0].hardware.gpu.model",
        "storage[0].endpoint",
        "loop[0].trigger.schedule",
        "loop[0].evaluation.digest",
        "loop[0].sign_off.by[0]",
    ):
        assert expected in paths
    with_strings = {
        name
        for name, d in SCHEMA["$defs"].items()
        if any(
            _is_string(_resolve(p)) or _is_string(_resolve(p.get("items", {})))
            for p in d["properties"].values()
        )
    }
    assert with_strings <= {owner for _, _, owner in FIELDS}


def _problems(out: str) -> list[dict[str, Any]]:
    return list(json.loads(out)["error"]["problems"])


@pytest.mark.parametrize("field", FIELDS, ids=[format_path(p) for p, _, _ in FIELDS])
def test_hostile_value_in_every_string_field_is_refused_naming_it(field: Field, tmp_path: Path, cli) -> None:
    path, pattern, _ = field
    free_text = pattern == TEXT_PATTERN
    where = format_path(path)
    for what, value, harmless_in_text in HOSTILE:
        spec = tmp_path / f"{what}.yaml"
        spec.write_text(yaml.safe_dump(_with_value(path, value), sort_keys=False, width=10_000))
        code, out, err = cli("validate", str(spec), "--format", "json")
        assert "Traceback" not in out + err
        if free_text and harmless_in_text:
            assert code == 0, f"{where} = {what}: free text refused: {out}{err}"
            continue
        assert code == 1, f"{where} = {what}: accepted"
        problems = _problems(out)
        at_field = [p for p in problems if p["path"] == where]
        assert at_field, f"{where} = {what}: no problem names the field: {problems}"
        assert all(p["line"] and p["file"] == str(spec) for p in at_field)
        # The JSON output escapes everything; the message itself must carry no raw control character.
        for problem in problems:
            text = f"{problem['message']} {problem['hint']}"
            assert not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in text), (where, what, text)
            assert len(text) < 400, f"{where} = {what}: the message repeats the whole value"


@pytest.mark.parametrize("what", ["newline", "nul", "escape", "jinja-expression", "long-path"])
def test_hostile_value_through_the_installed_command(what: str, tmp_path: Path, run_aifactory) -> None:
    """As a separate process, in the plain text format: file:line: field: message, exit 1."""
    value = next(v for w, v, _ in HOSTILE if w == what)
    spec = tmp_path / "site.yaml"
    path: PathKey = ("datasets", 0, "path")
    spec.write_text(yaml.safe_dump(_with_value(path, value), sort_keys=False, width=10_000))
    result = run_aifactory("validate", str(spec))
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    line = next(
        n for n, text in enumerate(spec.read_text().splitlines(), 1) if text.strip().startswith("path:")
    )
    assert f"{spec}:{line}:" in result.stderr and "datasets[0].path: " in result.stderr
    assert not any(ord(c) < 32 and c not in "\n" for c in result.stderr)


GOOD_ENDPOINTS = [
    ("nfs", "10.30.0.250:/lake"),
    ("nfs", "nfs1.site.example:/"),
    ("lustre", "10.48.0.2@o2ib,10.48.0.3@o2ib:/lake"),
    ("lustre", "mgs1@tcp:mgs2@tcp:/lake/sub"),
    ("ceph", "10.48.0.34,10.48.0.35,10.48.0.36:/lake-dr"),
    ("ceph", "mon1:6789,mon2:6789"),
    ("weka", "weka1,weka2/default"),
    ("s3", "https://s3.lagos.ng-national.internal"),
    ("s3", "http://[fd00::1]:9000/bucket"),
]
BAD_ENDPOINTS = [
    ("nfs", "10.48.0.2@o2ib:/lake"),  # a Lustre NID is not an NFS server
    ("nfs", "server:relative"),
    ("lustre", "10.30.0.250:/lake"),  # no NID
    ("ceph", "https://ceph.example"),
    ("weka", "weka1:/default"),
    ("s3", "s3.example"),  # no scheme
    ("nfs", "server:/a/../b"),
]


@pytest.mark.parametrize(("kind", "endpoint"), GOOD_ENDPOINTS)
def test_endpoints_in_the_grammar_of_their_kind_validate(
    kind: str, endpoint: str, tmp_path: Path, cli
) -> None:
    data = copy.deepcopy(BASE_DATA)
    store = data["storage"][1]
    store.update(kind=kind, endpoint=endpoint)
    if kind == "s3":
        store.pop("mount_path")
    spec = tmp_path / "site.yaml"
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    code, out, err = cli("validate", str(spec))
    assert code == 0, out + err


@pytest.mark.parametrize(("kind", "endpoint"), BAD_ENDPOINTS)
def test_endpoint_outside_the_grammar_of_its_kind_is_refused(
    kind: str, endpoint: str, tmp_path: Path, cli
) -> None:
    data = copy.deepcopy(BASE_DATA)
    data["storage"][1].update(kind=kind, endpoint=endpoint)
    if kind == "s3":
        data["storage"][1].pop("mount_path")
    spec = tmp_path / "site.yaml"
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    code, out, _ = cli("validate", str(spec), "--format", "json")
    assert code == 1
    problems = [p for p in _problems(out) if p["path"] == "storage[1].endpoint"]
    assert problems and f"a {kind} endpoint must be" in problems[0]["message"], out
    assert problems[0]["line"] == next(
        n
        for n, text in enumerate(spec.read_text().splitlines(), 1)
        if "endpoint:" in text and endpoint[:5] in text
    )


@pytest.mark.parametrize("key", ["bad\x1b[2Jkey", "bad\nkey", "{{ lookup('pipe', 'id') }}"])
def test_a_hostile_key_is_named_without_its_control_characters(
    key: str, tmp_path: Path, run_aifactory
) -> None:
    data = copy.deepcopy(BASE_DATA)
    data["storage"][0][key] = "x"
    spec = tmp_path / "site.yaml"
    spec.write_text(yaml.safe_dump(data, sort_keys=False, width=10_000))
    result = run_aifactory("validate", str(spec))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "unknown key" in result.stderr and "storage[0]." in result.stderr
    assert not any(ord(c) < 32 and c != "\n" for c in result.stderr)
    # One line names the field and says what is wrong: the key broke no line.
    line = next(text for text in result.stderr.splitlines() if "unknown key" in text)
    assert "storage[0]." in line


def test_the_json_schema_refuses_the_same_strings() -> None:
    """An editor validating against docs/site-v1.schema.json sees the same grammars: the per-kind
    endpoints (conditionals on `kind`) and the hostile values in a string field."""
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(SCHEMA)
    assert not list(validator.iter_errors(BASE_DATA))
    for endpoints, refused in ((GOOD_ENDPOINTS, False), (BAD_ENDPOINTS, True)):
        for kind, endpoint in endpoints:
            data = copy.deepcopy(BASE_DATA)
            data["storage"][1].update(kind=kind, endpoint=endpoint)
            if kind == "s3":
                data["storage"][1].pop("mount_path")
            assert bool(list(validator.iter_errors(data))) is refused, (kind, endpoint)
    for what, value, _ in HOSTILE:
        data = _with_value(("node_pools", 0, "hardware", "gpu", "model"), value)
        assert list(validator.iter_errors(data)), what
