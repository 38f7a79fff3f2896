"""METADATA: every package and rule is annotated once; a bad block is a clear error."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aifactory.errors import PolicyEngineError
from aifactory.policy import PolicySet
from aifactory.policy.metadata import parse_module

GOOD_PACKAGE = """# METADATA
# scope: package
# title: T
# description: D
# custom:
#   controls: [AC-3]
#   severity: high
#   remediation: R
package aifactory.sample

import rego.v1
"""


def test_every_rule_has_controls_severity_and_remediation(policies: PolicySet) -> None:
    assert set(policies.packages) >= {"locality", "access", "egress", "encryption", "runtime"}
    for annotation in [*policies.packages.values(), *policies.rules.values()]:
        assert annotation.title and annotation.description and annotation.remediation
        assert annotation.controls and annotation.severity in {"info", "low", "medium", "high", "critical"}


def test_control_ids_are_written_once_in_the_policies(policies: PolicySet) -> None:
    """Outside METADATA blocks no policy module names a control ID: results take them from there."""
    control = re.compile(r"\b[A-Z]{2}-\d{1,2}\b")
    for module in policies.policies:
        code = [line for line in module.source.splitlines() if not line.startswith("#")]
        assert not [line for line in code if control.search(line)], module.path


def test_data_document_carries_annotations_and_places(policies: PolicySet) -> None:
    doc = policies.data_document()["aifactory"]
    assert doc["annotations"]["encryption.unencrypted_storage"] == {
        "title": "Unencrypted storage holds sensitive data",
        "controls": ["SC-28(1)"],
        "severity": "high",
    }
    assert doc["classifications"][0] == "public" and "EU" in doc["blocs"]


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("#   controls: [AC-3]\n#   severity: high\n", "custom.remediation"),
        ("#   controls: [AC3]\n#   severity: high\n#   remediation: R\n", "NIST SP 800-53"),
        ("#   controls: [AC-3]\n#   severity: dire\n#   remediation: R\n", "custom.severity"),
    ],
)
def test_incomplete_rule_metadata_is_an_error(block: str, message: str) -> None:
    source = GOOD_PACKAGE + (
        "\n# METADATA\n# title: T\n# description: D\n# custom:\n"
        + block
        + 'deny contains r if {\n\tr := _violation("x", "y", "z")\n}\n'
    )
    with pytest.raises(PolicyEngineError) as caught:
        parse_module(Path("sample.rego"), source)
    assert message in caught.value.message
    assert caught.value.location.line == 13  # the "# METADATA" line


def test_rule_id_comes_from_the_violation_call_or_the_reason() -> None:
    source = GOOD_PACKAGE + (
        "\n# METADATA\n# title: T\n# description: D\n# custom:\n#   controls: [SC-7]\n#   severity: low\n"
        '#   remediation: R\nreasons contains "no-way" if true\n'
    )
    package, annotation, rules = parse_module(Path("sample.rego"), source)
    assert package == "aifactory.sample" and annotation is not None and annotation.controls == ("AC-3",)
    assert [(r.id, r.controls, r.line) for r in rules] == [("sample.no-way", ("SC-7",), 13)]
