"""The operator-log records of an upgrade or a rollback, written by the orchestration as it goes.

Each goes through `SiteState.record` (the hash-chained operator log, as backup and restore record
theirs), so who ran it (`user`, `host`) and when (`time`) are the log's own fields. One change is one
run: its records share `detail.run`, and a re-run that resumes an interrupted change passes the same
run id, so the audit sees one change with one outcome.

    command   result            detail (besides run, from, to)
    upgrade   started           batches: [[host, ...], ...]; activation (a rollback's record)
    rollback  batch-done        batch: n, hosts
              batch-reverted    batch: n, hosts, reason (e.g. the health check that failed)
              finished          hosts
              aborted           reason

The audit's CM-3 section (aifactory.audit.evidence.changes) reads exactly these; a change whose last
record is `started` or `batch-done` has no outcome yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from aifactory.lifecycle.activation import ActivationVerdict
from aifactory.state import SiteState

Kind = Literal["upgrade", "rollback"]
KINDS: tuple[Kind, ...] = ("upgrade", "rollback")
STARTED, BATCH_DONE, BATCH_REVERTED, FINISHED, ABORTED = (
    "started",
    "batch-done",
    "batch-reverted",
    "finished",
    "aborted",
)
OUTCOMES = (FINISHED, ABORTED, BATCH_REVERTED)  # a change ends with one of these


@dataclass(frozen=True)
class Change:
    """One upgrade or rollback: what every one of its records carries."""

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


def change_started(
    state: SiteState,
    change: Change,
    *,
    batches: Sequence[Sequence[str]],
    activation: ActivationVerdict | None = None,
) -> dict[str, Any]:
    """The change begins (a rollback names the activation record that authorized it)."""
    extra: dict[str, Any] = {"batches": [list(batch) for batch in batches]}
    if activation is not None:
        extra |= activation.citation()
    return _record(state, change, STARTED, extra)


def batch_done(state: SiteState, change: Change, *, batch: int, hosts: Sequence[str]) -> dict[str, Any]:
    """A batch runs the new version, passed its health gate and takes work again."""
    return _record(state, change, BATCH_DONE, {"batch": batch, "hosts": list(hosts)})


def batch_reverted(
    state: SiteState, change: Change, *, batch: int, hosts: Sequence[str], reason: str
) -> dict[str, Any]:
    """A batch failed (its gate, its deploy) and went back to the previous version: the change stops."""
    return _record(state, change, BATCH_REVERTED, {"batch": batch, "hosts": list(hosts), "reason": reason})


def change_finished(state: SiteState, change: Change, *, hosts: Sequence[str]) -> dict[str, Any]:
    """Every host runs the target version."""
    return _record(state, change, FINISHED, {"hosts": list(hosts)})


def change_aborted(state: SiteState, change: Change, *, reason: str) -> dict[str, Any]:
    """The admin stopped the change (`--abort`: the upgraded batches went back)."""
    return _record(state, change, ABORTED, {"reason": reason})


def _record(state: SiteState, change: Change, result: str, extra: dict[str, Any]) -> dict[str, Any]:
    return state.record(
        command=change.kind,
        result=result,
        bundle_digest=change.to_digest,
        detail=change.detail() | extra,
    )
