"""The version history, the operator-log records of upgrades and rollbacks, and the audit's CM-3 and
CM-2 assessed from them. The state folder is written by the real writers (the import record, the
operator log's chain, the deploy record) as an import, a deploy and the orchestration leave it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from aifactory import signing
from aifactory.audit.evidence.changes import change_evidence
from aifactory.audit.model import FAIL, NOT_ASSESSED, PASS, Evidence
from aifactory.bundle.import_record import ImportRecord, save_import
from aifactory.deploy.evidence import write_installed
from aifactory.lifecycle.activation import authorize
from aifactory.lifecycle.journal import JournalStore
from aifactory.lifecycle.records import (
    Change,
    OperatorLog,
    batch_done,
    batch_reverted,
    change_aborted,
    change_finished,
    change_started,
)
from aifactory.lifecycle.upgrade import begin_upgrade, run_upgrade
from aifactory.lifecycle.versions import version_history
from aifactory.state import SiteState

from . import fake_site as fake
from .conftest import ADMIN, Keys

A, B = "sha256:" + "a" * 64, "sha256:" + "b" * 64
HOSTS = ("gpu-0", "gpu-1", "ctl-0")


@pytest.fixture
def state(tmp_path: Path) -> SiteState:
    return SiteState.for_site("lab", home=tmp_path / "state")


def imported(state: SiteState, version: str, digest: str) -> None:
    """What `bundle import` leaves: the import record and its operator-log record."""
    root = f"/var/lib/aifactory/bundles/lab/{version}"
    when = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    save_import(state, ImportRecord("lab", version, digest, root, when, "release@lab.example"))
    state.record(
        command="bundle import",
        result="ok",
        bundle_digest=digest,
        detail={"version": version, "root": root, "signer": "release@lab.example"},
    )


def deployed(state: SiteState, on: dict[str, tuple[str, str]]) -> None:
    """What `deploy` leaves: each host's bundle version and runtime version."""
    write_installed(
        state,
        run_id="run-1",
        when="2026-12-02T10:00:00Z",
        plan_digest="sha256:" + "0" * 64,
        reports={
            host: {
                "bundle": {"version": version, "digest": digest, "verified_dir": f"/opt/{version}"},
                "runtime": {
                    "version": f"rt-{version}",
                    "packages": [{"name": "aifactory", "version": version}],
                },
            }
            for host, (version, digest) in on.items()
        },
        results=dict.fromkeys(on, "ok"),
    )


def rules(evidence: Evidence) -> dict[str, str]:
    return {rule.id: rule.status for _, rule in evidence.rules}


def test_the_history_says_what_was_imported_what_is_current_and_who_runs_what(state: SiteState) -> None:
    imported(state, "1.0", A)
    imported(state, "1.1", B)
    deployed(state, {"gpu-0": ("1.1", B), "gpu-1": ("1.0", A), "ctl-0": ("1.1", B)})
    history = version_history(state)
    assert [(v.version, v.digest) for v in history.imported] == [("1.0", A), ("1.1", B)]
    assert history.current is not None and history.current.version == "1.1"
    assert history.by_version() == {"1.0": ("gpu-1",), "1.1": ("ctl-0", "gpu-0")}
    assert history.hosts_on("1.1") == ("ctl-0", "gpu-0")
    assert [h.runtime_version for h in history.hosts] == ["rt-1.1", "rt-1.1", "rt-1.0"]
    assert history.require("1.0").digest == A


def test_no_upgrade_or_rollback_on_record_is_not_assessed(state: SiteState) -> None:
    imported(state, "1.0", A)
    deployed(state, dict.fromkeys(HOSTS, ("1.0", A)))
    evidence = change_evidence(state)
    assert evidence.status == NOT_ASSESSED and set(rules(evidence).values()) == {NOT_ASSESSED}
    assert {control for control, _ in evidence.rules} == {"CM-2", "CM-3"}
    assert evidence.detail["versions"] == {"1.0": ["ctl-0", "gpu-0", "gpu-1"]}


