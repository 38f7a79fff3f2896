"""A pytest run in a tiny project (the suite's own plugins tested as the suite loads them), with this
process's environment less what would make that run something else than the test wrote: the caller's
PYTEST_ADDOPTS (a `-v` there changes `--collect-only -q`'s output), the xdist worker this test runs on,
and the opt-in to acceptance runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
NOT_PASSED_ON = ("PYTEST_ADDOPTS", "AIFACTORY_ACCEPTANCE")


def tiny_project_env(**extra: str) -> dict[str, str]:
    kept = {
        name: value
        for name, value in os.environ.items()
        if name not in NOT_PASSED_ON and not name.startswith("PYTEST_XDIST_")
    }
    return {**kept, "PYTHONPATH": str(TESTS), **extra}


def pytest_in(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m pytest ARGS` in `project` (no cache written there), its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=project,
        env=tiny_project_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )
