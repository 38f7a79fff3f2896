"""A site in memory behind the upgrade's seams, for the orchestration's tests.

These stand-ins replace the lab on purpose: the real parts (scontrol, HAProxy's runtime API, ansible,
the health gate) are exercised by the lab test, tests/pipeline/test_upgrade_lab.py, and HAProxy's by
tests/lifecycle/test_site_parts.py. Here what matters is the order of the steps, the journal, and
what a killed run leaves for the next: each action can be made to "die" (Killed, a BaseException
that nothing in the upgrade catches, as nothing runs after SIGKILL) before or after its effect.

The site also checks the rules a real site would break loudly: a host is out of Slurm and the front
door before its version changes, and the front door always has a serving host in service.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aifactory.lifecycle.journal import VersionRef
from aifactory.lifecycle.records import Change, ChangeLog
from aifactory.lifecycle.seams import StepOutcome
from aifactory.lifecycle.upgrade import UpgradeParts

A = VersionRef("2026.12.1", "sha256:" + "a" * 64)
B = VersionRef("2026.12.2", "sha256:" + "b" * 64)


class Killed(BaseException):
    """The upgrade process died here (SIGKILL): nothing after this point runs in that run."""


@dataclass
class FakeSite:
    hosts: list[str]
    serving: set[str]
    runs: dict[str, str] = field(default_factory=dict)  # host -> version `current` points at
    door: dict[str, str] = field(default_factory=dict)  # host -> ready | drain (serving hosts only)
    slurm: dict[str, str] = field(default_factory=dict)  # host -> idle | drain
    jobs: dict[str, list[str]] = field(default_factory=dict)  # host -> running job ids
    stuck_jobs: bool = False  # jobs never finish by themselves (the drain timeout passes)
    failing: dict[str, set[str]] = field(default_factory=dict)  # version -> hosts that fail its gate
    actions: list[str] = field(default_factory=list)  # every action, as "kind host,host"
    broken_rules: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    events: list[Logged] = field(default_factory=list)  # the change's records, as the log got them
    in_use: str = A.version  # the control host's bundle in use (a plain deploy installs it)
    kill_at: int | None = None  # die at this action (0-based count over the site's life)
    kill_after: bool = False  # ... after its effect (else before)
    boots: dict[str, int] = field(default_factory=dict)  # host -> times restarted (its boot id)

    def __post_init__(self) -> None:
        for host in self.hosts:
            self.runs.setdefault(host, A.version)
            self.slurm.setdefault(host, "idle")
            if host in self.serving:
                self.door.setdefault(host, "ready")

    def act(self, kind: str, hosts: Sequence[str], effect: object = None) -> None:
        """Log an action; die before or after it when asked (the effect is applied by the caller
        between `act` and `done`)."""
        self.actions.append(f"{kind} {','.join(hosts)}")
        if self.kill_at == len(self.actions) - 1 and not self.kill_after:
            raise Killed(self.actions[-1])

    def done(self) -> None:
        if self.kill_at == len(self.actions) - 1 and self.kill_after:
            raise Killed(self.actions[-1])

    def parts(self, log: ChangeLog | None = None) -> UpgradeParts:
        """The stand-ins; `log`: where the change's records go (default: kept in `events`)."""
        return UpgradeParts(
            slurm=FakeSlurm(self),
            door=FakeDoor(self),
            installer=FakeInstaller(self),
            gate=FakeGate(self),
            log=log or FakeLog(self),
            bundle=FakeBundle(self),
            rebooter=FakeRebooter(self),
        )

    def in_service(self) -> dict[str, tuple[str, str, str]]:
        """Host -> (version, Slurm state, front door state)."""
        return {h: (self.runs[h], self.slurm[h], self.door.get(h, "-")) for h in self.hosts}