def test_a_finished_upgrade_with_every_host_on_it_passes(state: SiteState) -> None:
    imported(state, "1.0", A)
    upgrade = Change("upgrade", "u-1", "1.0", A, "1.1", B)
    imported(state, "1.1", B)
    change_started(OperatorLog(state), upgrade, batches=[["ctl-0"], ["gpu-0"], ["gpu-1"]])
    for number, host in enumerate(("ctl-0", "gpu-0", "gpu-1"), start=1):
        batch_done(OperatorLog(state), upgrade, batch=number, hosts=[host])
    change_finished(OperatorLog(state), upgrade, hosts=HOSTS)
    deployed(state, dict.fromkeys(HOSTS, ("1.1", B)))
    evidence = change_evidence(state)
    assert rules(evidence) == {
        "change.outcome-recorded": PASS,
        "change.rollback-authorized": NOT_ASSESSED,
        "baseline.hosts-on-current": PASS,
    }
    (change,) = evidence.detail["changes"]
    assert change | {"who": None, "started": None, "ended": None} == {
        "run": "u-1",
        "kind": "upgrade",
        "from": "1.0",
        "to": "1.1",
        "who": None,
        "started": None,
        "ended": None,
        "outcome": "finished",
        "activation": None,
    }
    assert change["who"] and change["ended"]
    records = [json.loads(line) for line in state.operator_log.read_text().splitlines()]
    assert [r["result"] for r in records if r["command"] == "upgrade"] == [
        "started",
        "batch-done",
        "batch-done",
        "batch-done",
        "finished",
    ]
    assert records[-1]["detail"]["from"] == {"version": "1.0", "digest": A}


def test_a_reverted_batch_is_an_outcome_but_a_host_left_behind_fails_cm2(state: SiteState) -> None:
    imported(state, "1.0", A)
    imported(state, "1.1", B)
    upgrade = Change("upgrade", "u-2", "1.0", A, "1.1", B)
    change_started(OperatorLog(state), upgrade, batches=[["gpu-0"], ["gpu-1"]])
    batch_done(OperatorLog(state), upgrade, batch=1, hosts=["gpu-0"])
    batch_reverted(
        OperatorLog(state), upgrade, batch=2, hosts=["gpu-1"], reason="health check gpu.ecc failed"
    )
    deployed(state, {"gpu-0": ("1.1", B), "gpu-1": ("1.0", A)})
    evidence = change_evidence(state)
    assert rules(evidence)["change.outcome-recorded"] == PASS
    assert rules(evidence)["baseline.hosts-on-current"] == FAIL
    (finding,) = evidence.findings
    assert finding.controls == ("CM-2",) and finding.resource == "host/gpu-1"
    assert "runs bundle 1.0; the site's current version is 1.1" in finding.message
    assert evidence.detail["versions"] == {"1.0": ["gpu-1"], "1.1": ["gpu-0"]}


def test_a_change_without_an_outcome_fails_cm3(state: SiteState) -> None:
    imported(state, "1.0", A)
    aborted = Change("upgrade", "u-3", "1.0", A, "1.1", B)
    change_started(OperatorLog(state), aborted, batches=[["gpu-0"]])
    change_aborted(OperatorLog(state), aborted, hosts=["gpu-0"], reason="the admin aborted it")
    interrupted = Change("upgrade", "u-4", "1.0", A, "1.1", B)
    change_started(OperatorLog(state), interrupted, batches=[["gpu-0"], ["gpu-1"]])
    batch_done(OperatorLog(state), interrupted, batch=1, hosts=["gpu-0"])
    evidence = change_evidence(state)
    assert rules(evidence)["change.outcome-recorded"] == FAIL
    (finding,) = [f for f in evidence.findings if f.rule == "change.outcome-recorded"]
    assert finding.resource == "site/lab/upgrade/u-4" and "(last: batch-done)" in finding.message


def rolled_back(state: SiteState, keys: Keys, *, signed: bool = True) -> Change:
    imported(state, "1.0", A)
    imported(state, "1.1", B)
    rollback = Change("rollback", "r-1", "1.1", B, "1.0", A)
    verdict = None
    if signed:
        key = signing.load_private_key(keys.admin)
        verdict = authorize(state, version="1.0", digest=A, reason="INC-42", key=key, trust=keys.trust)
        assert verdict.allowed
    cited = verdict.citation()["activation"] if verdict else None
    change_started(OperatorLog(state), rollback, batches=[list(HOSTS)], activation=cited)
    change_finished(OperatorLog(state), rollback, hosts=HOSTS)
    imported(state, "1.0", A)  # the import that the rollback's activation let in
    deployed(state, dict.fromkeys(HOSTS, ("1.0", A)))
    return rollback


def test_a_rollback_with_its_activation_record_passes(state: SiteState, keys: Keys) -> None:
    rolled_back(state, keys)
    evidence = change_evidence(state, trust=keys.trust)
    assert evidence.status == PASS, evidence.findings
    assert rules(evidence)["change.rollback-authorized"] == PASS
    assert evidence.detail["changes"][0]["activation"].endswith("lifecycle/activations/1.0.json")
    assert evidence.detail["current"] == "1.0"
    started = next(
        json.loads(line)
        for line in state.operator_log.read_text().splitlines()
        if '"rollback"' in line and '"started"' in line
    )
    assert started["detail"]["activation"]["who"] == ADMIN


