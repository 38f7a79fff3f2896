"""Replacing a dead (or swapped) host: a new machine under the host's planned name and addresses,
trusted by a host key the site proved, deployed, health-gated and put back to work.

The steps (`run_replace`), each journaled once done in `<state>/replace/journal.json` (the upgrade's
journal pattern: one atomic write per step, so a run killed at any point goes on from the last step
done on the re-run, and every step is safe to repeat):

1. drained: asked first whether the host answers SSH with its known host key. A host that does is
   drained in Slurm (running jobs may finish until the drain timeout, then are requeued) and at the
   front door. A dead host does not answer: it counts as drained, and the log says so; Slurm and the
   front door are still told (their controller and HAProxy answer), so that the new machine takes no
   job and no request before its gate, and the jobs Slurm still lists on it are requeued at once;
2. provisioned: the BMC (Redfish) boots the new machine into its installer, its identity (UUID,
   serial) recorded, and the site's provisioning brings it up blank (on the lab: the lab makes it);
3. key-learned: the key the new machine shows (ssh-keyscan from the control host) is accepted only
   when its fingerprint is the one proven by a channel the site trusts: the provisioning record
   (a provisioning system that made the machine's key says which), or the fingerprint the admin read
   from the machine's console through its BMC and gave with `--host-key-fingerprint`. Nothing is
   learned on first use: with neither, the replace refuses before it changes anything; a key that does
   not match is refused (and logged). Once it matches, the known_hosts file the deploy checks hosts
   with trusts the new key alone for the host (the dead machine's is dropped);
4. deployed: the site's version in use, to this host only (`aifactory deploy --limit HOST`);
5. gated: the health gate on it (it admits the host in Slurm when it passes);
6. resumed: Slurm's drain by this replace lifted, the front door's server up again; the journal moves
   to `history/<run>.json` and `replaced.json` keeps the host's replacements (the audit's CM-8).

Every step is recorded in the operator log (aifactory.lifecycle.records: the audit's CM-3). The
orchestration knows the site only through the seams below and those of aifactory.lifecycle.seams;
aifactory.lifecycle.replace_parts holds the real parts, the edge (aifactory/cli/replace.py) chooses
them (the lab's provisioning or a real site's).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

from aifactory.durable import atomic_write
from aifactory.errors import Location, Problem, ReplaceError, ReplaceFailed, StateError
from aifactory.lifecycle import records
from aifactory.lifecycle.journal import VersionRef, now
from aifactory.lifecycle.records import ChangeLog
from aifactory.lifecycle.seams import FrontDoor, HealthGate, SlurmDrain, StepOutcome
from aifactory.lifecycle.upgrade import DRAIN_REASON, REQUEUE_GRACE_S
from aifactory.progress import SILENT, Progress
from aifactory.state import SiteState
from aifactory.trust.issuing.known_hosts import FINGERPRINT, key_fingerprint

SCHEMA = "aifactory.replace-journal/v1"
JOURNAL, REPLACED = "journal.json", "replaced.json"
Phase = Literal["pending", "drained", "provisioned", "key-learned", "deployed", "gated", "resumed"]
PHASES: tuple[Phase, ...] = get_args(Phase)
ADMIN = "--host-key-fingerprint (the admin, from the machine's console)"


class HostProbe(Protocol):
    def answers(self, host: str) -> bool:
        """Whether the host answers SSH with the host key the site knows (a dead host does not)."""


class BlankMachine(Protocol):
    """How a new machine comes up in the host's place after its BMC booted it into the installer."""

    @property
    def proves_host_key(self) -> bool:
        """Whether `bring_up` returns the new machine's public host key from a channel the site
        trusts (a provisioning system that made the key); else the admin must give the fingerprint."""

    def bring_up(self, host: str) -> str | None:
        """Bring the blank machine up (or wait for the site's installer to); its public host key when
        the provisioning knows it, else None."""


