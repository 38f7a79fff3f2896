"""What the site's state folder remembers about imported bundles.

    <state>/<site>/bundle/current.json    the bundle in use: version, digest, folder, when, signer

It is written atomically (temporary file + rename) only after an import completed, so it always
names a complete, verified folder; it is also the anti-rollback record (no later import may carry an
older version, or the same version with other content).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aifactory.bundle.manifest import BundleVersion
from aifactory.errors import Location, StateError
from aifactory.state import SiteState

CURRENT = "current.json"


@dataclass(frozen=True)
class ImportRecord:
    site: str
    version: str
    digest: str
    root: str
    imported_at: str
    signer: str

    @property
    def bundle_version(self) -> BundleVersion:
        return BundleVersion.parse(self.version)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _current_path(state: SiteState) -> Path:
    return state.subdir("bundle") / CURRENT


def last_import(state: SiteState) -> ImportRecord | None:
    path = _current_path(state)
    if not path.is_file():
        return None
    try:
        return ImportRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise StateError(
            f"the bundle import record is unreadable: {exc}",
            location=Location(file=str(path)),
            hint="restore it from backup; it guards against rollback, so it is never guessed",
        ) from None


def save_import(state: SiteState, record: ImportRecord) -> None:
    path = _current_path(state)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(record.as_dict(), indent=2, sort_keys=True) + "\n")
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)
