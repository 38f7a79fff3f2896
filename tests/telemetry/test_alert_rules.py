"""The alert rules (policies/alerts/*.rules.yml) pass Prometheus' own checks and unit tests.

Real parts: Debian's `promtool` (from the prometheus package, which scripts/setup.sh installs) checks
every rule file and runs its `promtool test rules` file, written with the evaluation interval the
monitoring role ships and the rules' own `for:` durations.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from aifactory.spec.model import DEFAULT_EVALUATION_INTERVAL_SECONDS

ALERTS = Path(__file__).resolve().parents[2] / "policies" / "alerts"
RULE_FILES = sorted(ALERTS.glob("*.rules.yml"))


def _promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: scripts/setup.sh installs Debian's prometheus package"
    return found


def _test_file(rules: Path) -> Path:
    return rules.with_name(rules.name.removesuffix(".yml") + "_test.yml")


def _alerts(rules: Path) -> list[dict[str, object]]:
    groups = yaml.safe_load(rules.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_there_are_rule_files_for_every_promised_alert() -> None:
    names = {str(rule["alert"]) for rules in RULE_FILES for rule in _alerts(rules)}
    assert {
        "HostDown",
        "HostDrained",
        "DecisionLogStalled",
        "CertificateExpiring",
        "SigningKeyExpiring",
        "RuntimeFilesChanged",
        "DiskFilling",
        "ClockOffset",
        "ServingErrorRate",
        "ServingLatency",
    } <= names


@pytest.mark.parametrize("rules", RULE_FILES, ids=lambda path: path.name)
def test_rule_file_passes_promtool_check(rules: Path) -> None:
    done = subprocess.run([_promtool(), "check", "rules", str(rules)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("rules", RULE_FILES, ids=lambda path: path.name)
def test_rule_file_passes_its_promtool_unit_tests(rules: Path) -> None:
    tests = _test_file(rules)
    assert tests.is_file(), f"{rules.name} has no promtool test file {tests.name}"
    spec = yaml.safe_load(tests.read_text())
    # Its own rules first; a test may load others of this folder that read its records (the energy
    # rules' test runs the economics rules over them).
    assert spec["rule_files"][0] == rules.name
    assert {ALERTS / name for name in spec["rule_files"]} <= set(RULE_FILES)
    # The shipped evaluation interval: the one Prometheus runs the rules at unless the spec says otherwise.
    assert spec["evaluation_interval"] == f"{DEFAULT_EVALUATION_INTERVAL_SECONDS}s"
    done = subprocess.run(
        [_promtool(), "test", "rules", tests.name], cwd=ALERTS, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_monitoring_role_installs_every_rule_file() -> None:
    """The role copies the rule files it names; one left out of its list would never reach Prometheus."""
    tasks = yaml.safe_load((ALERTS.parents[1] / "playbooks/roles/monitoring/tasks/server.yml").read_text())
    (written,) = [task for task in tasks if "alert rules from the verified bundle" in task.get("name", "")]
    files = written["aifactory.factory.aifactory_files"]["files"]
    rules = sorted(
        Path(entry["path"]).name for entry in files if Path(entry["path"]).name.endswith(".rules.yml")
    )
    assert rules == [path.name for path in RULE_FILES]
    for entry in files:  # each read from the bundle's file of the same name, and checked by promtool
        if entry["path"].endswith(".rules.yml"):
            assert f"'/{Path(entry['path']).name}'" in entry["content"], entry
            assert entry["validate"] == "promtool check rules %s"


@pytest.mark.parametrize("rules", RULE_FILES, ids=lambda path: path.name)
def test_every_alert_is_tested_firing_and_quiet(rules: Path) -> None:
    """Each alert has a test where it fires and one where it does not (before its `for:` or for a
    healthy series), so a rule that always or never fires fails its own test file."""
    cases = [
        case
        for test in yaml.safe_load(_test_file(rules).read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    for rule in _alerts(rules):
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case.get("exp_alerts") for case in mine), f"{rule['alert']} is never tested firing"
        assert any(not case.get("exp_alerts") for case in mine), f"{rule['alert']} is never tested quiet"


def test_a_rule_that_fires_too_early_fails_its_unit_test(tmp_path: Path) -> None:
    """The unit tests pin the `for:` durations: HostDown with `for: 30s` fails hosts.rules_test.yml."""
    for path in ALERTS.glob("hosts.rules*.yml"):
        shutil.copy(path, tmp_path / path.name)
    rules = tmp_path / "hosts.rules.yml"
    text = rules.read_text()
    assert 'expr: up{job="node"} == 0\n        for: 1m' in text
    rules.write_text(
        text.replace(
            'expr: up{job="node"} == 0\n        for: 1m', 'expr: up{job="node"} == 0\n        for: 30s'
        )
    )
    done = subprocess.run(
        [_promtool(), "test", "rules", "hosts.rules_test.yml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "HostDown" in done.stdout + done.stderr
