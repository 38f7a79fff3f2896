"""The lab's plan, with and without a front door, for the upgrade's batches (planned from a copy of
inventory/lab/site.yaml, so the checkout is never written)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from aifactory.plan import plan_site
from aifactory.plan.model import SitePlan

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
