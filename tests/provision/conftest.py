"""Shared fixtures for the provisioning tests: the stack folder on sys.path, planned sites."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from aifactory.plan import plan_site
from aifactory.plan.model import SitePlan
from aifactory.resources import resource_dir

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"
STACKS = resource_dir("stacks")
if str(STACKS) not in sys.path:
    sys.path.insert(0, str(STACKS))


def planned_copy(spec: Path, tmp: Path) -> Path:
    """Plan a copy of `spec` (with its allocation lock) so the checkout is never written; return the
    plan JSON path."""
    tmp.mkdir(parents=True, exist_ok=True)
    target = tmp / spec.name
    shutil.copy(spec, target)
    lock = spec.with_name(spec.stem + ".alloc.json")
    if lock.exists():
        shutil.copy(lock, tmp / lock.name)
    planned = plan_site(target)
    plan_file = tmp / "plan.json"
    plan_file.write_text(planned.plan.to_json())
    return plan_file


@pytest.fixture(scope="session")
def lab_plan_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return planned_copy(REPO / "inventory" / "lab" / "site.yaml", tmp_path_factory.mktemp("lab"))


@pytest.fixture(scope="session")
def ib_plan_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return planned_copy(FIXTURES / "ib-site.yaml", tmp_path_factory.mktemp("ib"))


@pytest.fixture(scope="session")
def lab_plan(lab_plan_file: Path) -> SitePlan:
    return SitePlan.load(lab_plan_file)


@pytest.fixture(scope="session")
def ib_plan(ib_plan_file: Path) -> SitePlan:
    return SitePlan.load(ib_plan_file)
