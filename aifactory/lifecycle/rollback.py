"""`aifactory rollback`: a deliberate return to a version the site imported before, run as an upgrade
whose target is that older version (aifactory.lifecycle.upgrade): in batches, drained in Slurm and at
the front door, gated by health, resumable, and abortable back to the version it left.

No bytes are imported: the older version's import on the control host becomes the bundle in use again
(`use_version`), so deploy installs it (or switches `current` back where it is still installed beside
the newer one) and a later plain `aifactory deploy` keeps it. It starts only with a valid signed
activation record for exactly that site, version and build (aifactory.lifecycle.activation); its
`started` record in the operator log cites the record, and the audit's CM-3 checks the citation.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from aifactory.bundle.importer import check_imported, use_imported
from aifactory.bundle.manifest import BundleVersion
from aifactory.errors import Location, StateError, UpgradeError, UsageError
from aifactory.lifecycle.activation import ActivationVerdict, activation_allows
from aifactory.lifecycle.journal import Journal, JournalStore, VersionRef
from aifactory.lifecycle.upgrade import begin_upgrade
from aifactory.lifecycle.versions import ImportedVersion, version_history
from aifactory.state import SiteState


@dataclass(frozen=True)
class RollbackTarget:
    """The older version a rollback goes to, and the activation record that authorizes it."""

    version: VersionRef
    activation: ActivationVerdict


def rollback_target(
    state: SiteState, *, version: str, running: VersionRef, trust: Path, now: datetime | None = None
) -> RollbackTarget:
    """The version to go back to, checked before anything changes: imported before and still intact
    on the control host, older than the version the hosts run, and authorized by a valid activation
    record (else ActivationError, exit 1)."""
    history = version_history(state)
    imported = history.find(BundleVersion.parse(version).text)
    if imported is None:
        there = ", ".join(v.version for v in history.imported) or "none"
        raise UsageError(
            f"version {version} was never imported for site {state.site} (imported: {there})",
            code="unknown-version",
            hint="a rollback goes back to a version this control host imported before: `aifactory versions`",
        )
    if not imported.bundle_version < BundleVersion.parse(running.version):
        raise UpgradeError(
            f"version {imported.version} is not older than {running.version}, which the site runs",
            code="rollback-not-older",
            hint="a rollback goes back to an earlier version; go forward with `aifactory upgrade --bundle`",
        )
    check_imported(state, version=imported.version, digest=imported.digest, root=Path(imported.root))
    verdict = activation_allows(state, version=imported.version, digest=imported.digest, trust=trust, now=now)
    return RollbackTarget(VersionRef(imported.version, imported.digest), verdict.require())


def begin_rollback(
    state: SiteState,
    store: JournalStore,
    *,
    target: RollbackTarget,
    old: VersionRef,
    batches: list[tuple[str, ...]],
    reboot: dict[str, Any] | None = None,
) -> tuple[Journal, bool]:
    """The rollback's journal (resumed: True when one to the same version is in progress), kept
    before the older version becomes the bundle in use; run it with `run_upgrade`."""
    journal, resumed = begin_upgrade(
        store,
        site=state.site,
        old=old,
        new=target.version,
        batches=batches,
        kind="rollback",
        activation=target.activation.citation().get("activation"),
        reboot=reboot,
    )
    store.save(journal)
    use_version(state, target.version)
    return journal, resumed


def use_version(state: SiteState, version: VersionRef) -> None:
    """Make `version` (imported on this control host before, with that digest) the bundle in use."""
    imported = _imported(state, version)
    use_imported(
        state,
        version=imported.version,
        digest=imported.digest,
        root=Path(imported.root),
        imported_at=imported.imported_at,
    )


def _imported(state: SiteState, version: VersionRef) -> ImportedVersion:
    found = version_history(state).find(version.version)
    if found is None or found.digest != version.digest:
        raise StateError(
            f"version {version.version} ({version.digest}) was not imported on this control host for site "
            f"{state.site}: it cannot be the bundle in use",
            code="import-missing",
            location=Location(file=str(state.operator_log)),
            hint=f"import the bundle of {version.version} again (aifactory bundle import), then run the "
            "same command again",
        )
    return found
