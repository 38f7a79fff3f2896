"""Debian's chromium, headless, for the operations report's tests: the page as the browser built it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from waiting import scaled

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium_args(profile: Path) -> list[str]:
    """Headless, offline (every host name resolves to nothing), a throwaway profile."""
    assert CHROMIUM, "needs Debian's chromium"
    return [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={profile}",
    ]


def rendered_dom(page: Path, profile: Path) -> str:
    """The DOM chromium built from the page."""
    done = subprocess.run(
        [*chromium_args(profile), "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=scaled(120),
    )
    assert done.returncode == 0 and done.stdout, done.stderr[-2000:]
    return done.stdout
