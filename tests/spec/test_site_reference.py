"""One rule for every command's SITE argument: a spec file, or a site name by the spec's grammar."""

from __future__ import annotations

from pathlib import Path

import pytest

from aifactory.errors import SpecError, UsageError
from aifactory.spec.reference import resolve_site

LAB_SPEC = Path(__file__).resolve().parents[2] / "inventory" / "lab" / "site.yaml"


def test_a_spec_file_gives_its_site_and_spec() -> None:
    reference = resolve_site(str(LAB_SPEC))
    assert reference.name == "lab" and reference.spec is not None and reference.spec_path == LAB_SPEC
    assert reference.spec.site.name == "lab"


def test_a_site_name_is_taken_as_it_is() -> None:
    assert resolve_site("national-1") == resolve_site("national-1")
    assert resolve_site("national-1").name == "national-1" and resolve_site("national-1").spec is None


@pytest.mark.parametrize("argument", ["../x", "Lab", "a/b", "", "x" * 21, "site\nname", "site\n", "-rf"])
def test_anything_else_is_refused_naming_the_argument(argument: str) -> None:
    with pytest.raises(UsageError, match="neither a site spec file nor a site name"):
        resolve_site(argument)


def test_a_missing_spec_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError):
        resolve_site(str(tmp_path / "nowhere.yaml"))
