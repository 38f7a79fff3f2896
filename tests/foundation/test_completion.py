"""Bash completion of `aifactory`, through the script scripts/setup.sh writes into the virtual
environment (.venv/share/aifactory/completion.bash), run by bash itself as a user's shell runs it:
`bash -c` sources the script, sets the words of a command line and calls the completion function."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

VENV = Path(sys.executable).parent.parent
SCRIPT = VENV / "share" / "aifactory" / "completion.bash"


def complete(line: str, cwd: Path) -> list[str]:
    """What bash offers after `line` (the cursor at its end)."""
    assert SCRIPT.is_file(), f"{SCRIPT} is missing: run ./scripts/setup.sh"
    program = f"""
source {shlex.quote(str(SCRIPT))}
COMP_LINE={shlex.quote(line)}
COMP_POINT=${{#COMP_LINE}}
read -r -a COMP_WORDS <<< "$COMP_LINE"
[[ "$COMP_LINE" == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
COMP_TYPE=9
_python_argcomplete aifactory "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    done = subprocess.run(
        ["bash", "-c", program],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": f"{VENV / 'bin'}:/usr/bin:/bin", "HOME": str(cwd)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return sorted(word.strip() for word in done.stdout.splitlines() if word.strip())


@pytest.fixture
def site_folder(tmp_path: Path) -> Path:
    (tmp_path / "sites").mkdir()
    (tmp_path / "sites" / "abuja.yaml").write_text("site: {}\n")
    (tmp_path / "sites" / "lagos.yml").write_text("site: {}\n")
    (tmp_path / "sites" / "notes.txt").write_text("not a spec\n")
    return tmp_path


def test_commands(site_folder: Path) -> None:
    assert complete("aifactory val", site_folder) == ["validate"]
    offered = complete("aifactory ", site_folder)
    assert {"validate", "plan", "bundle", "deploy", "audit", "lab"} <= set(offered)


def test_subcommands_and_options(site_folder: Path) -> None:
    assert complete("aifactory bundle b", site_folder) == ["build"]
    assert "--format" in complete("aifactory validate --f", site_folder)


def test_site_paths(site_folder: Path) -> None:
    """A site argument is completed with spec files (and folders), not any file."""
    offered = complete("aifactory validate sites/", site_folder)
    assert offered == ["sites/abuja.yaml", "sites/lagos.yml"]
    assert complete("aifactory bundle build sites/ab", site_folder) == ["sites/abuja.yaml"]
