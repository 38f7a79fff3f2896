"""Which bundle versions a site has imported, which one is current, and which host runs which.

Read from the state folder only, never from the hosts (so it is what the records say, for auditors
and for the upgrade orchestration to plan from):

    operator.log.jsonl      every `bundle import` that succeeded: version, digest, folder, signer, when
    bundle/current.json     the version in use; bundle/newest.json: the newest ever imported
    deploy/installed.json   per host: the bundle version and digest, and the runtime version, last deployed
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aifactory.bundle.import_record import ImportRecord, last_import, newest_import
from aifactory.bundle.manifest import MANIFEST, BundleVersion
from aifactory.chain import iter_records
from aifactory.deploy.evidence import read_installed
from aifactory.deploy.imported_bundle import runtime_identity
from aifactory.errors import UsageError
from aifactory.lifecycle.journal import VersionRef
from aifactory.state import SiteState

IMPORT_COMMAND = "bundle import"


@dataclass(frozen=True)
class ImportedVersion:
    """One bundle version imported on the control host (the latest import of that version)."""

    version: str
    digest: str
    imported_at: str
    signer: str
    root: str

    @property
    def bundle_version(self) -> BundleVersion:
        return BundleVersion.parse(self.version)

    def as_dict(self) -> dict[str, str]:
        return {
            "version": self.version,
            "digest": self.digest,
            "imported_at": self.imported_at,
            "signer": self.signer,
            "root": self.root,
        }


@dataclass(frozen=True)
class HostVersion:
    """What the deploy record says one host runs."""

    host: str
    bundle_version: str | None  # None: deployed without a bundle, or never deployed successfully
    bundle_digest: str | None
    runtime_version: str | None
    deployed_at: str | None
    last_result: str | None  # the latest run's result for the host (ok, changed, failed, unreachable)

    def as_dict(self) -> dict[str, str | None]:
        return {
            "host": self.host,
            "bundle_version": self.bundle_version,
            "bundle_digest": self.bundle_digest,
            "runtime_version": self.runtime_version,
            "deployed_at": self.deployed_at,
            "last_result": self.last_result,
        }


@dataclass(frozen=True)
class VersionHistory:
    site: str
    imported: tuple[ImportedVersion, ...]  # oldest version first
    current: ImportedVersion | None
    newest: ImportedVersion | None
    hosts: tuple[HostVersion, ...]  # by host name

    def find(self, version: str) -> ImportedVersion | None:
        wanted = BundleVersion.parse(version)
        return next((v for v in self.imported if v.bundle_version == wanted), None)

    def find_text(self, text: str) -> ImportedVersion | None:
        """`find` for text that may not be a version at all (a deploy record's field): None then."""
        wanted = _parses(text)
        return (
            None if wanted is None else next((v for v in self.imported if v.bundle_version == wanted), None)
        )

    def require(self, version: str) -> ImportedVersion:
        """The imported version, or a UsageError listing the versions there are."""
        found = self.find(version)
        if found is None:
            there = ", ".join(v.version for v in self.imported) or "none"
            raise UsageError(
                f"version {version} was never imported for site {self.site} (imported: {there})",
                code="unknown-version",
                hint="import its bundle first, or give its digest explicitly",
            )
        return found

    def hosts_on(self, version: str) -> tuple[str, ...]:
        wanted = BundleVersion.parse(version)
        return tuple(
            h.host for h in self.hosts if h.bundle_version is not None and _parses(h.bundle_version) == wanted
        )

    def by_version(self) -> dict[str, tuple[str, ...]]:
        """Each bundle version some host runs -> those hosts (hosts with none recorded under "")."""
        table: dict[str, list[str]] = {}
        for host in self.hosts:
            table.setdefault(host.bundle_version or "", []).append(host.host)
        return {version: tuple(table[version]) for version in sorted(table, key=_version_order)}

    def as_dict(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "current": self.current.as_dict() if self.current else None,
            "newest": self.newest.as_dict() if self.newest else None,
            "imported": [v.as_dict() for v in self.imported],
            "hosts": [h.as_dict() for h in self.hosts],
        }


def version_history(state: SiteState) -> VersionHistory:
    current = _from_record(last_import(state))
    newest = _from_record(newest_import(state))
    latest: dict[BundleVersion, ImportedVersion] = {}
    for imported in (*_logged_imports(state), *(v for v in (newest, current) if v is not None)):
        known = latest.get(imported.bundle_version)
        if known is None or known.imported_at <= imported.imported_at:
            latest[imported.bundle_version] = imported
    return VersionHistory(
        state.site,
        tuple(latest[v] for v in sorted(latest)),
        current,
        newest,
        tuple(_hosts(state)),
    )


def _from_record(record: ImportRecord | None) -> ImportedVersion | None:
    if record is None:
        return None
    return ImportedVersion(record.version, record.digest, record.imported_at, record.signer, record.root)


def _logged_imports(state: SiteState) -> Iterator[ImportedVersion]:
    if not state.operator_log.exists():
        return
    for _, record, _ in iter_records(state.operator_log):
        if not isinstance(record, dict) or record.get("command") != IMPORT_COMMAND:
            continue
        detail = record.get("detail")
        if record.get("result") != "ok" or not isinstance(detail, dict):
            continue
        version = str(detail.get("version", ""))
        if _parses(version) is None:
            continue
        yield ImportedVersion(
            version,
            str(record.get("bundle_digest") or ""),
            str(record.get("time") or ""),
            str(detail.get("signer") or ""),
            str(detail.get("root") or ""),
        )


def _hosts(state: SiteState) -> Iterator[HostVersion]:
    for host, entry in sorted(read_installed(state)["hosts"].items()):
        if not isinstance(entry, dict):
            continue
        bundle, runtime, last_run = (_mapping(entry.get(key)) for key in ("bundle", "runtime", "last_run"))
        yield HostVersion(
            str(host),
            _text(bundle.get("version")),
            _text(bundle.get("digest")),
            _text(runtime.get("version")),
            _text(entry.get("deployed_at")),
            _text(last_run.get("result")),
        )


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _parses(version: str) -> BundleVersion | None:
    try:
        return BundleVersion.parse(version)
    except UsageError:
        return None


def _version_order(version: str) -> tuple[int, tuple[int, ...], str]:
    """Versions in their order, then anything that is not a version (by its text)."""
    parsed = _parses(version)
    return (0, parsed.key, "") if parsed else (1, (), version)


def runtime_id_of(state: SiteState, version: VersionRef) -> str:
    """The runtime_id of an imported version (aifactory.deploy.imported_bundle.runtime_identity, from
    the manifest its import kept), or "" when that import or its manifest is gone."""
    found = next((v for v in version_history(state).imported if v.digest == version.digest), None)
    if found is None:
        return ""
    root = Path(found.root)
    try:
        manifest = json.loads((root / MANIFEST).read_bytes())
    except (OSError, ValueError):
        return ""
    return runtime_identity(manifest, root) if isinstance(manifest, dict) and "files" in manifest else ""
