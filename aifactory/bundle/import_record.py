"""What the site's state folder remembers about imported bundles.

    <state>/<site>/bundle/current.json    the bundle in use: version, digest, folder, when, signer
    <state>/<site>/bundle/newest.json     the newest version ever imported (same fields)

Both are written atomically (temporary file + rename) only after an import completed, so they always
name a complete, verified folder. `newest.json` is the anti-rollback record: no later import may carry
an older version (unless a signed activation record authorizes exactly that version, see
aifactory.lifecycle.activation), or the same version with other content. It differs from current.json
only after such an authorized rollback; a site imported before it existed falls back to current.json.
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
NEWEST = "newest.json"


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


def _newest_path(state: SiteState) -> Path:
    return state.subdir("bundle") / NEWEST


def last_import(state: SiteState) -> ImportRecord | None:
    """The bundle in use (the latest import, which an authorized rollback makes an older version)."""
    return _read(_current_path(state))


def newest_import(state: SiteState) -> ImportRecord | None:
    """The newest version ever imported for the site: what anti-rollback compares against."""
    newest = _read(_newest_path(state))
    current = last_import(state)
    if newest is None or (current is not None and newest.bundle_version < current.bundle_version):
        return current
    return newest


def _read(path: Path) -> ImportRecord | None:
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
    """Record `record` as the bundle in use, and as the newest when no newer one was imported."""
    newest = newest_import(state)
    if newest is None or not record.bundle_version < newest.bundle_version:
        _write(_newest_path(state), record)
    _write(_current_path(state), record)


def _write(path: Path, record: ImportRecord) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(record.as_dict(), indent=2, sort_keys=True) + "\n")
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)
