"""The policies on disk and their `# METADATA` annotations, parsed once.

Neither engine here supports `rego.metadata.rule()`, so this module reads the annotation comment
blocks itself. A block directly above `package` annotates the package; a block directly above a
rule annotates that rule. A rule's id is `<package>.<name>`, where the name is the literal the rule
passes to its package's `_violation(...)` helper (site rules) or the reason code in its head
(`reasons contains "no-grant"`, runtime rules). Control IDs, severity and remediation live only
here, in the Rego source; the engines receive them as `data.aifactory.annotations`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from aifactory.errors import Location, PolicyEngineError
from aifactory.resources import places_data_path, resource_dir

DECISION_PACKAGES = ("runtime", "health", "promotion")  # packages that decide, not find
SEVERITIES = ("info", "low", "medium", "high", "critical")
_PACKAGE_LINE = re.compile(r"^package\s+([a-z_][a-z0-9_.]*)\s*$")
_RULE_ID = re.compile(r'(?:_violation\(\s*|^\w+\s+contains\s+)"([a-z0-9][a-z0-9_-]*)"', re.MULTILINE)
_CONTROL_ID = re.compile(r"^[A-Z]{2}-\d{1,2}(\(\d{1,2}\))?$")


@dataclass(frozen=True)
class Annotation:
    """What a METADATA block says about a package or a rule."""

    id: str  # "locality" for a package, "locality.datacenter_outside_jurisdiction" for a rule
    package: str  # short package name, e.g. "locality"
    title: str
    description: str
    controls: tuple[str, ...]
    severity: str
    remediation: str
    file: str
    line: int

    def as_data(self) -> dict[str, Any]:
        """What the engines see (data.aifactory.annotations[id])."""
        return {"title": self.title, "controls": list(self.controls), "severity": self.severity}

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "package": self.package,
            "title": self.title,
            "description": self.description,
            "controls": list(self.controls),
            "severity": self.severity,
            "remediation": self.remediation,
            "file": self.file,
            "line": self.line,
        }


@dataclass(frozen=True)
class PolicyModule:
    path: Path
    package: str  # full Rego package, e.g. "aifactory.locality"
    source: str
    is_test: bool


@dataclass(frozen=True)
class PolicySet:
    """Every policy and test module of a policy folder, its data and its annotations."""

    root: Path
    modules: tuple[PolicyModule, ...]
    places: dict[str, Any]
    packages: dict[str, Annotation]  # by short package name
    rules: dict[str, Annotation]  # by rule id
    digest: str = field(default="")

    @property
    def policies(self) -> tuple[PolicyModule, ...]:
        return tuple(m for m in self.modules if not m.is_test)

    @property
    def tests(self) -> tuple[PolicyModule, ...]:
        return tuple(m for m in self.modules if m.is_test)

    def deny_packages(self) -> list[str]:
        """Short names of the packages that produce site findings (they have rules and a deny set);
        the run-time and health packages decide other inputs (a request, a host's measurements)."""
        return sorted({a.package for a in self.rules.values() if a.package not in DECISION_PACKAGES})

    def data_document(self, site: dict[str, Any] | None = None) -> dict[str, Any]:
        """The base document the engines load: data.aifactory = places + annotations (+ the site)."""
        doc: dict[str, Any] = dict(self.places)
        doc["country_index"] = {code: True for code in self.places.get("countries", [])}
        doc["annotations"] = {rule_id: a.as_data() for rule_id, a in sorted(self.rules.items())}
        if site is not None:
            doc["site"] = site
        return {"aifactory": doc}

    def rule(self, rule_id: str) -> Annotation:
        return self.rules[rule_id]


def short_package(package: str) -> str:
    return package.removeprefix("aifactory.")


def _error(message: str, path: Path, line: int | None = None, hint: str | None = None) -> PolicyEngineError:
    return PolicyEngineError(
        message,
        code="policy-metadata",
        location=Location(file=str(path), line=line),
        hint=hint
        or "every package and rule needs a # METADATA block with title, "
        "description and custom: controls, severity, remediation",
    )


def _parse_block(lines: list[str], path: Path, line: int) -> dict[str, Any]:
    text = "\n".join(raw[2:] if raw.startswith("# ") else raw[1:] for raw in lines)
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _error(f"METADATA block is not valid YAML: {exc}", path, line) from exc
    if not isinstance(parsed, dict):
        raise _error("METADATA block is not a mapping", path, line)
    return parsed


def _annotation(block: dict[str, Any], ident: str, package: str, path: Path, line: int) -> Annotation:
    custom = block.get("custom")
    if not isinstance(custom, dict):
        raise _error(f"{ident}: METADATA has no custom: mapping", path, line)
    controls = custom.get("controls")
    if not (
        isinstance(controls, list)
        and controls
        and all(isinstance(c, str) and _CONTROL_ID.match(c) for c in controls)
    ):
        raise _error(
            f"{ident}: custom.controls must be a list of NIST SP 800-53 IDs such as AC-3 or SC-28(1)",
            path,
            line,
        )
    severity = custom.get("severity")
    if severity not in SEVERITIES:
        raise _error(f"{ident}: custom.severity must be one of {', '.join(SEVERITIES)}", path, line)
    for key, value in (
        ("title", block.get("title")),
        ("description", block.get("description")),
        ("custom.remediation", custom.get("remediation")),
    ):
        if not isinstance(value, str) or not value.strip():
            raise _error(f"{ident}: METADATA needs a non-empty {key}", path, line)
    return Annotation(
        ident,
        package,
        block["title"].strip(),
        " ".join(block["description"].split()),
        tuple(controls),
        severity,
        " ".join(custom["remediation"].split()),
        path.name,
        line,
    )


def parse_module(path: Path, source: str) -> tuple[str, Annotation | None, list[Annotation]]:
    """(package, package annotation, rule annotations) of one Rego file."""
    lines = source.splitlines()
    package: str | None = None
    package_annotation: Annotation | None = None
    rules: list[Annotation] = []
    pending: tuple[dict[str, Any], int] | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip() == "# METADATA":
            start = i + 1
            i += 1
            block_lines = []
            while i < len(lines) and lines[i].startswith("#"):
                block_lines.append(lines[i])
                i += 1
            pending = (_parse_block(block_lines, path, start), start)
            continue
        match = _PACKAGE_LINE.match(line)
        if match:
            package = match.group(1)
            if pending is not None:
                package_annotation = _annotation(
                    pending[0], short_package(package), short_package(package), path, pending[1]
                )
                pending = None
        elif pending is not None and line.strip():
            if package is None:
                raise _error(
                    "METADATA block before the package line does not annotate the package", path, pending[1]
                )
            body = _rule_text(lines, i)
            found = _RULE_ID.findall(body)
            if len(found) != 1:
                raise _error(
                    f"the rule after this METADATA block must name exactly one rule id "
                    f"(found {found or 'none'})",
                    path,
                    i + 1,
                )
            short = short_package(package)
            rules.append(_annotation(pending[0], f"{short}.{found[0]}", short, path, pending[1]))
            pending = None
        i += 1
    if package is None:
        raise _error("no package line", path)
    return package, package_annotation, rules


def _rule_text(lines: list[str], start: int) -> str:
    """The rule starting at `start`: up to the next blank line at the top level."""
    end = start
    while end < len(lines) and lines[end].strip():
        end += 1
    return "\n".join(lines[start:end])


def load_policy_set(root: Path | None = None, places_path: Path | None = None) -> PolicySet:
    """Read and check every module under `root` (default: the installed policies folder)."""
    root = (root or resource_dir("policies")).resolve()
    places_file = places_path or (
        root / "data" / "places.json" if (root / "data" / "places.json").exists() else places_data_path()
    )
    return _load_cached(root, places_file.resolve(), _tree_stamp(root, places_file))


def _tree_stamp(root: Path, places_file: Path) -> tuple[tuple[str, int, int], ...]:
    files = sorted(root.rglob("*.rego")) + [places_file]
    return tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files)


