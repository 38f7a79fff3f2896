"""A rolling upgrade, batch by batch, gated by health, going back by itself when a batch fails.

Per batch: drain in Slurm (running jobs finish; past the drain timeout they are requeued and resume
from their checkpoint), drain at the front door, install the new version beside the old one (the
runtime's atomic `current` switch), health gate, then back into service at the front door and in
Slurm. A batch that fails its deploy or its gate goes through the same steps back to the previous
version, and the upgrade stops (UpgradeFailed, exit 4) saying which host runs which version and
which check failed. Every step is journaled (aifactory.lifecycle.journal) once done, so a re-run
after an interruption goes on where it stopped, and `abort_upgrade` takes the touched batches back,
last batch first.

A rollback is this same upgrade, to an older version the control host imported before (its journal's
`kind` is "rollback"; aifactory.lifecycle.rollback starts it). Every change writes its records to the
operator log through aifactory.lifecycle.records (the audit's CM-3 reads them): `started` before the
first step (again on a re-run when a kill came before it was kept), then per batch, then the outcome.

The orchestration knows the site only through the seams (aifactory.lifecycle.seams).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from aifactory.errors import Problem, UpgradeError, UpgradeFailed
from aifactory.lifecycle import records
from aifactory.lifecycle.journal import (
    HostEntry,
    Journal,
    JournalStore,
    Phase,
    VersionRef,
    phase_index,
)
from aifactory.lifecycle.records import ChangeLog, Kind
from aifactory.lifecycle.seams import (
    BundleInUse,
    FrontDoor,
    HealthGate,
    Installer,
    Rebooter,
    SlurmDrain,
    StepOutcome,
)
from aifactory.progress import SILENT, Progress

DRAIN_REASON = "aifactory-upgrade:"  # Slurm's drain reason prefix: the upgrade resumes only its own
DEFAULT_DRAIN_TIMEOUT_S = 3600.0
REQUEUE_GRACE_S = 120.0  # for requeued jobs to leave their hosts


@dataclass(frozen=True)
class UpgradeParts:
    """The site's parts the upgrade acts through, chosen by the edge."""

    slurm: SlurmDrain
    door: FrontDoor
    installer: Installer
    gate: HealthGate
    log: ChangeLog
    bundle: BundleInUse
    progress: Progress = SILENT
    rebooter: Rebooter | None = None  # a change that needs a reboot (Journal.restarts) must have one


@dataclass(frozen=True)
class UpgradeResult:
    journal: Journal
    path: Path  # the journal as it ended (history/) or stands

    def as_dict(self) -> dict[str, Any]:
        return {**self.journal.as_dict(), "versions": self.journal.versions(), "journal": str(self.path)}


@dataclass
class _Run:
    """One run of the upgrade (or abort): the journal, where it is kept, and the parts."""

    journal: Journal
    store: JournalStore
    parts: UpgradeParts
    drain_timeout_s: float

    def save(self) -> None:
        self.store.save(self.journal)


def begin_upgrade(
    store: JournalStore,
    *,
    site: str,
    old: VersionRef,
    new: VersionRef,
    batches: list[tuple[str, ...]],
    kind: Kind = "upgrade",
    activation: dict[str, Any] | None = None,
    reboot: dict[str, Any] | None = None,
) -> tuple[Journal, bool]:
    """The journal to run: the one in progress to the same version (resumed: True), or a new one.
    `reboot`: the change needs one (RebootDecision.as_dict() with `restart`), kept in the journal so a
    resumed run restarts the batches the same way."""
    existing = store.load()
    if existing is None:
        return Journal.start(site, old, new, batches, kind=kind, activation=activation, reboot=reboot), False
    what = f"the {existing.kind} to {existing.new.version}"
    if existing.status == "failed":
        raise UpgradeError(
            f"{what} stopped: {_failure_line(existing)}",
            code="upgrade-stopped",
            hint=f"run `aifactory {existing.kind} SITE --abort` to take the batches back to "
            f"{existing.old.version}; then try again with a version that passes",
        )
    if existing.status == "aborting":
        raise UpgradeError(
            f"an abort of {what} did not finish",
            code="upgrade-aborting",
            hint=f"run `aifactory {existing.kind} SITE --abort` again to finish it",
        )
    if existing.new != new or existing.kind != kind:
        raise UpgradeError(
            f"{what} is in progress; this {kind} is to {new.version}",
            code="upgrade-in-progress",
            hint=f"finish it (`aifactory {existing.kind}` to {existing.new.version} again), or "
            f"`aifactory {existing.kind} SITE --abort` it",
        )
    return existing, True


