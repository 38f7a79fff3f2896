"""Validating OSCAL documents against NIST's OSCAL 1.2.1 JSON Schemas, shipped in
aifactory/audit/oscal_content/schemas/ (where they came from: SOURCES.json there)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError

from aifactory.audit.catalog import content_file

SCHEMAS = {
    "catalog": "catalog",
    "profile": "profile",
    "system-security-plan": "ssp",
    "assessment-plan": "assessment-plan",
    "assessment-results": "assessment-results",
    "plan-of-action-and-milestones": "poam",
}
# NIST's schemas use Unicode property classes (outside brackets) in one token pattern; Python's `re`
# has none, so they are spelled as the classes `re` does have: letters, and decimal digits.
_PROPERTY_CLASSES = {r"\p{L}": r"[^\W\d_]", r"\p{N}": r"\d"}


def _python_pattern(pattern: str) -> str:
    for nist, python in _PROPERTY_CLASSES.items():
        pattern = pattern.replace(nist, python)
    return pattern


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if isinstance(instance, str) and not re.search(_python_pattern(pattern), instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


_Validator = jsonschema.validators.extend(jsonschema.Draft7Validator, {"pattern": _pattern})


def schema_errors(document: dict[str, Any]) -> list[str]:
    """Every way `document` breaks NIST's schema for its model (empty when it validates)."""
    (model,) = document
    schema = json.loads(content_file(f"schemas/oscal_{SCHEMAS[model]}_schema.json").read_text())
    validator = _Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]
