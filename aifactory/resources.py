"""Where the policies, playbooks and stacks are, installed or in a source checkout.

A wheel carries them under aifactory/_resources/ (see pyproject.toml); an editable install or a
checkout finds them at the repository's top level. AIFACTORY_RESOURCES overrides both (the bundle
import points it at the unpacked, verified bundle).
"""

from __future__ import annotations

import os
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


def places_data_path() -> Path:
    """The one places and classification data file, read by the validator and the policies."""
    return resource_dir("policies") / "data" / "places.json"
