"""The decision log's disk, seen from the server: a nearly full file system is reported on /metrics
and sheds new requests (503 log-disk-full) before the log could fail; runtime.yaml's decision_log
settings are read, and a bad one is a one-line usage error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import RuntimeSite
from .serving import BODY, PATH, start_server, wait_for_model, write_checkpoint

pytest.importorskip("torch")

# Free-space thresholds above any real free space: the states a nearly full disk gives.
NEARLY_FULL = 0.9999999


def _metric(text: str, name: str) -> float:
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


def test_a_low_disk_warns_on_metrics_and_still_serves(site: RuntimeSite, tmp_path: Path) -> None:
    write_checkpoint(site, tmp_path / "storage")
    running = start_server(
        site,
        tmp_path / "storage",
        tmp_path / "runtime",
        as_deployed=True,
        decision_log={"disk_warn_free": NEARLY_FULL, "disk_shed_free": 0.0, "rotate_bytes": 4096},
    )
    try:
        wait_for_model(running)
        status, _answer = running.call("POST", PATH, BODY, token=site.tokens["health"])
        assert status == 200
        metrics = running.call("GET", "/metrics")[1]["text"]
        assert _metric(metrics, "aifactory_serve_log_disk_state") == 1.0
        assert 0 < _metric(metrics, "aifactory_serve_log_disk_free_ratio") < 1
        assert any("decision log disk low" in line for line in running.output)
    finally:
        running.stop()


def test_a_nearly_full_disk_sheds_requests(site: RuntimeSite, tmp_path: Path) -> None:
    write_checkpoint(site, tmp_path / "storage")
    running = start_server(
        site,
        tmp_path / "storage",
        tmp_path / "runtime",
        as_deployed=True,
        decision_log={"disk_warn_free": NEARLY_FULL, "disk_shed_free": NEARLY_FULL},
    )
    try:
        wait_for_model(running)
        assert running.call("POST", PATH, BODY, token=site.tokens["health"]) == (
            503,
            {"error": "log-disk-full"},
        )
        assert _metric(running.call("GET", "/metrics")[1]["text"], "aifactory_serve_log_disk_state") == 2.0
        assert not running.log_path.exists() or running.log_path.read_text() == ""  # shed, not decided
    finally:
        running.stop()


def test_a_bad_decision_log_setting_is_a_usage_error(site: RuntimeSite, tmp_path: Path) -> None:
    config = tmp_path / "runtime.yaml"
    config.write_text(f'plan: "{site.plan_path}"\ndecision_log:\n  rotate_bytes: "64M"\n')
    done = subprocess.run(
        [sys.executable, "-m", "aifactory.runtime.serve_cli", "--config", str(config), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "decision_log.rotate_bytes is '64M'; it must be an integer" in done.stderr
    assert "Traceback" not in done.stderr
