"""Policy tests: the real regorus engine over the real policies; sites are written to tmp folders."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from aifactory.policy import PolicySet, load_policy_set

REPO = Path(__file__).resolve().parents[2]
LAB_SITE = REPO / "inventory" / "lab" / "site.yaml"
NATIONAL_SITE = REPO / "inventory" / "examples" / "national" / "site.yaml"

SiteWriter = Callable[..., Path]


@pytest.fixture(scope="session")
def policies() -> PolicySet:
    return load_policy_set()


@pytest.fixture(scope="session")
def lab_spec() -> dict[str, Any]:
    return yaml.safe_load(LAB_SITE.read_text())


@pytest.fixture
def write_site(tmp_path: Path, lab_spec: dict[str, Any]) -> SiteWriter:
    """Write a copy of the lab site, changed by `change(spec)`, to a fresh folder; return its path."""
    counter = iter(range(1_000_000))

    def write(change: Callable[[dict[str, Any]], None] | None = None, *, name: str = "site") -> Path:
        spec = copy.deepcopy(lab_spec)
        if change is not None:
            change(spec)
        folder = tmp_path / f"{name}-{next(counter)}"
        folder.mkdir()
        path = folder / "site.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path

    return write
