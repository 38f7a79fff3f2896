"""Shared fixtures: a state home per session, the lab site mutated to fail a few rules (with one
finding waived), and reports built once per session (planning and policy take a moment)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from auditfixtures import LAB, TIMESTAMP, failing_spec

from aifactory.audit import ReportOptions, WrittenReport, produce_report
from aifactory.plan import plan_site


@pytest.fixture(scope="session", autouse=True)
def state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test's site state lives in a throwaway folder, never the user's."""
    home = tmp_path_factory.mktemp("state")
    saved = os.environ.get("AIFACTORY_STATE_HOME")
    os.environ["AIFACTORY_STATE_HOME"] = str(home)
    yield home
    if saved is None:
        os.environ.pop("AIFACTORY_STATE_HOME", None)
    else:
        os.environ["AIFACTORY_STATE_HOME"] = saved


@pytest.fixture(scope="session")
def failing_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return failing_spec(tmp_path_factory.mktemp("labfail"))


@pytest.fixture(scope="session")
def failing_report(failing_site: Path, tmp_path_factory: pytest.TempPathFactory) -> WrittenReport:
    folder = tmp_path_factory.mktemp("report-fail")
    return produce_report(
        plan_site(failing_site, write_lock=False), folder, ReportOptions(timestamp=TIMESTAMP)
    )


@pytest.fixture(scope="session")
def lab_report(tmp_path_factory: pytest.TempPathFactory) -> WrittenReport:
    folder = tmp_path_factory.mktemp("lab-spec")
    shutil.copy(LAB, folder / "site.yaml")  # a copy: the report must not touch the checkout
    shutil.copy(LAB.with_name("site.alloc.json"), folder / "site.alloc.json")
    return produce_report(
        plan_site(folder / "site.yaml", write_lock=False),
        tmp_path_factory.mktemp("report-lab"),
        ReportOptions(timestamp=TIMESTAMP),
    )