@dataclass(frozen=True)
class Provisioned:
    """What provisioning says of the new machine."""

    host_key: str | None  # its public key as the provisioning made it ("ssh-ed25519 AAAA..."), or None
    proven_by: str | None  # where that record lives (for the log and the admin)
    system: Mapping[str, Any] = field(default_factory=dict)  # the BMC's identity of it (uuid, serial)


class Provisioner(Protocol):
    @property
    def proves_host_key(self) -> bool:
        """Whether `provision` returns a host key proven by the provisioning channel."""

    def provision(self, host: str) -> Provisioned:
        """Boot the new machine through its BMC (where the plan gives one) into the site's installer
        and bring it up blank. Safe to repeat: a second time installs it blank again."""


class HostKeys(Protocol):
    def offered(self, host: str) -> str:
        """The ed25519 host key the host shows now, over the network (not yet trusted: checked against
        the proven fingerprint before anything keeps it); waits for a machine still booting."""

    def trusted(self, host: str) -> list[str]:
        """The keys the deploy's known_hosts trusts for the host now."""

    def trust_only(self, host: str, key: str, *, note: str) -> None:
        """Make `key` the one key the deploy's known_hosts trusts for the host (others dropped)."""


class HostDeploy(Protocol):
    def deploy(self, host: str, version: VersionRef) -> StepOutcome:
        """The site's version in use, every role, to this host only."""


@dataclass(frozen=True)
class ReplaceParts:
    """The site's parts the replacement acts through, chosen by the edge."""

    probe: HostProbe
    slurm: SlurmDrain
    door: FrontDoor
    provisioner: Provisioner
    keys: HostKeys
    deployer: HostDeploy
    gate: HealthGate  # admits the host in Slurm when it passes
    log: ChangeLog
    progress: Progress = SILENT


@dataclass(frozen=True)
class ReplaceRequest:
    site: str
    host: str
    version: VersionRef  # the site's version in use: what the new machine gets
    fingerprint: str | None = None  # --host-key-fingerprint, as the admin read it (SHA256:...)
    drain_timeout_s: float = 3600.0


@dataclass
class ReplaceJournal:
    site: str
    host: str
    version: VersionRef
    started: str
    phase: Phase = "pending"
    reachable: bool | None = None
    requeued: list[str] = field(default_factory=list)
    system: dict[str, Any] = field(default_factory=dict)
    provisioned_key: str | None = None  # the public key the provisioning record gave
    proven_by: str | None = None
    old_keys: list[str] = field(default_factory=list)  # fingerprints known_hosts trusted before
    host_key: str | None = None  # the fingerprint learned
    deploy: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)

    @property
    def run(self) -> str:
        return f"{self.started.replace(':', '')}-replace-{self.host}"

    @property
    def change(self) -> records.Change:
        v = self.version
        return records.Change("replace", self.run, v.version, v.digest, v.version, v.digest)

    def reached(self, phase: Phase) -> bool:
        return PHASES.index(self.phase) >= PHASES.index(phase)

    def as_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReplaceJournal:
        if data.get("schema") != SCHEMA:
            raise ValueError(f"schema {data.get('schema')!r}, expected {SCHEMA}")
        body = {k: v for k, v in data.items() if k != "schema"}
        if body.get("phase") not in PHASES:
            raise ValueError(f"phase {body.get('phase')!r}")
        return cls(**{**body, "version": VersionRef(**body["version"])})


