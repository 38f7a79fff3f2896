"""The spec's monitoring section: validated, carried by the plan only when given, read by the inventory."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from aifactory.inventory.render import monitoring_settings
from aifactory.plan.build import build_plan
from aifactory.plan.model import MonitoringPlan, SitePlan
from aifactory.spec.validate import load_spec
from tests.spec.base_spec import BASE
from tests.telemetry.conftest import CliResult

MONITORING = """\
monitoring:
  pool: gpu
  retention_days: 30
  scrape_interval_seconds: 5
  evaluation_interval_seconds: 5
"""


def _spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "base.yaml"
    path.write_text(text)
    return path


def test_monitoring_section_reaches_the_plan_and_round_trips(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, BASE + MONITORING)).spec
    plan, _ = build_plan(spec)
    assert plan.monitoring == MonitoringPlan(
        host=plan.hosts_in_pool("gpu")[0].name,
        retention_days=30,
        scrape_interval_seconds=5,
        evaluation_interval_seconds=5,
    )
    again = SitePlan.from_dict(json.loads(plan.to_json()))
    assert again == plan
    assert again.digest() == plan.digest()
    assert monitoring_settings(plan) == {
        "host": plan.hosts_in_pool("gpu")[0].name,
        "retention_days": 30,
        "scrape_interval_seconds": 5,
        "evaluation_interval_seconds": 5,
    }


def test_a_spec_without_monitoring_plans_as_before_and_defaults_to_the_control_host(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, BASE)).spec
    plan, _ = build_plan(spec)
    assert plan.monitoring is None
    assert "monitoring" not in plan.to_dict()  # plans written before the section keep their bytes
    settings = monitoring_settings(plan)
    assert settings is not None
    assert settings["host"] == plan.control_host
    assert settings["retention_days"] == 15


def test_monitoring_changes_the_spec_digest_only_when_given(tmp_path: Path) -> None:
    without = build_plan(load_spec(_spec(tmp_path, BASE)).spec)[0]
    (tmp_path / "other").mkdir()
    defaults = build_plan(load_spec(_spec(tmp_path / "other", BASE + "monitoring: {}\n")).spec)[0]
    assert without.spec_digest != defaults.spec_digest
    assert defaults.monitoring is not None and defaults.monitoring.host == defaults.control_host


def test_unknown_monitoring_pool_is_refused_with_its_line(
    tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    path = _spec(tmp_path, BASE + "monitoring:\n  pool: nowhere\n")
    code, _out, err = cli("validate", str(path))
    assert code != 0
    assert "monitoring.pool" in err and "nowhere" in err
    assert f"{path}:{len(BASE.splitlines()) + 2}" in err


def test_retention_out_of_bounds_is_refused(tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    path = _spec(tmp_path, BASE + "monitoring:\n  retention_days: 0\n")
    code, _out, err = cli("validate", str(path))
    assert code != 0
    assert "monitoring.retention_days" in err
