"""Fixtures for the lifecycle tests: an administrator's key made by the stock `ssh-keygen`, and a
site trust file that grants it for activations only (beside a bundle key granted for bundles only),
as docs/operations.md tells a site to write it; the lab's plan, with and without a front door, for the
upgrade's batches (planned from a copy of inventory/lab/site.yaml, so the checkout is never written)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from aifactory.plan import plan_site
from aifactory.plan.model import SitePlan

ADMIN = "admin@lab.example"
RELEASE = "release@lab.example"


@dataclass(frozen=True)
class Keys:
    admin: Path  # the admin's private key (ssh-keygen, OpenSSH format, no passphrase)
    release: Path  # the bundle signing key: trusted for bundles, not for activations
    stranger: Path  # a key the trust file does not list
    trust: Path  # allowed_signers


def ssh_keygen(path: Path, comment: str) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True
    )
    kind, blob, *_ = path.with_suffix(".pub").read_text().split()
    return f"{kind} {blob}"


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("keys")
    admin = ssh_keygen(folder / "admin_key", ADMIN)
    release = ssh_keygen(folder / "release_key", RELEASE)
    ssh_keygen(folder / "stranger_key", "stranger@else.example")
    trust = folder / "allowed_signers"
    trust.write_text(
        f'{RELEASE} namespaces="aifactory-bundle" {release}\n'
        f'{ADMIN} namespaces="aifactory-activation" {admin}\n'
    )
    return Keys(folder / "admin_key", folder / "release_key", folder / "stranger_key", trust)


LAB_SPEC = Path(__file__).resolve().parents[2] / "inventory" / "lab" / "site.yaml"


def _planned(folder: Path, extra: str = "") -> SitePlan:
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "site.yaml"
    spec.write_text(LAB_SPEC.read_text() + extra)
    shutil.copy(LAB_SPEC.with_name("site.alloc.json"), folder / "site.alloc.json")
    return plan_site(spec).plan


@pytest.fixture(scope="session")
def lab_plan(tmp_path_factory: pytest.TempPathFactory) -> SitePlan:
    return _planned(tmp_path_factory.mktemp("lab"))


@pytest.fixture(scope="session")
def fronted_lab_plan(tmp_path_factory: pytest.TempPathFactory) -> SitePlan:
    return _planned(tmp_path_factory.mktemp("fronted-lab"), "front_door: {}\n")
