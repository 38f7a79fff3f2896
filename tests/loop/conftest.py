"""Shared fixtures: the loop's site planned, and real dataset versions (signed with a site key of the
test's own, each decided by the real runtime policy) on a folder standing for the site storage."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from aifactory.data.holdout import DatasetVersionFiles
from aifactory.data.versions import create_version
from aifactory.plan import plan_site
from aifactory.plan.model import SitePlan
from aifactory.policy import RuntimeAuthorizer
from aifactory.trust.issuing.models import ensure_model_key

FIXTURES = Path(__file__).parent / "fixtures"
MakeVersion = Callable[[str, dict[str, bytes]], DatasetVersionFiles]


@pytest.fixture(scope="session")
def plan() -> SitePlan:
    return plan_site(FIXTURES / "site.yaml", write_lock=False).plan


@pytest.fixture(scope="session")
def authorizer(plan: SitePlan) -> RuntimeAuthorizer:
    return RuntimeAuthorizer(plan)


@pytest.fixture
def make_version(plan: SitePlan, authorizer: RuntimeAuthorizer, tmp_path: Path) -> MakeVersion:
    """make_version(dataset, {path: bytes}): the dataset's folder holds exactly those files, then its
    next version is made and returned as the loop reads it."""
    key = ensure_model_key(tmp_path / "runtime")

    def make(dataset: str, files: dict[str, bytes]) -> DatasetVersionFiles:
        folder = tmp_path / "storage" / dataset
        for old in sorted(folder.rglob("*"), reverse=True) if folder.exists() else []:
            relative = old.relative_to(folder)
            if relative.parts[0] not in ("versions", "feedback") and old.is_file():
                old.unlink()
        for relative, body in files.items():
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            (folder / relative).write_bytes(body)
        made = create_version(plan=plan, dataset=dataset, dataset_dir=folder, key=key, authorizer=authorizer)
        return DatasetVersionFiles.of(made.version)

    return make
