"""Helpers for the spec tests: run the real CLI, in this process or as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from aifactory.cli.main import main

CliResult = tuple[int, str, str]


def aifactory_command() -> list[str]:
    """The installed console script beside this Python, else the module."""
    script = Path(sys.executable).with_name("aifactory")
    return [str(script)] if script.exists() else [sys.executable, "-m", "aifactory.cli.main"]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run `aifactory ARGS` in this process (the real parser, handlers and error edge)."""

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture
def run_aifactory(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `aifactory ARGS` as a separate process with its own state folder."""

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, "AIFACTORY_STATE_HOME": str(tmp_path / "state"), **(env or {})}
        return subprocess.run(
            [*aifactory_command(), *args],
            capture_output=True,
            text=True,
            env=full_env,
            timeout=60,
            check=False,
        )

    return run