def run_upgrade(
    journal: Journal, store: JournalStore, parts: UpgradeParts, *, drain_timeout_s: float
) -> UpgradeResult:
    """Upgrade every batch not yet done, in order; raise UpgradeFailed when one goes back."""
    run = _Run(journal, store, parts, drain_timeout_s)
    if not journal.announced:
        run.save()  # first: a run killed before the record resumes this journal (the same run id)
        records.change_started(
            parts.log,
            journal.change,
            batches=journal.batches,
            activation=journal.activation,
            reboot=journal.reboot,
        )
        journal.announced = True
        run.save()
    for index in range(len(journal.batches)):
        _upgrade_batch(run, index)
    journal.status = "done"
    records.change_finished(parts.log, journal.change, hosts=sorted(journal.hosts))
    return UpgradeResult(journal, store.close(journal))


def abort_upgrade(
    store: JournalStore, parts: UpgradeParts, *, drain_timeout_s: float, kind: Kind = "upgrade"
) -> UpgradeResult:
    """Take every batch the change touched back to the previous version, last batch first; the
    previous version is the bundle in use again (a plain deploy installs it, not the abandoned one)."""
    journal = store.load()
    if journal is None:
        raise UpgradeError(f"no {kind} is in progress: nothing to abort", code="upgrade-nothing-to-abort")
    if journal.kind != kind:
        raise UpgradeError(
            f"the change in progress is the {journal.kind} to {journal.new.version}, not a {kind}",
            code="upgrade-in-progress",
            hint=f"abort it with `aifactory {journal.kind} SITE --abort`",
        )
    run = _Run(journal, store, parts, drain_timeout_s)
    if journal.status != "aborting":
        journal.status = "aborting"
        run.save()
        records.abort_started(parts.log, journal.change, hosts=_touched(journal))
    for index in reversed(range(len(journal.batches))):
        entries = [e for e in journal.batch_hosts(index) if e.target == "from" or e.phase != "pending"]
        for entry in entries:
            _turn_back(entry)
        if entries and not all(e.phase == "reverted" for e in entries):
            run.save()
            outcome = _move(run, index, [e.name for e in entries], journal.old)
            if not outcome.passed:
                raise _failed(run, index, outcome, went_back=False, aborting=True)
    parts.bundle.use(journal.old)
    journal.status = "aborted"
    records.change_aborted(
        parts.log,
        journal.change,
        hosts=sorted(journal.hosts),
        reason=f"aifactory {journal.kind} --abort: the hosts it touched went back to {journal.old.version}",
    )
    return UpgradeResult(journal, store.close(journal))


def _touched(journal: Journal) -> list[str]:
    return sorted(n for n, e in journal.hosts.items() if e.target == "from" or e.phase != "pending")


def _turn_back(entry: HostEntry) -> None:
    """Point a host at the previous version, from wherever it stands: a host in service drains
    again; a drained one stays drained and is switched back."""
    if entry.target == "from":
        return
    entry.target = "from"
    if entry.phase == "enabled":
        entry.phase = "pending"
    elif phase_index(entry.phase) > phase_index("drained-door"):
        entry.phase = "drained-door"


