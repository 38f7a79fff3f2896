"""The operator-log records of an upgrade, a rollback, a resize or a replacement: the one vocabulary
the orchestrations (aifactory.lifecycle.upgrade, resize, replace) write as they go, and the audit's
CM-3 section reads.

Each goes through `SiteState.record` (the hash-chained operator log, as backup and restore record
theirs), so who ran it (`user`, `host`) and when (`time`) are the log's own fields. One change is one
run: its records share `detail.run` (the journal's id), and a re-run that resumes an interrupted
change keeps it, so the audit sees one change with one outcome.

    command   result            detail (besides run, from, to)
    upgrade   started           batches: [[host, ...], ...]; a rollback: activation (the record cited);
                                a change that needs a reboot: reboot (packages, restart: false under
                                --no-reboot, when the admin restarts the hosts)
    rollback  batch-done        batch: n, hosts
              jobs-requeued     hosts, jobs, drain_timeout_s: Slurm jobs requeued past the drain timeout
              batch-failed      batch, hosts, reason: failed, and going back failed too (hosts drained)
              batch-reverted    batch, hosts, reason (e.g. the health check that failed)
              abort-started     hosts: the hosts the abort takes back
              finished          hosts
              aborted           hosts, reason
    resize    started           added, removed, reconfigured: {host: [change, ...]} (from, to: the
                                plans' digests, as `version` and `digest`)
              jobs-requeued     as above, for the removed hosts' jobs
              step-failed       step (deploy, health-gate), hosts, reason: stopped; a re-run goes on
              finished          added, removed (the retired hosts; their data kept), hosts
    replace   started           host, reachable (whether it answered SSH with its known key; a dead
                                host does not: it counts as drained) (from, to: the bundle version
                                deployed to it, both the same)
              jobs-requeued     as above, for the host's jobs
              drained           host, reachable: out of Slurm and the front door
              provisioned       host, system (the BMC's record of the new machine: UUID, serial; {}
                                without a BMC), host_key_proven_by (the provisioning record) or null
              host-key-learned  host, old (fingerprints dropped from known_hosts), new, proven_by
              host-key-refused  host, offered, expected, proven_by: the host showed another key
              step-failed       as above (deploy, health-gate), for the host
              finished          hosts: [host], new host key, system

The audit's CM-3 section (aifactory.audit.evidence.changes) takes a change's last record as its
outcome: `finished`, `batch-reverted` or `aborted`; any other last record is a change still open.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from aifactory.state import SiteState

Kind = Literal["upgrade", "rollback", "resize", "replace"]
KINDS: tuple[Kind, ...] = ("upgrade", "rollback", "resize", "replace")
STEP_FAILED = "step-failed"  # a resize's deploy or gate failed: open until a re-run finishes it
STARTED, BATCH_DONE, JOBS_REQUEUED, BATCH_FAILED, BATCH_REVERTED = (
    "started",
    "batch-done",
    "jobs-requeued",
    "batch-failed",
    "batch-reverted",
)
ABORT_STARTED, FINISHED, ABORTED = "abort-started", "finished", "aborted"
OUTCOMES = (FINISHED, ABORTED, BATCH_REVERTED)  # a change ends with one of these


@dataclass(frozen=True)
class Change:
    """One upgrade, rollback or resize: what every one of its records carries (a resize's versions
    are the plans' digests: the bundle does not change)."""

    kind: Kind
    run: str  # the same for every record of the change, and for a re-run that resumes it
    from_version: str
    from_digest: str
    to_version: str
    to_digest: str

    def detail(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "from": {"version": self.from_version, "digest": self.from_digest},
            "to": {"version": self.to_version, "digest": self.to_digest},
        }


class ChangeLog(Protocol):
    """Where a change's records go: the site's operator log (OperatorLog), or a test's list."""

    def write(self, change: Change, result: str, detail: dict[str, Any]) -> None:
        """Keep one record of `change` where operators and the audit read it."""


@dataclass(frozen=True)
class OperatorLog:
    """The site's hash-chained operator log."""

    state: SiteState

    def write(self, change: Change, result: str, detail: dict[str, Any]) -> None:
        self.state.record(
            command=change.kind,
            result=result,
            bundle_digest=None if change.kind == "resize" else change.to_digest,
            detail=change.detail() | detail,
        )


def change_started(
    log: ChangeLog,
    change: Change,
    *,
    batches: Sequence[Sequence[str]],
    activation: Mapping[str, Any] | None = None,
    reboot: Mapping[str, Any] | None = None,
) -> None:
    """The change begins (a rollback cites the activation record that authorized it:
    ActivationVerdict.citation()'s `activation`; a change that needs a reboot says so, and whether
    the upgrade restarts the hosts or leaves it to the admin)."""
    extra: dict[str, Any] = {"batches": [list(batch) for batch in batches]}
    if activation:
        extra["activation"] = dict(activation)
    if reboot:
        extra["reboot"] = dict(reboot)
    log.write(change, STARTED, extra)


def batch_done(log: ChangeLog, change: Change, *, batch: int, hosts: Sequence[str]) -> None:
    """A batch runs the new version, passed its health gate and takes work again."""
    log.write(change, BATCH_DONE, {"batch": batch, "hosts": list(hosts)})


def jobs_requeued(
    log: ChangeLog, change: Change, *, hosts: Sequence[str], jobs: Sequence[str], drain_timeout_s: float
) -> None:
    """Slurm jobs still running past the drain timeout went back to the queue (they resume from
    their checkpoint)."""
    log.write(
        change, JOBS_REQUEUED, {"hosts": list(hosts), "jobs": list(jobs), "drain_timeout_s": drain_timeout_s}
    )


def batch_failed(
    log: ChangeLog, change: Change, *, batch: int, hosts: Sequence[str], reason: str, **where: str
) -> None:
    """A batch failed, and going back to the previous version failed too: its hosts stay drained and
    the change stays open (an abort finishes it). `where`: the deploy's event log, the gate's evidence."""
    log.write(change, BATCH_FAILED, {"batch": batch, "hosts": list(hosts), "reason": reason, **where})


def batch_reverted(
    log: ChangeLog, change: Change, *, batch: int, hosts: Sequence[str], reason: str, **where: str
) -> None:
    """A batch failed (its gate, its deploy) and went back to the previous version: the change stops."""
    log.write(change, BATCH_REVERTED, {"batch": batch, "hosts": list(hosts), "reason": reason, **where})


def abort_started(log: ChangeLog, change: Change, *, hosts: Sequence[str]) -> None:
    """`--abort` begins taking these hosts back to the previous version (open until `aborted`)."""
    log.write(change, ABORT_STARTED, {"hosts": list(hosts)})


def change_finished(log: ChangeLog, change: Change, *, hosts: Sequence[str]) -> None:
    """Every host runs the target version."""
    log.write(change, FINISHED, {"hosts": list(hosts)})


def change_aborted(log: ChangeLog, change: Change, *, hosts: Sequence[str], reason: str) -> None:
    """The admin stopped the change (`--abort`): the batches it touched went back."""
    log.write(change, ABORTED, {"hosts": list(hosts), "reason": reason})


def resize_started(
    log: ChangeLog,
    change: Change,
    *,
    added: Sequence[str],
    removed: Sequence[str],
    reconfigured: Mapping[str, Sequence[str]],
) -> None:
    """A resize begins: the hosts it adds and removes, and what changes on each host that stays."""
    log.write(
        change,
        STARTED,
        {
            "added": list(added),
            "removed": list(removed),
            "reconfigured": {host: list(what) for host, what in reconfigured.items()},
        },
    )


def step_failed(log: ChangeLog, change: Change, *, step: str, hosts: Sequence[str], reason: str) -> None:
    """A resize's step failed: it stops, open, where a re-run goes on."""
    log.write(change, STEP_FAILED, {"step": step, "hosts": list(hosts), "reason": reason})


def resize_finished(log: ChangeLog, change: Change, *, added: Sequence[str], removed: Sequence[str]) -> None:
    """The added hosts run, passed their gate and take work; the removed ones are out of Slurm and the
    front door, retired with their data kept."""
    log.write(
        change,
        FINISHED,
        {"added": list(added), "removed": list(removed), "hosts": sorted([*added, *removed])},
    )


def replace_started(log: ChangeLog, change: Change, *, host: str, reachable: bool) -> None:
    """A replacement begins: whether the host still answered (with its known key)."""
    log.write(change, STARTED, {"host": host, "reachable": reachable})


def replace_step(log: ChangeLog, change: Change, result: str, *, host: str, **detail: Any) -> None:
    """A step of a replacement is done (drained, provisioned, host-key-learned) or refused
    (host-key-refused): what the audit reads of it."""
    log.write(change, result, {"host": host, **detail})


def replace_finished(
    log: ChangeLog, change: Change, *, host: str, host_key: str, system: Mapping[str, Any]
) -> None:
    """The new machine runs the site's version, passed its gate and takes work again."""
    log.write(change, FINISHED, {"host": host, "hosts": [host], "host_key": host_key, "system": dict(system)})
