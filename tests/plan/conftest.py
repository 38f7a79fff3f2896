"""Plan tests: small sites written for each test, planned in a temporary folder."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NATIONAL = ROOT / "inventory" / "examples" / "national" / "site.yaml"


def site_text(pools: list[tuple[str, int]], *, compute_cidr: str = "10.20.0.0/22",
              mgmt_cidr: str = "10.10.0.0/24") -> str:
    """A site with the given (pool, count) gpu pools, in order, on a 4-rail compute fabric."""
    lines = [
        "schema: aifactory.site/v1",
        "site: {name: grow, jurisdiction: DE}",
        "datacenters: [{name: dc1, country: DE}]",
        "fabrics:",
        f"  - {{name: mgmt, kind: ethernet, purpose: management, cidr: {mgmt_cidr}}}",
        f"  - {{name: compute, kind: roce, purpose: compute, cidr: {compute_cidr}, rails: 4}}",
        "  - {name: bmc, kind: ethernet, purpose: bmc, cidr: 'fd00:9::/64'}",
        "node_pools:",
    ]
    for name, count in pools:
        lines.append(f"  - {{name: {name}, role: gpu, count: {count}, datacenter: dc1, "
                     "hardware: {gpu: {model: L40S, count: 4}}, fabrics: [mgmt, compute], "
                     "bmc: {fabric: bmc, credentials: 'secret://bmc/{host}'}}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def aifactory(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the installed `aifactory` as a separate process (its own state folder)."""
    script = Path(sys.executable).with_name("aifactory")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "aifactory.cli.main"]

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, "AIFACTORY_STATE_HOME": str(tmp_path / "state"), **(env or {})}
        return subprocess.run([*command, *args], capture_output=True, text=True, env=full_env, timeout=120,
                              check=False)

    return run


@pytest.fixture(autouse=True)
def _state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Planning may update an allocation lock, which records in the site's state folder: keep it here."""
    home = tmp_path / "state-home"
    monkeypatch.setenv("AIFACTORY_STATE_HOME", str(home))
    return home
