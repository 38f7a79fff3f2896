"""The doors the upgrade goes through, one small protocol per step. The orchestration
(aifactory.lifecycle.upgrade) knows only these; the edge hands it the site's real parts
(aifactory.lifecycle.site_parts: scontrol, HAProxy's runtime API, ansible, the health gate, the
imported bundles; its records go to aifactory.lifecycle.records' ChangeLog), and tests hand it
stand-ins to kill and resume it at every phase.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aifactory.lifecycle.journal import VersionRef


class SlurmDrain(Protocol):
    def drain(self, hosts: Sequence[str], *, reason: str) -> None:
        """No new jobs on these hosts (a host an operator drained keeps its own reason)."""

    def wait_for_jobs(self, hosts: Sequence[str], *, timeout_s: float) -> list[str]:
        """Wait until no job runs on these hosts, at most `timeout_s`; the ids of jobs still running."""

    def requeue(self, job_ids: Sequence[str]) -> None:
        """Put these jobs back in the queue (they resume from their checkpoint when they start again)."""

    def resume(self, hosts: Sequence[str]) -> None:
        """Jobs again on the hosts the upgrade drained (never on one an operator drained)."""


class FrontDoor(Protocol):
    def drain(self, hosts: Sequence[str]) -> None:
        """No new connection to these hosts; return once those they hold have ended (or a timeout)."""

    def enable(self, hosts: Sequence[str]) -> None:
        """New connections again; return once the front door's health checks find them up."""


@dataclass(frozen=True)
class StepOutcome:
    """What a deploy or a health gate found: the failed checks, one line each ("host: check ...")."""

    failures: tuple[str, ...] = ()
    detail: dict[str, Any] = field(default_factory=dict)  # where to look: event log, evidence

    @property
    def passed(self) -> bool:
        return not self.failures


class Installer(Protocol):
    def install(self, hosts: Sequence[str], version: VersionRef) -> StepOutcome:
        """Make `version` the one these hosts run: installed beside the others, `current` switched."""


class HealthGate(Protocol):
    def check(self, hosts: Sequence[str]) -> StepOutcome:
        """The health gate on these hosts: passed, or the checks that failed."""


class Rebooter(Protocol):
    """A restart of hosts through their BMCs, for a change that needs one (aifactory.lifecycle.reboot)."""

    def boot_ids(self, hosts: Sequence[str]) -> dict[str, str]:
        """Each host's boot id as it answers now (read over SSH before the reset): the wait tells a
        host that restarted from one that never went down by it."""

    def reset(self, hosts: Sequence[str]) -> None:
        """Ask each host's BMC for a graceful restart (ComputerSystem.Reset GracefulRestart)."""

    def wait_back(self, boot_ids: Mapping[str, str | None]) -> StepOutcome:
        """Wait until each host restarted (force-restarted, ForceRestart, when the graceful restart
        did not come within its timeout) and answers SSH with its known host key: passed, or a
        line per host that did not come back."""


class BundleInUse(Protocol):
    def use(self, version: VersionRef) -> None:
        """Make `version`, imported on the control host before, the site's bundle in use (what a plain
        `aifactory deploy` installs): the version an abort leaves the hosts on."""