def _upgrade_batch(run: _Run, index: int) -> None:
    entries = run.journal.batch_hosts(index)
    names = [e.name for e in entries]
    if all(e.target == "to" and e.done for e in entries):
        return
    if any(e.target == "from" for e in entries):  # a run was killed while this batch went back
        _go_back(run, index, StepOutcome(tuple(run.journal.failure["checks"] if run.journal.failure else ())))
    outcome = _move(run, index, names, run.journal.new)
    if not outcome.passed:
        run.journal.failure = {"batch": index + 1, "hosts": names, "checks": list(outcome.failures)}
        for entry in entries:
            _turn_back(entry)
        run.save()
        _go_back(run, index, outcome)
    records.batch_done(run.parts.log, run.journal.change, batch=index + 1, hosts=names)


def _go_back(run: _Run, index: int, failed: StepOutcome) -> NoReturn:
    """The failed batch back to the previous version and into service; then the upgrade stops."""
    names = run.journal.batches[index]
    back = _move(run, index, names, run.journal.old)
    where = {key: str(value) for key, value in failed.detail.items()}  # event log, gate evidence
    log, change, batch = run.parts.log, run.journal.change, index + 1
    if back.passed:
        run.journal.status = "failed"
        run.save()
        records.batch_reverted(
            log, change, batch=batch, hosts=names, reason="; ".join(failed.failures), **where
        )
        raise _failed(run, index, failed, went_back=True)
    run.journal.failure = {**(run.journal.failure or {}), "going_back": list(back.failures)}
    run.journal.status = "failed"
    run.save()
    both = StepOutcome(failed.failures + back.failures)
    records.batch_failed(log, change, batch=batch, hosts=names, reason="; ".join(both.failures), **where)
    raise _failed(run, index, both, went_back=False)


def _move(run: _Run, index: int, names: Sequence[str], version: VersionRef) -> StepOutcome:
    """Take these hosts of a batch to `version`: drain, install, gate, back into service. Each step
    runs for the hosts not yet past it. A failed install or gate leaves them drained."""
    parts, total = run.parts, len(run.journal.batches)
    where = f"batch {index + 1}/{total} ({', '.join(names)})"
    _step(run, names, "drained-slurm", f"{where}: drain in Slurm", lambda hs: _drain_slurm(run, hs))
    _step(run, names, "drained-door", f"{where}: drain at the front door", parts.door.drain)
    outcome = _checked_step(
        run,
        names,
        "deployed",
        f"{where}: deploy {version.version}",
        lambda hs: parts.installer.install(hs, version),
    )
    if outcome.passed and run.journal.restarts:
        outcome = _reboot(run, names, where)
    if outcome.passed:
        outcome = _checked_step(run, names, "gated", f"{where}: health gate", parts.gate.check)
    if outcome.passed:
        _step(run, names, "enabled", f"{where}: back into service", lambda hs: _enable(run, hs))
    return outcome


def _reboot(run: _Run, names: Sequence[str], where: str) -> StepOutcome:
    """Restart the hosts through their BMCs and wait for them to answer SSH again. The reset is
    journaled (with each host's boot id) before it goes out: a run killed after it waits on the
    re-run instead of resetting the hosts a second time."""
    rebooter = run.parts.rebooter
    if rebooter is None:
        raise UpgradeError(
            f"the {run.journal.kind} needs its hosts restarted and has no way to reach their BMCs",
            code="upgrade-no-bmc",
        )
    behind = _behind(run, names, "reset-sent")
    if behind:
        run.parts.progress.step(f"{where}: restart through the BMC", total_items=len(behind))
        booted = rebooter.boot_ids(behind)
        for name in behind:
            run.journal.hosts[name].boot_id = booted.get(name)
        _mark(run, behind, "reset-sent")  # before the reset: never sent twice
        rebooter.reset(behind)

    def wait(hosts: list[str]) -> StepOutcome:
        return rebooter.wait_back({h: run.journal.hosts[h].boot_id for h in hosts})

    return _checked_step(run, names, "rebooted", f"{where}: wait for SSH after the restart", wait)