@dataclass(frozen=True)
class ReplaceStore:
    """`<state>/replace/`: the replacement in progress, finished ones in history/, and every host's
    replacements (replaced.json: what the audit's inventory lists)."""

    state: SiteState

    @property
    def folder(self) -> Path:
        return self.state.subdir("replace")

    @property
    def path(self) -> Path:
        return self.folder / JOURNAL

    def load(self) -> ReplaceJournal | None:
        if not self.path.is_file():
            return None
        try:
            return ReplaceJournal.from_dict(json.loads(self.path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StateError(
                f"the replacement journal cannot be read: {exc}",
                code="replace-journal",
                location=Location(file=str(self.path)),
                hint="it says which steps are done: restore it from backup rather than delete it",
            ) from None

    def begin(self, request: ReplaceRequest) -> tuple[ReplaceJournal, bool]:
        """The journal of this replacement, and whether it resumes one in progress (the same host)."""
        journal = self.load()
        if journal is not None:
            if journal.host != request.host:
                raise ReplaceError(
                    f"the replacement of {journal.host} is in progress (run {journal.run}); this one is of "
                    f"{request.host}",
                    code="replace-in-progress",
                    location=Location(file=str(self.path)),
                    hint=f"finish it first: aifactory replace SITE {journal.host}",
                )
            return journal, True
        journal = ReplaceJournal(request.site, request.host, request.version, started=now())
        self.save(journal)
        return journal, False

    def save(self, journal: ReplaceJournal) -> None:
        data = json.dumps(journal.as_dict(), indent=1, sort_keys=True) + "\n"
        atomic_write(self.path, data.encode(), mode=0o600)

    def replaced(self) -> dict[str, list[dict[str, Any]]]:
        """host -> its replacements, oldest first: run, finished, host_key, old_keys, system."""
        path = self.folder / REPLACED
        if not path.is_file():
            return {}
        try:
            hosts = json.loads(path.read_text()).get("hosts", {})
        except (OSError, ValueError, AttributeError) as exc:
            raise StateError(f"{path} cannot be read: {exc}", location=Location(file=str(path))) from None
        return {str(h): list(v) for h, v in hosts.items()} if isinstance(hosts, dict) else {}

    def close(self, journal: ReplaceJournal) -> Path:
        """Add the replacement to replaced.json, then move the journal into history/ (nothing in
        progress). Repeated after a kill between the two, the replacement is not listed twice."""
        hosts = self.replaced()
        entry = {
            "run": journal.run,
            "finished": now(),
            "host_key": journal.host_key,
            "old_keys": journal.old_keys,
            "system": journal.system,
        }
        done = [e for e in hosts.get(journal.host, []) if e.get("run") != journal.run]
        hosts[journal.host] = [*done, entry]
        body = {"site": self.state.site, "hosts": dict(sorted(hosts.items()))}
        atomic_write(
            self.folder / REPLACED, (json.dumps(body, indent=1, sort_keys=True) + "\n").encode(), mode=0o600
        )
        ended = self.folder / "history" / f"{journal.run}.json"
        ended.parent.mkdir(mode=0o700, exist_ok=True)
        self.path.replace(ended)
        return ended


def check_fingerprint(text: str) -> str:
    """An admin's `--host-key-fingerprint`: `SHA256:` and the unpadded base64 `ssh-keygen -l` prints."""
    value = text.strip()
    if not FINGERPRINT.fullmatch(value):
        raise ReplaceError(
            f"--host-key-fingerprint {value[:80]!r} is not an SHA256 fingerprint of an ed25519 key",
            code="replace-fingerprint-format",
            hint="give it as `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` prints it on the new "
            "machine's console: SHA256:<43 characters>",
        )
    return value


def require_proof(request: ReplaceRequest, parts: ReplaceParts) -> None:
    """Fail closed before anything changes when no channel will prove the new machine's key."""
    if request.fingerprint is None and not parts.provisioner.proves_host_key:
        raise ReplaceError(
            f"nothing would prove the host key of the new {request.host}: this site's provisioning does "
            "not record it, and no --host-key-fingerprint was given (a key is never trusted on first use)",
            code="replace-no-host-key-proof",
            hint="read the fingerprint on the new machine's console (through its BMC: `ssh-keygen -lf "
            "/etc/ssh/ssh_host_ed25519_key.pub`) and give it with --host-key-fingerprint",
        )


@dataclass
class ReplaceResult:
    journal: ReplaceJournal
    resumed: bool

    def as_dict(self) -> dict[str, Any]:
        j = self.journal
        return {
            "site": j.site,
            "host": j.host,
            "run": j.run,
            "resumed": self.resumed,
            "status": "done",
            "version": j.version.version,
            "reachable": j.reachable,
            "requeued": j.requeued,
            "system": j.system,
            "host_key": j.host_key,
            "old_host_keys": j.old_keys,
            "host_key_proven_by": j.proven_by,
            "deploy": j.deploy,
            "gate": j.gate,
        }


def steps(host: str) -> list[str]:
    """What a replacement does, in order (what `--dry-run` shows)."""
    return [
        f"drain {host} in Slurm and at the front door (unreachable: counts as drained, recorded)",
        f"provision a new machine for {host} through its BMC (Redfish), blank, same name and addresses",
        "learn its host key only if it matches the proven fingerprint; known_hosts trusts it alone",
        f"deploy the site's version in use to {host} only",
        f"health gate of {host} (admits it in Slurm)",
        f"resume {host} in Slurm and at the front door; record the replacement (CM-8, CM-3)",
    ]


def run_replace(request: ReplaceRequest, store: ReplaceStore, parts: ReplaceParts) -> ReplaceResult:
    """Run (or resume) the replacement; a failed step raises and leaves it open for a re-run."""
    pending = store.load()
    if pending is None or pending.host != request.host or not pending.reached("key-learned"):
        require_proof(request, parts)  # once the key is learned, a re-run needs no proof again
    journal, resumed = store.begin(request)
    host, change, progress = request.host, journal.change, parts.progress
    if journal.reachable is None:  # asked once: a re-run must not mistake the new machine for the old
        journal.reachable = parts.probe.answers(host)
        store.save(journal)
        records.replace_started(parts.log, change, host=host, reachable=journal.reachable)
    if not journal.reached("drained"):
        progress.step(f"drain {host}" + ("" if journal.reachable else " (unreachable: counts as drained)"))
        _drain(journal, parts, request.drain_timeout_s)
        journal.phase = "drained"
        store.save(journal)
    if not journal.reached("provisioned"):
        progress.step(f"provision a new machine for {host}")
        made = parts.provisioner.provision(host)
        journal.system, journal.provisioned_key = dict(made.system), made.host_key
        journal.proven_by = made.proven_by if made.host_key else None
        journal.phase = "provisioned"
        store.save(journal)
        records.replace_step(
            parts.log,
            change,
            "provisioned",
            host=host,
            system=journal.system,
            host_key_proven_by=journal.proven_by,
        )
    if not journal.reached("key-learned"):
        progress.step(f"learn the host key of {host} (proven, never on first use)")
        _learn_key(journal, request, parts)
        journal.phase = "key-learned"
        store.save(journal)
    if not journal.reached("deployed"):
        journal.version = request.version  # the version in use now (a bundle imported meanwhile)
        progress.step(f"deploy {journal.version.version} to {host}")
        deployed = parts.deployer.deploy(host, journal.version)
        journal.deploy = dict(deployed.detail)
        _stop_unless(deployed, parts, change, step="deploy", host=host)
        journal.phase = "deployed"
        store.save(journal)
    if not journal.reached("gated"):
        progress.step(f"health gate of {host}")
        gated = parts.gate.check([host])
        journal.gate = dict(gated.detail)
        _stop_unless(gated, parts, change, step="health-gate", host=host)
        journal.phase = "gated"
        store.save(journal)
    if not journal.reached("resumed"):
        progress.step(f"resume {host}")
        parts.slurm.resume([host])
        parts.door.enable([host])
        journal.phase = "resumed"
        store.save(journal)
        records.replace_finished(
            parts.log, change, host=host, host_key=journal.host_key or "", system=journal.system
        )
    store.close(journal)  # last: until it is closed, a re-run finishes this one rather than begin anew
    return ReplaceResult(journal, resumed)


def _drain(journal: ReplaceJournal, parts: ReplaceParts, timeout_s: float) -> None:
    host, change = journal.host, journal.change
    parts.slurm.drain([host], reason=f"{DRAIN_REASON} replace: {host}")
    # A dead host runs nothing: the jobs Slurm still lists there are requeued at once.
    running = parts.slurm.wait_for_jobs([host], timeout_s=timeout_s if journal.reachable else 0.0)
    if running:
        parts.slurm.requeue(running)
        records.jobs_requeued(parts.log, change, hosts=[host], jobs=running, drain_timeout_s=timeout_s)
        parts.slurm.wait_for_jobs([host], timeout_s=REQUEUE_GRACE_S)
        journal.requeued = sorted({*journal.requeued, *running})
    parts.door.drain([host])
    records.replace_step(parts.log, change, "drained", host=host, reachable=journal.reachable)


def _learn_key(journal: ReplaceJournal, request: ReplaceRequest, parts: ReplaceParts) -> None:
    host, change = journal.host, journal.change
    expected, proven_by = _proven(journal, request)
    offered = parts.keys.offered(host)
    shown = key_fingerprint(offered)
    if not hmac.compare_digest(shown.encode(), expected.encode()):
        records.replace_step(
            parts.log,
            change,
            "host-key-refused",
            host=host,
            offered=shown,
            expected=expected,
            proven_by=proven_by,
        )
        raise ReplaceError(
            f"{host} shows host key {shown}, not {expected} proven by {proven_by}: refused, known_hosts "
            "unchanged",
            code="replace-host-key-mismatch",
            hint="the machine answering on the host's address is not the one provisioned (or the "
            "fingerprint was misread): check the machine's console through its BMC, then run the same "
            "`aifactory replace` again (with the right --host-key-fingerprint)",
        )
    journal.old_keys = sorted({key_fingerprint(k) for k in parts.keys.trusted(host)} - {shown})
    parts.keys.trust_only(host, offered, note=f"aifactory-replace={journal.run} host={host}")
    journal.host_key, journal.proven_by = shown, proven_by
    records.replace_step(
        parts.log, change, "host-key-learned", host=host, old=journal.old_keys, new=shown, proven_by=proven_by
    )


def _proven(journal: ReplaceJournal, request: ReplaceRequest) -> tuple[str, str]:
    """The fingerprint the new key must have, and what proved it; the admin's and the provisioning
    record's must agree when both are there."""
    recorded = key_fingerprint(journal.provisioned_key) if journal.provisioned_key else None
    given = request.fingerprint
    if given and recorded and not hmac.compare_digest(given.encode(), recorded.encode()):
        raise ReplaceError(
            f"--host-key-fingerprint {given} is not the key {journal.proven_by} gave {journal.host} "
            f"({recorded})",
            code="replace-fingerprint-conflict",
            hint="one of the two is not this machine's: check the console through the BMC",
        )
    if recorded:
        return recorded, str(journal.proven_by)
    if given:
        return given, ADMIN
    raise ReplaceError(  # require_proof stops this before anything changes; a resumed run lands here
        f"nothing proves the host key of the new {journal.host}",
        code="replace-no-host-key-proof",
        hint="give the fingerprint read on its console with --host-key-fingerprint",
    )


def _stop_unless(
    outcome: StepOutcome, parts: ReplaceParts, change: records.Change, *, step: str, host: str
) -> None:
    if outcome.passed:
        return
    reason = "; ".join(outcome.failures)
    records.step_failed(parts.log, change, step=step, hosts=[host], reason=reason)
    where = ", ".join(f"{key}: {value}" for key, value in sorted(outcome.detail.items()) if key != "changed")
    raise ReplaceFailed(
        f"the replacement of {host} stopped: its {step} failed" + (f" (see {where})" if where else ""),
        problems=[Problem("failed-check", line) for line in outcome.failures],
        hint="fix what failed, then run the same `aifactory replace` again: it goes on from there",
    )


def describe(journal: ReplaceJournal | None, host: str) -> dict[str, Any]:
    """The dry run: the steps, and where a replacement in progress stands."""
    data: dict[str, Any] = {"host": host, "status": "dry-run", "steps": steps(host)}
    if journal is not None:
        data |= {"in_progress": {"host": journal.host, "run": journal.run, "phase": journal.phase}}
    return data


def replaced_hosts(state: SiteState, hosts: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """The replacements of these hosts on record (the audit's inventory)."""
    found = ReplaceStore(state).replaced()
    return {h: found[h] for h in hosts if h in found}
