"""Foundation tests: each gets its own state home; commands run as real, separate processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "state"
    monkeypatch.setenv("AIFACTORY_STATE_HOME", str(home))
    monkeypatch.delenv("AIFACTORY_PASSPHRASE_FILE", raising=False)
    return home


@pytest.fixture
def passphrase_file(tmp_path: Path) -> Path:
    path = tmp_path / "passphrase"
    path.write_text("a long operator passphrase\n")
    path.chmod(0o600)
    return path


def aifactory_argv() -> list[str]:
    script = Path(sys.executable).with_name("aifactory")
    return [str(script)] if script.exists() else [sys.executable, "-m", "aifactory.cli.main"]


@pytest.fixture
def aifactory(state_home: Path) -> Run:
    """`aifactory ARGS` as a separate process; `input` goes to its standard input."""

    def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "AIFACTORY_STATE_HOME": str(state_home)}
        env.pop("AIFACTORY_PASSPHRASE_FILE", None)
        return subprocess.run(
            [*aifactory_argv(), *args],
            input=input if input is not None else "",
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )

    return run


@pytest.fixture
def cli_in_process(
    state_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Run:
    """`aifactory ARGS` through the real parser and error edge, in this process (faster than a process)."""
    import io

    from aifactory.cli.main import main

    def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        monkeypatch.setattr(sys, "stdin", io.StringIO(input or ""))
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse usage errors
            code = int(exit_.code or 0)
        out = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out.out, out.err)

    return run
