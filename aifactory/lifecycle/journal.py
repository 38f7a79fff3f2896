"""The upgrade's journal: what each host has been through, kept in the site's state folder so that a
re-run after Ctrl-C or SIGKILL goes on from there, and `--abort` knows what to take back.

    <state>/<site>/upgrade/journal.json        the upgrade in progress (or stopped)
    <state>/<site>/upgrade/history/<id>.json   finished and aborted upgrades, as they ended
    <state>/<site>/upgrade/running.json        the version the hosts run, as the last one left them
                                               (after an abort, not the imported bundle's)

Every change is one atomic write (aifactory.durable): a reader (or the next run) sees the journal
before the step or after it, never half of it. A step is journaled after it is done, so a run killed
in the middle of one does it again on the re-run: every step is safe to repeat (drain a drained
host, deploy a deployed version, re-enable an enabled one).

Each host moves through the phases in order. `target` says which way: `to` while upgrading, `from`
while it goes back (a failed gate, or `--abort`); a host back on the previous version and in
service again is `reverted`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

from aifactory.durable import atomic_write
from aifactory.errors import Location, StateError
from aifactory.lifecycle.records import Change, Kind
from aifactory.state import SiteState

SCHEMA = "aifactory.upgrade-journal/v1"
JOURNAL = "journal.json"
RUNNING = "running.json"
Phase = Literal[
    "pending",
    "drained-slurm",
    "drained-door",
    "deployed",
    "reset-sent",
    "rebooted",
    "gated",
    "enabled",
    "reverted",
]
# `reset-sent` and `rebooted` only for a change that needs a reboot (Journal.reboot); `reset-sent` is
# kept *before* the BMC is asked to restart, so a run killed right after a reset waits for the host
# on the re-run and never resets it twice (a reset that never went out is forced after the timeout).
# The forward order: every phase but `reverted`, in the order Phase lists them.
PHASES: tuple[Phase, ...] = tuple(phase for phase in get_args(Phase) if phase != "reverted")
Target = Literal["to", "from"]
# upgrading: batches go on; failed: a batch went back and the upgrade stopped (a re-run refuses,
# --abort takes the rest back); aborting: --abort in progress; done and aborted end in history/.
Status = Literal["upgrading", "failed", "aborting", "done", "aborted"]


def phase_index(phase: Phase) -> int:
    """Where a phase stands in the order (`reverted` is `enabled`, on the previous version)."""
    return PHASES.index("enabled" if phase == "reverted" else phase)


@dataclass(frozen=True)
class VersionRef:
    """A bundle version and the digest of its manifest (the runtime's install record holds both)."""

    version: str
    digest: str


@dataclass
class HostEntry:
    name: str
    batch: int  # 0-based index into the journal's batches
    from_version: str
    to_version: str
    phase: Phase = "pending"
    target: Target = "to"
    boot_id: str | None = None  # before the reset the journal records (a change that reboots)

    @property
    def runs(self) -> str:
        """The version this host runs now, as far as the journal knows."""
        switched = phase_index(self.phase) >= phase_index("deployed")
        if self.target == "to":
            return self.to_version if switched else self.from_version
        return self.from_version if switched else self.to_version

    @property
    def done(self) -> bool:
        """In service on the version it was heading for."""
        return self.phase in ("enabled", "reverted")


@dataclass
class Journal:
    site: str
    old: VersionRef
    new: VersionRef
    batches: list[list[str]]
    hosts: dict[str, HostEntry]
    started: str
    status: Status = "upgrading"
    failure: dict[str, Any] | None = None  # the batch that failed: index, hosts, failed checks
    requeued: list[str] = field(default_factory=list)  # Slurm jobs requeued past the drain timeout
    kind: Kind = "upgrade"  # a rollback is an upgrade to an older version installed before
    activation: dict[str, Any] | None = None  # a rollback: the activation record it cites
    announced: bool = False  # its `started` record is in the operator log
    # a change that needs a reboot: RebootDecision.as_dict() and `restart`: False under --no-reboot
    # (the admin restarts the hosts); None: no reboot needed
    reboot: dict[str, Any] | None = None

    @classmethod
    def start(
        cls,
        site: str,
        old: VersionRef,
        new: VersionRef,
        batches: list[tuple[str, ...]],
        *,
        kind: Kind = "upgrade",
        activation: dict[str, Any] | None = None,
        reboot: dict[str, Any] | None = None,
    ) -> Journal:
        hosts = {
            name: HostEntry(name, index, old.version, new.version)
            for index, batch in enumerate(batches)
            for name in batch
        }
        return cls(
            site,
            old,
            new,
            [list(b) for b in batches],
            hosts,
            started=now(),
            kind=kind,
            activation=activation,
            reboot=reboot,
        )

    @property
    def restarts(self) -> bool:
        """Each batch is restarted through its BMCs between the deploy and the gate."""
        return bool(self.reboot and self.reboot.get("restart"))

    @property
    def id(self) -> str:
        """The change's run id: its operator-log records carry it, and a resumed run keeps it."""
        return f"{self.started.replace(':', '')}-{self.new.version}"

    @property
    def change(self) -> Change:
        """What every operator-log record of this change carries (aifactory.lifecycle.records)."""
        old, new = self.old, self.new
        return Change(self.kind, self.id, old.version, old.digest, new.version, new.digest)

    def batch_hosts(self, index: int) -> list[HostEntry]:
        return [self.hosts[name] for name in self.batches[index]]

    def versions(self) -> dict[str, str]:
        """Host -> the version it runs now (the account an admin reads when the upgrade stops)."""
        return {name: entry.runs for name, entry in sorted(self.hosts.items())}

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "site": self.site,
            "old": asdict(self.old),
            "new": asdict(self.new),
            "batches": self.batches,
            "hosts": {name: _entry(entry) for name, entry in sorted(self.hosts.items())},
            "started": self.started,
            "status": self.status,
            "failure": self.failure,
            "requeued": self.requeued,
            "kind": self.kind,
            "activation": self.activation,
            "announced": self.announced,
            **({"reboot": self.reboot} if self.reboot is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Journal:
        if data.get("schema") != SCHEMA:
            raise ValueError(f"schema {data.get('schema')!r}, expected {SCHEMA}")
        return cls(
            site=str(data["site"]),
            old=VersionRef(**data["old"]),
            new=VersionRef(**data["new"]),
            batches=[[str(n) for n in batch] for batch in data["batches"]],
            hosts={name: HostEntry(**entry) for name, entry in data["hosts"].items()},
            started=str(data["started"]),
            status=data["status"],
            failure=data.get("failure"),
            requeued=[str(j) for j in data.get("requeued", [])],
            kind=_kind(data.get("kind", "upgrade")),
            activation=data.get("activation"),
            # a journal written before `announced` was: its start was recorded as it began
            announced=bool(data.get("announced", True)),
            reboot=data.get("reboot"),
        )


@dataclass(frozen=True)
class JournalStore:
    """Where one site's journal lives; every save is atomic and durable."""

    folder: Path

    @classmethod
    def for_state(cls, state: SiteState) -> JournalStore:
        return cls(state.subdir("upgrade"))

    @property
    def path(self) -> Path:
        return self.folder / JOURNAL

    def load(self) -> Journal | None:
        if not self.path.is_file():
            return None
        try:
            return Journal.from_dict(json.loads(self.path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StateError(
                f"the upgrade journal cannot be read: {exc}",
                code="upgrade-journal",
                location=Location(file=str(self.path)),
                hint="it says which host runs which version: restore it from backup rather than delete it",
            ) from None

    def save(self, journal: Journal) -> None:
        data = json.dumps(journal.as_dict(), indent=1, sort_keys=True) + "\n"
        atomic_write(self.path, data.encode(), mode=0o600)

    def close(self, journal: Journal) -> Path:
        """Move a finished (or aborted) upgrade's journal into history/: no upgrade is in progress.
        What the hosts now run is kept first, so the next upgrade starts from it."""
        self.save(journal)
        running = journal.new if journal.status == "done" else journal.old
        atomic_write(
            self.folder / RUNNING, (json.dumps(asdict(running), sort_keys=True) + "\n").encode(), mode=0o600
        )
        ended = self.folder / "history" / f"{journal.id}.json"
        ended.parent.mkdir(mode=0o700, exist_ok=True)
        self.path.replace(ended)
        return ended

    def running(self) -> VersionRef | None:
        """The version the last upgrade (or abort) left the hosts on; None before the first one."""
        path = self.folder / RUNNING
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            return VersionRef(str(data["version"]), str(data["digest"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StateError(
                f"the record of the version the hosts run cannot be read: {exc}",
                code="upgrade-journal",
                location=Location(file=str(path)),
                hint="restore it from backup (the last journal in upgrade/history/ says the same)",
            ) from None


def _entry(entry: HostEntry) -> dict[str, Any]:
    """A host's entry; `boot_id` only once a reset recorded one (a journal without a reboot keeps
    its shape)."""
    data = asdict(entry)
    if data["boot_id"] is None:
        del data["boot_id"]
    return data


def _kind(value: object) -> Kind:
    if value not in ("upgrade", "rollback"):  # resize and replace keep journals of their own
        raise ValueError(f"kind {value!r}, expected upgrade or rollback")
    return "rollback" if value == "rollback" else "upgrade"


def now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
