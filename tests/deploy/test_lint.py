"""The playbooks pass ansible-lint's production profile with an empty skip list, and site.yml parses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from aifactory.bundle.collection import source_collections_path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_lint_config_skips_nothing() -> None:
    config = yaml.safe_load((REPO / ".ansible-lint").read_text())
    assert config["profile"] == "production"
    assert not config.get("skip_list") and not config.get("warn_list")


@pytest.mark.slow
def test_ansible_lint_production_profile_passes(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(BIN / "ansible-lint"), "--profile", "production", "--nocolor", "playbooks/"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={
            "PATH": f"{BIN}:/usr/bin:/bin",
            "HOME": str(tmp_path),
            "ANSIBLE_HOME": str(tmp_path / "ansible"),
            # the roles' modules (aifactory.factory.*) from this checkout, as `aifactory deploy` runs them
            "ANSIBLE_COLLECTIONS_PATH": str(source_collections_path(REPO / "playbooks", tmp_path / "c")),
        },
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "Profile 'production' was required, and it passed" in done.stdout + done.stderr


def test_site_playbook_syntax(tmp_path: Path) -> None:
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  hosts:\n    h1: {}\n")
    done = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "--syntax-check",
            "-i",
            str(inventory),
            str(REPO / "playbooks" / "site.yml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            "PATH": f"{BIN}:/usr/bin:/bin",
            "ANSIBLE_HOME": str(tmp_path / "ansible"),
            "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"),
            "ANSIBLE_COLLECTIONS_PATH": str(source_collections_path(REPO / "playbooks", tmp_path / "c")),
        },
    )
    assert done.returncode == 0, done.stdout + done.stderr
