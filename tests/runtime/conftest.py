"""Shared fixtures: one planned site with tokens for every kind of tenant, and a generated dataset."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from waiting import scaled

from aifactory.plan import plan_site
from aifactory.runtime import dataset as datasets
from aifactory.trust.issuing.tokens import issue_token, revoke_token
from aifactory.trust.tokens import TrustFiles

FIXTURES = Path(__file__).parent / "fixtures"
SITE = "rtlab"
DATASET_PATH = "srv/share/datasets/vitals"  # the plan's host_path, below a storage root


@dataclass(frozen=True)
class RuntimeSite:
    root: Path
    plan_path: Path
    runtime_dir: Path
    storage_root: Path
    tokens: dict[str, str]

    @property
    def trust(self) -> TrustFiles:
        return TrustFiles(self.runtime_dir)

    @property
    def dataset_dir(self) -> Path:
        return self.storage_root / DATASET_PATH


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> RuntimeSite:
    """tokens: one per tenant of fixtures/site.yaml, plus `revoked` (health's, revoked)."""
    root = tmp_path_factory.mktemp("rtsite")
    plan_path = root / "plan.json"
    plan_path.write_text(plan_site(FIXTURES / "site.yaml", write_lock=False).plan.to_json())
    trust = TrustFiles(root / "runtime")
    expires = datetime.now(UTC) + timedelta(days=1)
    tokens = {
        tenant: issue_token(trust, site=SITE, tenant=tenant, expires=expires).token
        for tenant in ("health", "research", "partner", "analyst", "visitor")
    }
    revoked = issue_token(trust, site=SITE, tenant="health", expires=expires)
    revoke_token(trust, site=SITE, token_id=revoked.claims.id, reason="test")
    tokens["revoked"] = revoked.token
    storage_root = root / "storage"
    datasets.generate(storage_root / DATASET_PATH, name="vitals", samples=2048, seed=7)
    return RuntimeSite(root, plan_path, trust.root, storage_root, tokens)


def write_job(site: RuntimeSite, folder: Path, *, tenant: str = "health", **fields: object) -> Path:
    """A job in its own storage root (a copy of the dataset) so that runs never share checkpoints."""
    shutil.copytree(site.dataset_dir, folder / "storage" / DATASET_PATH)
    (folder / "token").write_text(site.tokens[tenant])
    job = {
        "schema": "aifactory.job/v1",
        "name": "vitals-train",
        "plan": str(site.plan_path),
        "token_file": "token",
        "dataset": "vitals",
        "model": "vitals-mlp",
        "storage_root": "storage",
        "runtime_dir": str(site.runtime_dir),
        "rendezvous_port": free_port(),
        "processes_per_host": 2,
        "network": {"hidden": 32, "layers": 2},
        # Every wait of a multi-process job set explicitly, for a loaded machine (tests/waiting.py).
        "timeouts": {"rendezvous_s": round(scaled(60)), "collective_s": round(scaled(60))},
        **fields,
    }
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(autouse=True)
def _no_server_outlives_its_test() -> Iterator[None]:
    """A failed test must not leave its server running (module-scoped ones are stopped by their fixture)."""
    from .serving import STARTED

    before = len(STARTED)
    yield
    for process in STARTED[before:]:
        if process.poll() is None:
            process.kill()
            process.wait()
