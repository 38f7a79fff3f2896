"""Plan tests: a state home per test and the installed command as a separate process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def aifactory(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the installed `aifactory` as a separate process (its own state folder)."""
    script = Path(sys.executable).with_name("aifactory")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "aifactory.cli.main"]

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, "AIFACTORY_STATE_HOME": str(tmp_path / "state"), **(env or {})}
        return subprocess.run(
            [*command, *args], capture_output=True, text=True, env=full_env, timeout=120, check=False
        )

    return run


@pytest.fixture(autouse=True)
def _state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Planning may update an allocation lock, which records in the site's state folder: keep it here."""
    home = tmp_path / "state-home"
    monkeypatch.setenv("AIFACTORY_STATE_HOME", str(home))
    return home


@pytest.fixture
def cli_main(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """`aifactory ARGS` in this process: (exit code, stdout, stderr)."""
    from aifactory.cli.main import main

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
