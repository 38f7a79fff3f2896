"""Fixtures of the telemetry tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

from aifactory.cli.main import main

if TYPE_CHECKING:
    from tests.conftest import DeployedLab
    from tests.telemetry.monitored_lab import Monitored

CliResult = tuple[int, str, str]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run `aifactory ARGS` in this process (the real parser, handlers and error edge)."""

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(scope="package")
def monitored(deployed_lab: DeployedLab) -> Iterator[Monitored]:
    """The session lab with monitoring deployed, once for every telemetry lab module (they run one
    after another: tests/suite_order.py keeps the deployed-lab modules in path order)."""
    from tests.telemetry.monitored_lab import monitored_lab

    yield from monitored_lab(deployed_lab)
