"""The rolling upgrade's orchestration: batches in order, each out of service before it changes, a
failed batch back on the previous version, a run killed at any step finished by the next, `--abort`.

The site is tests/lifecycle/fake_site.py: stand-ins for the lab, whose real parts (scontrol,
HAProxy, ansible, the health gate) are tested in the lab test tests/pipeline/test_upgrade_lab.py.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest

from aifactory.errors import ExitCode, StateError, UpgradeError, UpgradeFailed
from aifactory.lifecycle.batches import BatchSize, UpgradeHost, plan_batches
from aifactory.lifecycle.journal import JournalStore, VersionRef
from aifactory.lifecycle.records import Change
from aifactory.lifecycle.upgrade import UpgradeResult, abort_upgrade, begin_upgrade, run_upgrade

from .fake_site import A, B, FakeLog, FakeSite, Killed

HOSTS = ["ctl", "gpu-001", "gpu-002", "gpu-003", "gpu-004"]
SERVING = {"gpu-001", "gpu-002"}
BATCHES = plan_batches(
    [UpgradeHost(h, serving=h in SERVING, slurm_controller=h == "ctl") for h in HOSTS], BatchSize.parse("2")
)
ALL_ON_B = {h: (B.version, "idle", "ready" if h in SERVING else "-") for h in HOSTS}
ALL_ON_A = {h: (A.version, "idle", "ready" if h in SERVING else "-") for h in HOSTS}


def _site(**settings: object) -> FakeSite:
    return FakeSite(list(HOSTS), set(SERVING), **settings)  # type: ignore[arg-type]


def _upgrade(site: FakeSite, store: JournalStore, new: VersionRef = B) -> UpgradeResult:
    journal, _ = begin_upgrade(store, site="lab", old=A, new=new, batches=BATCHES)
    return run_upgrade(journal, store, site.parts(), drain_timeout_s=60)


def _abort(site: FakeSite, store: JournalStore) -> UpgradeResult:
    return abort_upgrade(store, site.parts(), drain_timeout_s=60)


@pytest.fixture
def store(tmp_path: Path) -> JournalStore:
    return JournalStore(tmp_path / "upgrade")


def test_batches_are_upgraded_in_order_each_out_of_service_while_it_changes(store: JournalStore) -> None:
    assert BATCHES == [("ctl",), ("gpu-001",), ("gpu-002", "gpu-003"), ("gpu-004",)]
    site = _site()
    result = _upgrade(site, store)
    assert site.in_service() == ALL_ON_B and not site.broken_rules
    assert site.actions[:6] == [
        "slurm-drain ctl",
        "door-drain ctl",
        f"install-{B.version} ctl",
        "gate ctl",
        "door-enable ctl",
        "slurm-resume ctl",
    ]
    assert [a for a in site.actions if a.startswith("install")] == [
        f"install-{B.version} {','.join(batch)}" for batch in BATCHES
    ]
    assert result.journal.status == "done" and result.journal.versions() == {h: B.version for h in HOSTS}
    assert result.path.parent.name == "history" and not store.path.exists()  # no upgrade in progress
    assert store.running() == B  # the next upgrade starts from B
    kinds = [e.kind for e in site.events]
    assert kinds == ["started", *["batch-done"] * len(BATCHES), "finished"]
    change = site.events[0].change
    assert (change.kind, change.run) == ("upgrade", result.journal.id)
    assert all(e.change == change for e in site.events)  # one run: from A to B
    assert (change.from_version, change.from_digest, change.to_version) == (A.version, A.digest, B.version)
    assert site.events[0].detail == {"batches": [list(b) for b in BATCHES]}


def _actions_of_a_whole_upgrade() -> int:
    """How many actions an uninterrupted upgrade takes: each is a point to kill it at."""
    site = _site()
    with tempfile.TemporaryDirectory() as folder:
        _upgrade(site, JournalStore(Path(folder)))
    return len(site.actions)


ACTIONS = _actions_of_a_whole_upgrade()


@pytest.mark.parametrize("kill_after", [False, True], ids=["before", "after"])
@pytest.mark.parametrize("kill_at", range(ACTIONS))
def test_a_run_killed_at_any_step_is_finished_by_the_next(
    store: JournalStore, kill_at: int, kill_after: bool
) -> None:
    site = _site(kill_at=kill_at, kill_after=kill_after)
    with pytest.raises(Killed):
        _upgrade(site, store)
    assert store.load() is not None  # the journal says where it stopped
    site.kill_at = None
    result = _upgrade(site, store)  # the same command again
    assert site.in_service() == ALL_ON_B and not site.broken_rules
    assert result.journal.status == "done"
    # Only the step it died in is done again (its action that died, and the one before it when the
    # step has two: back into service is the front door, then Slurm): nothing earlier is repeated.
    assert len(site.actions) <= ACTIONS + 2
    # One change in the operator log: the re-run keeps its run id, it begins `started`, ends `finished`.
    kinds = [e.kind for e in site.events]
    assert len({e.change.run for e in site.events}) == 1, kinds
    assert kinds[0] == "started" and kinds[-1] == "finished" and kinds.count("finished") == 1


def test_a_batch_that_fails_its_gate_goes_back_and_the_upgrade_stops_with_exit_4(store: JournalStore) -> None:
    site = _site(failing={B.version: {"gpu-003"}})
    with pytest.raises(UpgradeFailed) as raised:
        _upgrade(site, store)
    error = raised.value
    assert error.exit_code == ExitCode.HOSTS_FAILED == 4
    assert "batch 3/4 (gpu-002, gpu-003) failed on 2026.12.2" in error.message
    assert "went back to 2026.12.1 and is in service again" in error.message
    lines = [p.message for p in error.problems]
    assert "gpu-003: drain for allreduce-busbw" in lines  # the check that failed
    assert {"ctl runs 2026.12.2", "gpu-001 runs 2026.12.2", "gpu-002 runs 2026.12.1"} <= set(lines)
    assert "gpu-004 runs 2026.12.1" in lines
    assert site.in_service() == {
        **ALL_ON_B,
        "gpu-002": (A.version, "idle", "ready"),
        "gpu-003": (A.version, "idle", "-"),
        "gpu-004": (A.version, "idle", "-"),
    }
    assert not site.broken_rules and not [a for a in site.actions if "gpu-004" in a]
    kinds = [e.kind for e in site.events]
    assert kinds == ["started", "batch-done", "batch-done", "batch-reverted"]  # its outcome
    assert site.events[-1].detail == {
        "batch": 3,
        "hosts": ["gpu-002", "gpu-003"],
        "reason": "gpu-003: drain for allreduce-busbw",
    }
    # A re-run does not try again over a failed batch: it says what happened and what to do.
    with pytest.raises(UpgradeError) as again:
        _upgrade(site, store)
    assert (
        again.value.code == "upgrade-stopped" and "gpu-003: drain for allreduce-busbw" in again.value.message
    )
    assert "--abort" in (again.value.hint or "")


@pytest.mark.parametrize("kill_after", [False, True], ids=["before", "after"])
@pytest.mark.parametrize("steps_back", range(1, 5))  # install, gate, door, Slurm
def test_a_run_killed_while_a_failed_batch_goes_back_finishes_going_back(
    store: JournalStore, steps_back: int, kill_after: bool
) -> None:
    probe = _site(failing={B.version: {"gpu-003"}})
    with pytest.raises(UpgradeFailed):
        _upgrade(probe, JournalStore(store.folder.with_name("probe")))
    failed_at = probe.actions.index("gate gpu-002,gpu-003")
    site = _site(failing={B.version: {"gpu-003"}}, kill_at=failed_at + steps_back, kill_after=kill_after)
    with pytest.raises(Killed):
        _upgrade(site, store)
    site.kill_at = None
    with pytest.raises(UpgradeFailed) as raised:
        _upgrade(site, store)
    assert "gpu-003: drain for allreduce-busbw" in [p.message for p in raised.value.problems]
    assert site.in_service()["gpu-003"] == (A.version, "idle", "-")
    assert site.in_service()["gpu-002"] == (A.version, "idle", "ready")
    assert not site.broken_rules


def test_abort_takes_every_upgraded_batch_back_last_first(store: JournalStore) -> None:
    site = _site(failing={B.version: {"gpu-003"}})
    with pytest.raises(UpgradeFailed):
        _upgrade(site, store)
    before = len(site.actions)
    result = _abort(site, store)
    assert site.in_service() == ALL_ON_A and not site.broken_rules
    installs = [a for a in site.actions[before:] if a.startswith("install")]
    assert installs == [f"install-{A.version} gpu-001", f"install-{A.version} ctl"]  # last batch first
    assert not [a for a in site.actions if "gpu-004" in a]  # never touched
    assert result.journal.status == "aborted" and not store.path.exists()
    assert store.running() == A  # the hosts run A again, whatever bundle the control host imported last
    assert [e.kind for e in site.events][-2:] == ["abort-started", "aborted"]
    assert site.events[-2].detail == {"hosts": ["ctl", "gpu-001", "gpu-002", "gpu-003"]}
    assert len({e.change.run for e in site.events}) == 1  # the abort ends the same change
    # The version the hosts went back to is the bundle in use again: a plain deploy keeps them on it.
    assert site.in_use == A.version and site.actions[-1] == f"use-{A.version} "


@pytest.mark.parametrize("kill_at", [3, 9, 14])
def test_abort_of_a_killed_upgrade_and_a_killed_abort_both_finish(store: JournalStore, kill_at: int) -> None:
    site = _site(kill_at=kill_at)
    with pytest.raises(Killed):
        _upgrade(site, store)
    site.kill_at = len(site.actions) + 2  # the abort dies too, three actions in
    with pytest.raises(Killed):
        _abort(site, store)
    site.kill_at = None
    with pytest.raises(UpgradeError) as refused:  # an unfinished abort is not an upgrade to resume
        _upgrade(site, store)
    assert refused.value.code == "upgrade-aborting"
    _abort(site, store)
    assert site.in_service() == ALL_ON_A and not site.broken_rules


def test_abort_with_no_upgrade_in_progress_is_refused(store: JournalStore) -> None:
    with pytest.raises(UpgradeError) as raised:
        _abort(_site(), store)
    assert raised.value.code == "upgrade-nothing-to-abort"


def test_jobs_past_the_drain_timeout_are_requeued_and_recorded(store: JournalStore) -> None:
    site = _site(jobs={"gpu-003": ["101", "102"], "gpu-004": ["103"]}, stuck_jobs=True)
    result = _upgrade(site, store)
    assert site.requeued == ["101", "102", "103"] and result.journal.requeued == ["101", "102", "103"]
    requeue = site.actions.index("slurm-requeue 101,102")
    assert site.actions[requeue - 1] == "slurm-drain gpu-002,gpu-003"  # after the drain, before the door
    assert site.actions[requeue + 1] == "door-drain gpu-002,gpu-003"
    requeued = [e for e in site.events if e.kind == "jobs-requeued"]
    assert [e.detail["jobs"] for e in requeued] == [["101", "102"], ["103"]]


def test_a_batch_that_fails_on_the_previous_version_too_stays_out_of_service(store: JournalStore) -> None:
    site = _site(failing={B.version: {"gpu-001"}, A.version: {"gpu-001"}})
    with pytest.raises(UpgradeFailed) as raised:
        _upgrade(site, store)
    assert "stay drained" in raised.value.message
    assert "then run `aifactory upgrade SITE --abort`: it goes on" in (raised.value.hint or "")
    assert site.in_service()["gpu-001"] == (A.version, "drain", "drain")
    assert site.in_service()["gpu-002"] == (A.version, "idle", "ready")  # the door still serves
    assert raised.value.exit_code == 4
    site.failing = {}  # the admin fixed gpu-001
    _abort(site, store)
    assert site.in_service() == ALL_ON_A and not site.broken_rules


def test_an_upgrade_to_another_version_while_one_is_in_progress_is_refused(store: JournalStore) -> None:
    site = _site(kill_at=7)
    with pytest.raises(Killed):
        _upgrade(site, store)
    other = VersionRef("2026.12.3", "sha256:" + "c" * 64)
    with pytest.raises(UpgradeError) as raised:
        _upgrade(site, store, new=other)
    assert raised.value.code == "upgrade-in-progress" and "2026.12.2" in raised.value.message


def test_an_unreadable_journal_is_an_error_not_a_fresh_start(store: JournalStore) -> None:
    store.folder.mkdir(parents=True)
    store.path.write_text('{"schema": "aifactory.upgrade-journal/v1", "site": "lab"}')
    with pytest.raises(StateError) as raised:
        _upgrade(_site(), store)
    assert raised.value.code == "upgrade-journal" and str(store.path) in str(raised.value.location.file)


def test_the_journal_is_written_with_tight_modes_and_read_back_the_same(store: JournalStore) -> None:
    site = _site(kill_at=8)
    with pytest.raises(Killed):
        _upgrade(site, store)
    journal = store.load()
    assert journal is not None and store.path.stat().st_mode & 0o777 == 0o600
    assert journal.as_dict()["hosts"]["gpu-001"] == {
        "name": "gpu-001",
        "batch": 1,
        "from_version": A.version,
        "to_version": B.version,
        "phase": "drained-door",  # killed as its install began
        "target": "to",
    }
    store.save(journal)
    again = store.load()
    assert again is not None and again.as_dict() == journal.as_dict()


def test_a_run_killed_as_it_records_its_start_records_it_on_the_rerun_under_the_same_run(
    store: JournalStore,
) -> None:
    """The journal is kept before `started` goes to the operator log: a kill between the two leaves
    a journal the re-run resumes, and the re-run writes `started` for the same run id."""
    site = _site()

    class DiesOnStart(FakeLog):
        def write(self, change: Change, result: str, detail: dict[str, Any]) -> None:
            raise Killed("started")

    journal, _ = begin_upgrade(store, site="lab", old=A, new=B, batches=BATCHES)
    with pytest.raises(Killed):
        run_upgrade(journal, store, site.parts(DiesOnStart(site)), drain_timeout_s=60)
    assert site.events == [] and store.load() is not None
    result = _upgrade(site, store)
    assert [e.kind for e in site.events][0] == "started"
    assert result.journal.id == journal.id and {e.change.run for e in site.events} == {journal.id}
