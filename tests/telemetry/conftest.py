"""Fixtures of the telemetry tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from aifactory.cli.main import main

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
