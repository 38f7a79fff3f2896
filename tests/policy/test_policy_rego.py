"""`aifactory policy test`, and the mutation check: remove any rule and some Rego test fails."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from aifactory.policy import PolicySet, load_policy_set
from aifactory.policy.testing import list_rego_tests, run_rego_tests, without_rule

from .conftest import REPO

ALL_RULES = sorted(load_policy_set().rules)


def test_policy_test_command_passes_with_one_line_per_test(policies: PolicySet) -> None:
    result = subprocess.run(
        [str(REPO / ".venv" / "bin" / "aifactory"), "policy", "test"],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    names = list_rego_tests(policies)
    assert result.returncode == 0, result.stdout + result.stderr
    assert lines[:-1] == [f"PASS {name}" for name in names]
    assert lines[-1] == f"{len(names)} passed, 0 failed"
    assert len(names) >= 2 * len(policies.rules)  # an allowed and a denied case per rule, at least


def test_every_policy_file_has_a_test_file_beside_it(policies: PolicySet) -> None:
    for module in policies.policies:
        assert module.path.with_name(f"{module.path.stem}_test.rego").exists(), module.path


def _mutant_tree(policies: PolicySet, rule_id: str, root: Path) -> Path:
    tree = root / "policies"
    shutil.copytree(policies.root / "data", tree / "data")
    for relative, source in without_rule(policies, rule_id).items():
        (tree / relative).parent.mkdir(parents=True, exist_ok=True)
        (tree / relative).write_text(source)
    return tree


@pytest.mark.parametrize("rule_id", ALL_RULES)
def test_removing_a_rule_fails_a_rego_test(policies: PolicySet, rule_id: str, tmp_path: Path) -> None:
    tree = _mutant_tree(policies, rule_id, tmp_path)
    mutant = load_policy_set(tree)
    assert rule_id not in mutant.rules and len(mutant.rules) == len(policies.rules) - 1
    failed = [r.name for r in run_rego_tests(policies=mutant) if not r.passed]
    assert failed, f"no Rego test notices that {rule_id} is gone"


def test_a_failing_rego_test_is_reported(policies: PolicySet, tmp_path: Path) -> None:
    tree = _mutant_tree(policies, "egress.endpoint_on_air_gapped_site", tmp_path)
    result = subprocess.run(
        [str(REPO / ".venv" / "bin" / "aifactory"), "policy", "test", "--policies", str(tree)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "FAIL data.aifactory.egress_test.test_endpoint_on_air_gapped_site_denied" in result.stdout
    assert result.stdout.strip().splitlines()[-1].endswith(" passed, 1 failed")


@pytest.mark.skipif(
    shutil.which("opa") is None, reason="no `opa` binary on the PATH (cannot be installed here)"
)
def test_opa_test_runs_the_same_tests(policies: PolicySet) -> None:
    from aifactory.policy.testing import run_opa_tests

    results = run_opa_tests(policies=policies)
    assert sorted(r.name for r in results) == sorted(list_rego_tests(policies))
    assert all(r.passed for r in results), [r for r in results if not r.passed]


def test_policy_test_with_opa_engine_needs_the_binary() -> None:
    if shutil.which("opa") is not None:
        pytest.skip("an opa binary is present; the test above covers it")
    result = subprocess.run(
        [str(REPO / ".venv" / "bin" / "aifactory"), "policy", "test", "--engine", "opa"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 3 and "no `opa` binary" in result.stderr
