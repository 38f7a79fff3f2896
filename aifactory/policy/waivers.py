"""Waivers: approved, expiring exceptions to a rule for one resource.

The file sits beside the spec as `<spec stem>.waivers.yaml`:

    waivers:
      - rule: encryption.unencrypted_storage
        resource: storage/scratch
        reason: Scratch holds only derived, de-identified copies until the 2027 refresh
        approved_by: ciso@health.example
        expires: 2027-03-31

A waiver never turns a failure into a pass: the finding is reported as *waived* with its approver
and expiry. A waiver that has expired, or that matches no finding, is itself reported.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from aifactory.errors import Location, Problem, SpecError

WAIVER_FIELDS = ("rule", "resource", "reason", "approved_by", "expires")


@dataclass(frozen=True)
class Waiver:
    rule: str
    resource: str
    reason: str
    approved_by: str
    expires: dt.date
    file: str
    line: int

    def expired(self, today: dt.date) -> bool:
        return self.expires < today

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "resource": self.resource,
            "reason": self.reason,
            "approved_by": self.approved_by,
            "expires": self.expires.isoformat(),
            "file": self.file,
            "line": self.line,
        }


def waivers_path_for(spec_path: Path) -> Path:
    return spec_path.with_name(f"{spec_path.stem}.waivers.yaml")


def load_waivers(path: Path, *, known_rules: set[str]) -> list[Waiver]:
    """Every waiver in the file, or SpecError listing every problem (file, line, field)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(
            f"cannot read the waivers file: {exc.strerror}", location=Location(file=str(path))
        ) from exc
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise SpecError(
            f"the waivers file is not valid YAML: {getattr(exc, 'problem', exc)}",
            location=Location(file=str(path), line=mark.line + 1 if mark else None),
        ) from exc
    entries = _entries(root, path)
    waivers: list[Waiver] = []
    problems: list[Problem] = []
    for index, node in enumerate(entries):
        waiver = _waiver(node, index, path, known_rules, problems)
        if waiver is not None:
            waivers.append(waiver)
    if problems:
        raise SpecError(
            f"{path}: {len(problems)} problem(s) in the waivers file",
            problems=problems,
            location=Location(file=str(path)),
            hint=f"each waiver needs {', '.join(WAIVER_FIELDS)}",
        )
    return waivers


def _entries(root: yaml.Node | None, path: Path) -> list[yaml.Node]:
    if root is None:
        return []
    if isinstance(root, yaml.MappingNode):
        for key, value in root.value:
            if key.value == "waivers" and isinstance(value, yaml.SequenceNode):
                return list(value.value)
            if key.value == "waivers" and value.tag.endswith(":null"):
                return []
    raise SpecError(
        "the waivers file must be a mapping with a `waivers:` list",
        location=Location(file=str(path), line=root.start_mark.line + 1),
    )


def _waiver(
    node: yaml.Node, index: int, path: Path, known_rules: set[str], problems: list[Problem]
) -> Waiver | None:
    where = Location(
        file=str(path),
        line=node.start_mark.line + 1,
        column=node.start_mark.column + 1,
        path=f"waivers[{index}]",
    )
    if not isinstance(node, yaml.MappingNode):
        problems.append(Problem("waiver-not-mapping", "a waiver must be a mapping", where))
        return None
    fields = {key.value: value for key, value in node.value}
    before = len(problems)
    for name in sorted(set(fields) - set(WAIVER_FIELDS)):
        problems.append(Problem("waiver-unknown-field", f"unknown field {name!r}", where))
    values: dict[str, str] = {}
    for name in WAIVER_FIELDS:
        value = fields.get(name)
        if not isinstance(value, yaml.ScalarNode) or not str(value.value).strip():
            problems.append(Problem("waiver-missing-field", f"{name} is required", where))
        else:
            values[name] = str(value.value).strip()
    if "rule" in values and values["rule"] not in known_rules:
        problems.append(
            Problem(
                "waiver-unknown-rule",
                f"rule {values['rule']!r} does not exist",
                where,
                hint="use a rule id from `aifactory policy check --format json`",
            )
        )
    expires = None
    if "expires" in values:
        try:
            expires = dt.date.fromisoformat(values["expires"])
        except ValueError:
            problems.append(Problem("waiver-bad-date", "expires must be a date (YYYY-MM-DD)", where))
    if len(problems) > before or expires is None:
        return None
    return Waiver(
        values["rule"],
        values["resource"],
        values["reason"],
        values["approved_by"],
        expires,
        str(path),
        where.line or 0,
    )
