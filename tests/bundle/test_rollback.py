"""`aifactory rollback` as the library runs it: refused (nothing changed) without a valid activation
record for exactly that site and version; with one, the upgrade's engine takes every host back to the
older version in batches (Slurm's controller last), the older import becomes the bundle in use (no
bytes imported), and the operator log records a rollback citing the record, which the audit's CM-3
passes. Real imports of small sealed bundles, a real admin key (ssh-keygen) and the real operator log;
the hosts are the stand-in site of tests/lifecycle/fake_site.py (the lab test,
tests/pipeline/test_upgrade_lab.py, rolls a real site back)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from aifactory import signing
from aifactory.audit.evidence.changes import change_evidence
from aifactory.audit.model import NOT_ASSESSED, PASS
from aifactory.bundle import import_bundle
from aifactory.bundle.import_record import last_import, newest_import
from aifactory.errors import ActivationError, BundleError, UpgradeError, UpgradeFailed
from aifactory.lifecycle.activation import authorize
from aifactory.lifecycle.batches import BatchSize, UpgradeHost, plan_batches
from aifactory.lifecycle.journal import JournalStore, VersionRef
from aifactory.lifecycle.records import OperatorLog
from aifactory.lifecycle.rollback import RollbackTarget, begin_rollback, rollback_target
from aifactory.lifecycle.site_parts import ImportedBundles
from aifactory.lifecycle.upgrade import (
    UpgradeParts,
    UpgradeResult,
    abort_upgrade,
    begin_upgrade,
    run_upgrade,
)
from aifactory.state import SiteState
from tests.lifecycle.fake_site import FakeSite

from .conftest import ADMIN, SmallBundle

HOSTS = ["ctl", "gpu-001", "gpu-002", "gpu-003"]
SERVING = {"gpu-001", "gpu-002"}
OLDER, NEWER = "2.9", "2.10"  # 2.10 is the newer: versions compare as numbers, not text


@dataclasses.dataclass(frozen=True)
class Site:
    state: SiteState
    home: Path  # the bundles home: <home>/<site>/<version>, <home>/<site>/current
    trust: Path
    key: Path
    older: VersionRef
    newer: VersionRef

    def hosts_on_newer(self) -> FakeSite:
        return FakeSite(list(HOSTS), set(SERVING), runs=dict.fromkeys(HOSTS, NEWER), in_use=NEWER)

    def parts(self, site: FakeSite) -> UpgradeParts:
        """The stand-in hosts, the real operator log and the real imported bundles."""
        return dataclasses.replace(site.parts(OperatorLog(self.state)), bundle=ImportedBundles(self.state))

    def authorize(self) -> None:
        verdict = authorize(
            self.state,
            version=OLDER,
            digest=self.older.digest,
            reason="INC-42: 2.10 drops requests under load",
            key=signing.load_private_key(self.key),
            trust=self.trust,
        )
        assert verdict.allowed

    def target(self) -> RollbackTarget:
        return rollback_target(self.state, version=OLDER, running=self.newer, trust=self.trust)

    def roll_back(self, site: FakeSite) -> UpgradeResult:
        store = JournalStore.for_state(self.state)
        journal, _ = begin_rollback(self.state, store, target=self.target(), old=self.newer, batches=BATCHES)
        return run_upgrade(journal, store, self.parts(site), drain_timeout_s=60)


UPGRADE_HOSTS = [UpgradeHost(h, serving=h in SERVING, slurm_controller=h == "ctl") for h in HOSTS]
BATCHES = plan_batches(UPGRADE_HOSTS, BatchSize.parse("1"), controller_last=True)  # going back


@pytest.fixture
def lab(tmp_path: Path, small_bundle: SmallBundle, admin: tuple[Path, Path]) -> Site:
    """2.9 imported, then 2.10: the site runs 2.10."""
    key, trust = admin
    state = SiteState.for_site("tamperlab", home=tmp_path / "state")
    home = tmp_path / "bundles"
    refs = {}
    for version in (OLDER, NEWER):
        imported = import_bundle(small_bundle(version=version), trust=trust, site_state=state, home=home)
        refs[version] = VersionRef(imported.version, imported.digest)
    return Site(state, home, trust, key, refs[OLDER], refs[NEWER])


def _records(state: SiteState, command: str) -> list[dict[str, object]]:
    lines = state.operator_log.read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["command"] == command]


def test_without_an_activation_record_the_rollback_is_refused_and_nothing_changes(lab: Site) -> None:
    log_before = lab.state.operator_log.read_bytes()
    with pytest.raises(ActivationError) as refused:
        lab.target()
    assert refused.value.code == "activation-missing" and int(refused.value.exit_code) == 1
    assert f"no activation record authorizes version {OLDER}" in refused.value.message
    current = last_import(lab.state)
    assert current is not None and current.version == NEWER  # still the bundle in use
    assert (lab.home / "tamperlab" / "current").readlink() == Path(NEWER)
    assert not JournalStore.for_state(lab.state).path.exists()
    assert lab.state.operator_log.read_bytes() == log_before  # nothing recorded: nothing happened


def test_a_record_for_another_build_of_the_version_does_not_authorize_it(lab: Site) -> None:
    authorize(
        lab.state,
        version=OLDER,
        digest="sha256:" + "e" * 64,  # not the 2.9 this control host imported
        reason="INC-42",
        key=signing.load_private_key(lab.key),
        trust=lab.trust,
    )
    with pytest.raises(ActivationError) as refused:
        lab.target()
    assert refused.value.code == "activation-digest"
    assert not JournalStore.for_state(lab.state).path.exists()


def test_with_a_record_every_host_goes_back_and_the_audit_passes_cm3(lab: Site) -> None:
    lab.authorize()
    site = lab.hosts_on_newer()
    result = lab.roll_back(site)
    assert site.runs == dict.fromkeys(HOSTS, OLDER) and not site.broken_rules
    assert [a.split()[1] for a in site.actions if a.startswith("install")] == [
        "gpu-001",
        "gpu-002",
        "gpu-003",
        "ctl",  # Slurm's controller last: never older than its slurmd
    ]
    assert result.journal.kind == "rollback" and result.journal.status == "done"
    # The older import is the bundle in use again (a plain deploy keeps the site on it); nothing was
    # imported, and anti-rollback still holds against the newest.
    current, newest = last_import(lab.state), newest_import(lab.state)
    assert current is not None and (current.version, current.digest) == (OLDER, lab.older.digest)
    assert newest is not None and newest.version == NEWER
    assert (lab.home / "tamperlab" / "current").readlink() == Path(OLDER)
    assert [r["result"] for r in _records(lab.state, "bundle import")] == ["ok", "ok"]
    records = _records(lab.state, "rollback")
    assert [r["result"] for r in records] == ["started", *["batch-done"] * len(BATCHES), "finished"]
    started = records[0]["detail"]
    assert isinstance(started, dict) and started["activation"]["who"] == ADMIN
    assert started["from"] == {"version": NEWER, "digest": lab.newer.digest}
    evidence = change_evidence(lab.state, trust=lab.trust)
    rules = {rule.id: rule.status for _, rule in evidence.rules}
    assert rules == {
        "change.outcome-recorded": PASS,
        "change.rollback-authorized": PASS,
        "baseline.hosts-on-current": NOT_ASSESSED,  # no deploy record here: the hosts are stand-ins
    }
    (change,) = evidence.detail["changes"]
    assert (change["kind"], change["from"], change["to"], change["outcome"]) == (
        "rollback",
        NEWER,
        OLDER,
        "finished",
    )
    assert change["activation"].endswith(f"lifecycle/activations/{OLDER}.json")


def test_an_aborted_rollback_leaves_the_newer_version_in_use(lab: Site) -> None:
    lab.authorize()
    site = lab.hosts_on_newer()
    site.failing = {OLDER: {"gpu-002"}}  # 2.9 fails the gate on the second batch
    with pytest.raises(UpgradeFailed) as failed:
        lab.roll_back(site)
    assert "rollback SITE --abort" in (failed.value.hint or "")
    store = JournalStore.for_state(lab.state)
    with pytest.raises(UpgradeError) as wrong:  # an upgrade's --abort is not this one's
        abort_upgrade(store, lab.parts(site), drain_timeout_s=60, kind="upgrade")
    assert wrong.value.code == "upgrade-in-progress" and "rollback SITE --abort" in (wrong.value.hint or "")
    abort_upgrade(store, lab.parts(site), drain_timeout_s=60, kind="rollback")
    assert site.runs == dict.fromkeys(HOSTS, NEWER) and not site.broken_rules
    current = last_import(lab.state)
    assert current is not None and current.version == NEWER  # a plain deploy installs what hosts run
    assert (lab.home / "tamperlab" / "current").readlink() == Path(NEWER)
    results = [r["result"] for r in _records(lab.state, "rollback")]
    assert results == ["started", "batch-done", "batch-reverted", "abort-started", "aborted"]


def test_a_rollback_to_a_version_not_older_is_refused(lab: Site) -> None:
    with pytest.raises(UpgradeError) as refused:
        rollback_target(lab.state, version=NEWER, running=lab.newer, trust=lab.trust)
    assert refused.value.code == "rollback-not-older"


def test_an_import_folder_changed_since_import_is_refused_before_anything_changes(lab: Site) -> None:
    lab.authorize()
    manifest = lab.home / "tamperlab" / OLDER / "manifest.json"
    manifest.write_bytes(manifest.read_bytes().replace(b'"2.9"', b'"2.9" '))
    with pytest.raises(BundleError) as refused:
        lab.target()
    assert refused.value.code == "bundle-tampered"
    current = last_import(lab.state)
    assert current is not None and current.version == NEWER


def test_an_aborted_upgrade_leaves_the_previous_version_in_use(lab: Site) -> None:
    """The same fix for `upgrade --abort`: the import made the new version current; after the abort
    the hosts run the previous one, and so does a later plain deploy."""
    site = FakeSite(list(HOSTS), set(SERVING), runs=dict.fromkeys(HOSTS, OLDER), in_use=NEWER)
    site.failing = {NEWER: {"gpu-002"}}
    store = JournalStore.for_state(lab.state)
    batches = plan_batches(UPGRADE_HOSTS, BatchSize.parse("1"))
    journal, _ = begin_upgrade(store, site=lab.state.site, old=lab.older, new=lab.newer, batches=batches)
    with pytest.raises(UpgradeFailed):
        run_upgrade(journal, store, lab.parts(site), drain_timeout_s=60)
    current = last_import(lab.state)
    assert current is not None and current.version == NEWER  # what the import left
    abort_upgrade(store, lab.parts(site), drain_timeout_s=60)
    assert site.runs == dict.fromkeys(HOSTS, OLDER)
    current = last_import(lab.state)
    assert current is not None and (current.version, current.digest) == (OLDER, lab.older.digest)
    assert (lab.home / "tamperlab" / "current").readlink() == Path(OLDER)
    newest = newest_import(lab.state)
    assert newest is not None and newest.version == NEWER  # going forward again needs no record
