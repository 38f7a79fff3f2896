"""Where the policies, playbooks and stacks are, installed or in a source checkout.

A wheel carries them under aifactory/_resources/ (see pyproject.toml); an editable install or a
checkout finds them at the repository's top level. AIFACTORY_RESOURCES overrides both (the bundle
import points it at the unpacked, verified bundle).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from aifactory.errors import PrerequisiteError

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """`policies`, `playbooks` or `stacks`."""
    candidates = []
    override = os.environ.get("AIFACTORY_RESOURCES")
    if override:
        candidates.append(Path(override) / name)
    candidates += [_PACKAGE / "_resources" / name, _PACKAGE.parent / name]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise PrerequisiteError(
        f"cannot find the {name} folder (looked in {', '.join(str(c) for c in candidates)})",
        hint="reinstall aifactory, or set AIFACTORY_RESOURCES to a folder that holds it",
    )


def control_tool(name: str, *, needed_for: str) -> str:
    """An Ansible command of the control host: the one installed beside this Python (aifactory's own
    virtual environment), else the first on the PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if not found:
        raise PrerequisiteError(
            f"{name} is not installed; {needed_for}",
            hint="install aifactory's control extra: pip install 'aifactory[control]'",
        )
    return found


def places_data_path() -> Path:
    """The one places and classification data file, read by the validator and the policies."""
    return resource_dir("policies") / "data" / "places.json"