@dataclass
class FakeSlurm:
    site: FakeSite

    def drain(self, hosts: Sequence[str], *, reason: str) -> None:
        self.site.act("slurm-drain", hosts)
        for host in hosts:
            self.site.slurm[host] = "drain"
        self.site.done()

    def wait_for_jobs(self, hosts: Sequence[str], *, timeout_s: float) -> list[str]:
        running = sorted(j for h in hosts for j in self.site.jobs.get(h, []))
        if not self.site.stuck_jobs:
            for host in hosts:
                self.site.jobs.pop(host, None)
            return []
        return running

    def requeue(self, job_ids: Sequence[str]) -> None:
        self.site.act("slurm-requeue", job_ids)
        self.site.requeued += job_ids
        for host, jobs in self.site.jobs.items():
            self.site.jobs[host] = [j for j in jobs if j not in job_ids]
        self.site.done()

    def resume(self, hosts: Sequence[str]) -> None:
        self.site.act("slurm-resume", hosts)
        for host in hosts:
            self.site.slurm[host] = "idle"
        self.site.done()


@dataclass
class FakeDoor:
    site: FakeSite

    def drain(self, hosts: Sequence[str]) -> None:
        self.site.act("door-drain", hosts)
        for host in hosts:
            if host in self.site.door:
                self.site.door[host] = "drain"
        if self.site.serving and not any(state == "ready" for state in self.site.door.values()):
            self.site.broken_rules.append(f"no serving host left at the front door after draining {hosts}")
        self.site.done()

    def enable(self, hosts: Sequence[str]) -> None:
        self.site.act("door-enable", hosts)
        for host in hosts:
            if host in self.site.door:
                self.site.door[host] = "ready"
        self.site.done()


@dataclass
class FakeInstaller:
    site: FakeSite

    def install(self, hosts: Sequence[str], version: VersionRef) -> StepOutcome:
        self.site.act(f"install-{version.version}", hosts)
        for host in hosts:
            if self.site.slurm[host] != "drain" or self.site.door.get(host, "drain") != "drain":
                self.site.broken_rules.append(f"{host} switched to {version.version} while in service")
            self.site.runs[host] = version.version
        self.site.done()
        return StepOutcome()


@dataclass
class FakeGate:
    site: FakeSite

    def check(self, hosts: Sequence[str]) -> StepOutcome:
        self.site.act("gate", hosts)
        failed = [h for h in hosts if h in self.site.failing.get(self.site.runs[h], set())]
        self.site.done()
        return StepOutcome(tuple(f"{h}: drain for allreduce-busbw" for h in failed))


@dataclass(frozen=True)
class Logged:
    """One record of a change, as the operator log would get it."""

    change: Change
    kind: str  # the record's result: started, batch-done, ...
    detail: dict[str, Any]


@dataclass
class FakeLog:
    site: FakeSite

    def write(self, change: Change, result: str, detail: dict[str, Any]) -> None:
        self.site.events.append(Logged(change, result, detail))


@dataclass
class FakeBundle:
    site: FakeSite

    def use(self, version: VersionRef) -> None:
        self.site.act(f"use-{version.version}", [])
        self.site.in_use = version.version
        self.site.done()


@dataclass
class FakeRebooter:
    """The BMCs: a reset restarts the host at once (its boot id moves on)."""

    site: FakeSite

    def boot_ids(self, hosts: Sequence[str]) -> dict[str, str]:
        return {h: f"boot-{self.site.boots.get(h, 0)}" for h in hosts}

    def reset(self, hosts: Sequence[str]) -> None:
        self.site.act("reset", hosts)
        for host in hosts:
            self.site.boots[host] = self.site.boots.get(host, 0) + 1
        self.site.done()

    def wait_back(self, boot_ids: Mapping[str, str | None]) -> StepOutcome:
        hosts = sorted(boot_ids)
        self.site.act("wait-ssh", hosts)
        stuck = [h for h in hosts if boot_ids[h] == f"boot-{self.site.boots.get(h, 0)}"]
        self.site.done()
        return StepOutcome(tuple(f"{h}: not back after the restart" for h in stuck))
