"""The committed JSON Schema matches the model; `init` writes a spec that validates; error format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from aifactory.spec import load_spec
from aifactory.spec.schema import DEFAULT_OUTPUT, main, schema_text

FIXTURES = Path(__file__).parent / "fixtures"


def test_committed_schema_is_regenerated_from_the_model(tmp_path: Path) -> None:
    fresh = tmp_path / "schema.json"
    assert main(["-o", str(fresh)]) == 0
    assert fresh.read_text() == DEFAULT_OUTPUT.read_text(), "run `python -m aifactory.spec.schema` and commit"
    assert main(["--check"]) == 0


def test_check_fails_on_a_stale_copy(tmp_path: Path) -> None:
    stale = tmp_path / "schema.json"
    stale.write_text(schema_text().replace('"rails"', '"rail"'))
    assert main(["-o", str(stale), "--check"]) == 1


def test_schema_describes_the_contract() -> None:
    schema = json.loads(schema_text())
    assert schema["properties"]["schema"]["const"] == "aifactory.site/v1"
    assert set(schema["required"]) == {"schema", "site", "datacenters", "fabrics", "node_pools"}
    fabric = schema["$defs"]["Fabric"]
    assert fabric["additionalProperties"] is False and "^x-" in fabric["patternProperties"]
    assert fabric["properties"]["kind"]["enum"] == ["ethernet", "infiniband", "roce"]
    assert schema["$defs"]["Bmc"]["properties"]["credentials"]["pattern"].startswith("^secret://")


def test_contract_example_matches_the_schema_shape() -> None:
    """Every top-level key of the contract's example is a property of the schema."""
    example = yaml.safe_load((FIXTURES / "contract-example.yaml").read_text())
    assert set(example) <= set(json.loads(schema_text())["properties"])


@pytest.mark.parametrize("jurisdiction", ["NG", "EU", "NO"])
def test_init_writes_a_starter_that_validates(jurisdiction: str, tmp_path: Path, cli) -> None:
    target = tmp_path / "new" / "site.yaml"
    code, out, err = cli("init", "my-site", "--jurisdiction", jurisdiction, "-o", str(target))
    assert code == 0, err
    spec = load_spec(target).spec
    assert spec.site.name == "my-site" and spec.site.jurisdiction == jurisdiction
    code, _, err = cli("init", "my-site", "--jurisdiction", jurisdiction, "-o", str(target))
    assert code == 2 and "exists" in err


@pytest.mark.parametrize(
    ("name", "jurisdiction", "phrase"),
    [
        ("My_Site", "NG", "is not a site name"),
        ("site", "ATLANTIS", "unknown jurisdiction"),
    ],
)
def test_init_refuses_bad_names(name: str, jurisdiction: str, phrase: str, tmp_path: Path, cli) -> None:
    code, _, err = cli("init", name, "--jurisdiction", jurisdiction, "-o", str(tmp_path / "s.yaml"))
    assert code == 2 and phrase in err


def test_json_error_format(tmp_path: Path, cli) -> None:
    spec = tmp_path / "site.yaml"
    spec.write_text("schema: aifactory.site/v1\nsite: {name: x, jurisdiction: NG}\n")
    code, out, err = cli("validate", str(spec), "--format", "json")
    error = json.loads(out)["error"]
    assert code == 1 and err == ""
    assert set(error) == {
        "code",
        "message",
        "hint",
        "exit_code",
        "file",
        "line",
        "column",
        "path",
        "problems",
        "omitted_problems",
    }
    assert error["exit_code"] == 1 and error["file"] == str(spec)
    first = error["problems"][0]
    assert set(first) == {"code", "message", "hint", "file", "line", "column", "path"}
    assert (first["code"], first["path"], first["line"]) == ("missing-field", "datacenters", 1)


def test_usage_error_exits_2(cli) -> None:
    code, out, err = cli("validate")
    assert code == 2 and out == ""
    assert err.startswith("error[usage]: the following arguments are required: site") and err.count("\n") == 1
