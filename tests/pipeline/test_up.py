"""`aifactory up` end to end on a lab of its own: real namespaces, sshd, Ansible, torch, Slurm.

One lab (site `up<pid>`) is brought up by the first real run and shared by the tests of this module,
which run in order: a policy deny changes nothing; the first run serves a model, answers one allowed
and one denied request and writes a signed report; a second run changes nothing and is fast; a run
plans the site once; a host
failing at deploy stops `up` with exit 4 naming it, and the next run resumes at deploy.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import copy_lab_spec, lab_unavailable

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(lab_unavailable() is not None, reason=str(lab_unavailable())),
]

AIFACTORY = [sys.executable, "-m", "aifactory.cli.main"]


@dataclass
class UpSite:
    spec: Path
    name: str
    env: dict[str, str]
    first_seconds: float = 0.0

    def run(self, *args: str, timeout: float = 1500) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*AIFACTORY, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def stages(self) -> dict[str, dict]:
        path = Path(self.env["AIFACTORY_STATE_HOME"]) / self.name / "up" / "stages.json"
        return json.loads(path.read_text())

    def namespaces(self) -> list[str]:
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        return [line.split()[0] for line in listed.splitlines() if f"aif.{self.name}." in line]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpSite]:
    root = tmp_path_factory.mktemp("up")
    name = f"up{os.getpid()}"
    spec = copy_lab_spec(root / "site", name)
    env = {
        **os.environ,
        "AIFACTORY_STATE_HOME": str(root / "state"),
        "AIFACTORY_BUNDLES_HOME": str(root / "bundles"),
        "PYTHONPATH": str(Path(__file__).parents[2]),
    }
    up_site = UpSite(spec, name, env)
    try:
        yield up_site
    finally:
        up_site.run("down", str(spec), timeout=300)


def test_a_policy_deny_stops_before_any_change(site: UpSite, tmp_path: Path) -> None:
    denied = copy_lab_spec(tmp_path, site.name + "x")
    denied.write_text(denied.read_text().replace("encrypted_at_rest: true", "encrypted_at_rest: false"))
    result = site.run("up", str(denied), "--lab", timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "SC-28" in result.stderr and "storage/share" in result.stderr
    assert "policy" in result.stderr and "FAILED" in result.stderr
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"aif.{site.name}x." not in listed, "a denied site must not get a lab"
    records = json.loads(
        (Path(site.env["AIFACTORY_STATE_HOME"]) / (site.name + "x") / "up" / "stages.json").read_text()
    )
    assert records["policy"]["status"] == "failed"
    assert "lab" not in records and "bundle" not in records


def test_first_up_serves_a_model_and_writes_a_signed_report(site: UpSite) -> None:
    began = time.monotonic()
    result = site.run("up", str(site.spec), "--lab")
    site.first_seconds = time.monotonic() - began
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    stages = site.stages()
    assert all(record["status"] in ("ok", "skipped") for record in stages.values()), stages
    assert stages["provision"]["status"] == "skipped" and "pulumi" in stages["provision"]["summary"]
    serve = stages.get("serve", {}).get("outputs")
    if serve is not None:
        assert serve["allowed"]["status"] == 200 and serve["allowed"]["outputs"], serve
        assert serve["denied"]["status"] == 403 and serve["denied"]["reason"], serve
        assert serve["denied"]["decision_id"]
    report = stages["audit"]["outputs"]["report"]
    trust = stages["audit"]["outputs"]["trust"]
    assert trust == str(Path(site.env["AIFACTORY_STATE_HOME"]) / site.name / "audit" / "allowed_signers")
    verify = site.run("audit", "verify", report, "--trust", trust)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert site.namespaces(), "the lab should be up"


def test_second_up_changes_nothing_and_is_fast(site: UpSite) -> None:
    assert site.first_seconds, "needs the first run"
    before = site.stages()
    began = time.monotonic()
    result = site.run("up", str(site.spec), "--lab")
    seconds = time.monotonic() - began
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    after = site.stages()
    for stage in ("bundle", "import", "deploy", "train"):
        if stage in before:
            assert after[stage] == before[stage], f"{stage} ran again"
    assert "unchanged" in result.stdout
    assert "changed=0" in result.stderr  # deploy re-probed in check mode and found nothing to change
    assert seconds < 0.25 * site.first_seconds, (seconds, site.first_seconds)


def test_an_up_plans_the_site_once(site: UpSite, tmp_path: Path) -> None:
    """One `aifactory up` (every stage re-verified: deploy re-reads the hosts, serve and audit run)
    calls the plan builder exactly once: the CLI plans, the stages take that plan, and deploy
    compares it with the bundle's signed plan by digest instead of planning again."""
    assert site.first_seconds, "needs the first run"
    count = tmp_path / "plans"
    counter = Path(__file__).with_name("count_plans.py")
    result = subprocess.run(
        [sys.executable, str(counter), str(count), "up", str(site.spec), "--lab"],
        env=site.env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert "deploy" in result.stderr and "changed=0" in result.stderr
    assert count.read_text().strip() == "1"


def _cut_off(site: UpSite, host: str) -> None:
    """Kill the host's sshd, then the control host's SSH control masters to it."""
    status = json.loads(site.run("lab", "status", str(site.spec), "--format", "json").stdout)
    entry = next(h for h in status["hosts"] if h["name"] == host)
    os.kill(entry["sshd"]["pid"], signal.SIGTERM)
    for target in (entry["management_address"], host):
        site.run("lab", "exec", str(site.spec), "--", "ssh", "-F", status["ssh_config"], "-O", "exit", target)


def test_a_failed_deploy_names_the_host_and_the_next_run_resumes_there(site: UpSite) -> None:
    host = f"{site.name}-cpu-002"
    _cut_off(site, host)
    failed = site.run("up", str(site.spec), "--lab", "--from", "deploy")
    assert failed.returncode == 4, failed.stdout[-2000:] + failed.stderr[-4000:]
    assert host in failed.stderr and "resumes at deploy" in failed.stderr
    assert site.stages()["deploy"]["status"] == "failed"
    restored = site.run("lab", "up", str(site.spec))  # heals the lab: restarts the dead sshd
    assert restored.returncode == 0, restored.stderr
    resumed = site.run("up", str(site.spec), "--lab")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-4000:]
    lines = resumed.stderr.splitlines()
    assert any("bundle" in line and "unchanged" in line for line in lines)
    assert any("deploy" in line and " ok " in line for line in lines)
    assert site.stages()["deploy"]["status"] == "ok"


def test_down_removes_the_lab(site: UpSite) -> None:
    result = site.run("down", str(site.spec), timeout=300)
    assert result.returncode == 0, result.stderr
    assert site.namespaces() == []
