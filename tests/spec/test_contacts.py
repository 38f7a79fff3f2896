"""The spec's contacts section: the site's security contact, an email address in the spec's grammar,
which becomes root's mail alias on every host and the host scans' tailored value (docs/site-spec.md,
docs/audit.md). A value outside the grammar (a newline that would add an /etc/aliases line, Jinja, a
pipe to a command, a second address) is refused by `aifactory validate`, naming the field and line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from base_spec import BASE

from aifactory.inventory import build_inventory, write_inventory
from aifactory.plan import plan_site


def _site(tmp_path: Path, contact: object) -> Path:
    data = yaml.safe_load(BASE)
    data["contacts"] = {"security": contact}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


GOOD = ["soc@agency.example", "security-ops+root@ng.gov.example", "r@[10.0.0.1]"]


@pytest.mark.parametrize("contact", GOOD)
def test_a_security_contact_reaches_the_plan_and_the_inventory_as_data(
    contact: str, tmp_path: Path, cli
) -> None:  # noqa: ANN001
    path = _site(tmp_path, contact)
    code, out, err = cli("validate", str(path))
    assert code == 0, out + err
    plan = plan_site(path, write_lock=False).plan
    assert plan.contacts is not None and plan.contacts.security == contact
    write_inventory(build_inventory(plan), tmp_path / "inventory")
    group_vars = (tmp_path / "inventory" / "group_vars" / "all.yml").read_text()
    assert f"aifactory_security_contact: !unsafe '{contact}'" in group_vars


@pytest.mark.parametrize(
    "contact",
    [
        "soc@lab.example\nroot: attacker@evil.example",
        "soc@lab.example\n",
        "{{ lookup('pipe', 'id') }}@lab.example",
        "|/bin/sh -c id",
        "soc@lab.example, other@lab.example",
        "soc",
        "",
        "a" * 65 + "@lab.example",
        42,
    ],
    ids=["newline-line", "trailing-newline", "jinja", "pipe", "two", "no-at", "empty", "long-local", "int"],
)
def test_a_contact_outside_the_email_grammar_is_refused_naming_the_field(
    contact: object, tmp_path: Path, cli
) -> None:  # noqa: ANN001
    code, out, _ = cli("validate", str(_site(tmp_path, contact)), "--format", "json")
    assert code == 1
    problems = json.loads(out)["error"]["problems"]
    assert [p["path"] for p in problems] == ["contacts.security"], problems
    assert all(p["line"] for p in problems)


def test_the_section_needs_its_address(tmp_path: Path, cli) -> None:  # noqa: ANN001
    data = yaml.safe_load(BASE)
    data["contacts"] = {}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    code, out, _ = cli("validate", str(path), "--format", "json")
    assert code == 1
    assert [p["path"] for p in json.loads(out)["error"]["problems"]] == ["contacts.security"]