def _step(
    run: _Run, names: Sequence[str], phase: Phase, title: str, action: Callable[[list[str]], None]
) -> None:
    behind = _behind(run, names, phase)
    if not behind:
        return
    run.parts.progress.step(title, total_items=len(behind))
    action(behind)
    _mark(run, behind, phase)


def _checked_step(
    run: _Run, names: Sequence[str], phase: Phase, title: str, action: Callable[[list[str]], StepOutcome]
) -> StepOutcome:
    behind = _behind(run, names, phase)
    if not behind:
        return StepOutcome()
    run.parts.progress.step(title, total_items=len(behind))
    outcome = action(behind)
    if outcome.passed:
        _mark(run, behind, phase)
    return outcome


def _behind(run: _Run, names: Sequence[str], phase: Phase) -> list[str]:
    return [n for n in names if phase_index(run.journal.hosts[n].phase) < phase_index(phase)]


def _mark(run: _Run, names: Sequence[str], phase: Phase) -> None:
    for name in names:
        entry = run.journal.hosts[name]
        entry.phase = "reverted" if phase == "enabled" and entry.target == "from" else phase
    run.save()
    run.parts.progress.advance(items=len(names))


def _drain_slurm(run: _Run, hosts: Sequence[str]) -> None:
    slurm = run.parts.slurm
    slurm.drain(hosts, reason=f"{DRAIN_REASON} {run.journal.old.version} -> {run.journal.new.version}")
    running = slurm.wait_for_jobs(hosts, timeout_s=run.drain_timeout_s)
    if running:
        slurm.requeue(running)
        run.journal.requeued += [j for j in running if j not in run.journal.requeued]
        run.save()
        records.jobs_requeued(
            run.parts.log, run.journal.change, hosts=hosts, jobs=running, drain_timeout_s=run.drain_timeout_s
        )
        slurm.wait_for_jobs(hosts, timeout_s=REQUEUE_GRACE_S)


def _enable(run: _Run, hosts: Sequence[str]) -> None:
    run.parts.door.enable(hosts)
    run.parts.slurm.resume(hosts)


def _failure_line(journal: Journal) -> str:
    failure = journal.failure or {}
    checks = "; ".join(failure.get("checks", [])) or "no check named"
    return f"batch {failure.get('batch', '?')} ({', '.join(failure.get('hosts', []))}) failed: {checks}"


def _failed(
    run: _Run, index: int, outcome: StepOutcome, *, went_back: bool, aborting: bool = False
) -> UpgradeFailed:
    """The error an admin reads: the batch, the failed checks, and every host's version."""
    j = run.journal
    batch = f"batch {index + 1}/{len(j.batches)} ({', '.join(j.batches[index])})"
    if aborting:
        message = f"the abort of the {j.kind} stopped: {batch} did not pass on {j.old.version} again"
    else:
        message = f"{batch} failed on {j.new.version}"
    message += (
        f"; it went back to {j.old.version} and is in service again"
        if went_back
        else "; its hosts stay drained (out of Slurm and the front door)"
    )
    problems = [Problem("failed-check", line) for line in outcome.failures]
    problems += [Problem("host-version", f"{host} runs {version}") for host, version in j.versions().items()]
    if went_back:
        hint = (
            f"the {j.kind} stopped; `aifactory {j.kind} SITE --abort` takes the batches it changed back "
            f"to {j.old.version}"
        )
    else:  # an abort goes on from the journal: it takes these hosts back first
        again = " again" if aborting else ""
        hint = (
            f"fix those hosts, then run `aifactory {j.kind} SITE --abort`{again}: it goes on from the journal"
        )
    return UpgradeFailed(message, problems=problems, hint=hint)