def test_a_rollback_without_a_record_fails_cm3(state: SiteState, keys: Keys) -> None:
    rolled_back(state, keys, signed=False)
    evidence = change_evidence(state, trust=keys.trust)
    assert rules(evidence)["change.rollback-authorized"] == FAIL
    (finding,) = evidence.findings
    assert finding.controls == ("CM-3",) and "cites no activation record" in finding.message


def test_an_activation_record_altered_after_the_rollback_fails_cm3(state: SiteState, keys: Keys) -> None:
    rolled_back(state, keys)
    path = state.path("lifecycle", "activations", "1.0.json")
    path.write_bytes(path.read_bytes().replace(b"INC-42", b"INC-00"))
    (finding,) = change_evidence(state, trust=keys.trust).findings
    assert "is not the activation record the log cited" in finding.message


def test_an_activation_record_by_a_key_the_audit_does_not_trust_fails_cm3(
    state: SiteState, keys: Keys, tmp_path: Path
) -> None:
    rolled_back(state, keys)
    other = tmp_path / "other_signers"
    other.write_text(keys.trust.read_text().splitlines()[0] + "\n")  # the bundle key alone
    (finding,) = change_evidence(state, trust=other).findings
    assert f"does not verify against {other}" in finding.message


def test_an_upgrade_the_orchestration_ran_is_in_the_audits_change_evidence(state: SiteState) -> None:
    """The upgrade's own records (aifactory.lifecycle.upgrade through OperatorLog), over the stand-in
    site of tests/lifecycle/fake_site.py: killed mid-way and resumed, it is one change with its
    from, to and outcome."""
    imported(state, fake.A.version, fake.A.digest)
    imported(state, fake.B.version, fake.B.digest)
    site = fake.FakeSite(["ctl-0", "gpu-0", "gpu-1"], {"gpu-0", "gpu-1"}, kill_at=5)
    store = JournalStore.for_state(state)
    batches: list[tuple[str, ...]] = [("ctl-0",), ("gpu-0",), ("gpu-1",)]
    for _ in range(2):  # killed, then the same command again
        journal, _ = begin_upgrade(store, site="lab", old=fake.A, new=fake.B, batches=batches)
        try:
            run_upgrade(journal, store, site.parts(OperatorLog(state)), drain_timeout_s=60)
        except fake.Killed:
            site.kill_at = None
    deployed(state, dict.fromkeys(site.hosts, (fake.B.version, fake.B.digest)))
    evidence = change_evidence(state)
    assert rules(evidence) == {
        "change.outcome-recorded": PASS,
        "change.rollback-authorized": NOT_ASSESSED,
        "baseline.hosts-on-current": PASS,
    }
    (change,) = evidence.detail["changes"]
    assert (change["kind"], change["run"], change["from"], change["to"], change["outcome"]) == (
        "upgrade",
        journal.id,
        fake.A.version,
        fake.B.version,
        "finished",
    )
    logged = [json.loads(line) for line in state.operator_log.read_text().splitlines()]
    assert [r["result"] for r in logged if r["command"] == "upgrade"] == [
        "started",
        "batch-done",
        "batch-done",
        "batch-done",
        "finished",
    ]


def test_an_upgrade_that_needed_a_reboot_says_so_in_the_cm3_evidence(state: SiteState) -> None:
    imported(state, "1.0", A)
    imported(state, "1.1", B)
    kernel = {"name": "linux-image-amd64", "from": "6.1.0-26", "to": "6.1.0-27"}
    for restart in (True, False):
        upgrade = Change("upgrade", f"u-{restart}", "1.0", A, "1.1", B)
        reboot = {"needed": True, "packages": [kernel], "restart": restart}
        change_started(OperatorLog(state), upgrade, batches=[list(HOSTS)], reboot=reboot)
        change_finished(OperatorLog(state), upgrade, hosts=HOSTS)
    restarted, left = change_evidence(state).detail["changes"]
    assert (
        restarted["reboot"]
        == "linux-image-amd64 6.1.0-26 -> 6.1.0-27; restarted through the BMCs, batch by batch"
    )
    assert left["reboot"].startswith("linux-image-amd64 6.1.0-26 -> 6.1.0-27; not restarted (--no-reboot)")