@lru_cache(maxsize=8)
def _load_cached(root: Path, places_file: Path, _stamp: tuple[tuple[str, int, int], ...]) -> PolicySet:
    modules: list[PolicyModule] = []
    packages: dict[str, Annotation] = {}
    rules: dict[str, Annotation] = {}
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.rego")):
        source = path.read_text(encoding="utf-8")
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + source.encode() + b"\0")
        is_test = path.stem.endswith("_test")
        package, package_annotation, rule_annotations = parse_module(path, source)
        modules.append(PolicyModule(path, package, source, is_test))
        if is_test:
            continue
        if package_annotation is None:
            raise _error(f"package {package} has no METADATA block", path, 1)
        packages[package_annotation.id] = package_annotation
        for annotation in rule_annotations:
            if annotation.id in rules:
                raise _error(f"rule id {annotation.id} is annotated twice", path, annotation.line)
            rules[annotation.id] = annotation
    try:
        places = json.loads(places_file.read_text())
    except (OSError, ValueError) as exc:
        raise _error(f"cannot read the places data: {exc}", places_file) from exc
    digest.update(places_file.read_bytes())
    if not modules:
        raise _error("no Rego policies found", root)
    return PolicySet(root, tuple(modules), places, packages, rules, "sha256:" + digest.hexdigest())
