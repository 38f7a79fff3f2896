"""The site's real parts behind the upgrade's and the resize's seams (aifactory.lifecycle.seams):
Slurm through scontrol and squeue on the control host, the front door through HAProxy's runtime API, the new
version through `aifactory deploy --limit`, the health gate of `aifactory health`, the imported
bundles, and the operator log (aifactory.lifecycle.records). Each reaches the hosts through the
site's Connection, which the edge chose; a site without Slurm or without a front door gets parts
that have nothing to do. Tested on the lab
(tests/pipeline/test_upgrade_lab.py); the orchestration's own tests use stand-ins.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aifactory.connection import Connection
from aifactory.deploy import DeployOptions, DeployResult, deploy_site
from aifactory.errors import FrontDoorError, PrerequisiteError
from aifactory.frontdoor.runtime_api import RuntimeApi
from aifactory.health.gate import health_gate
from aifactory.health.slurm import NodeState, parse_show_node
from aifactory.lifecycle.journal import VersionRef
from aifactory.lifecycle.records import OperatorLog
from aifactory.lifecycle.resize import NewHosts, ResizeParts
from aifactory.lifecycle.rollback import use_version
from aifactory.lifecycle.seams import Rebooter, StepOutcome
from aifactory.lifecycle.upgrade import DRAIN_REASON, UpgradeParts
from aifactory.lifecycle.versions import runtime_id_of
from aifactory.plan import PlannedSite
from aifactory.plan.model import SitePlan
from aifactory.progress import SILENT, Progress
from aifactory.runtime.health.model import Level
from aifactory.scheduler.slurm import SlurmClient, checked, client_for
from aifactory.scheduler.topology import slurm_topology
from aifactory.state import SiteState

# The front_door role's defaults (playbooks/roles/front_door/defaults/main.yml).
ADMIN_SOCKET = Path("/run/haproxy/admin.sock")
BACKEND = "aifactory_serve"
POLL_S = 2.0
# Job states that hold a node: squeue's RUNNING, COMPLETING, CONFIGURING, SUSPENDED.
_HOLDING = "R,CG,CF,S"


@dataclass(frozen=True)
class ScontrolDrain:
    """Slurm on the control host: drain with the upgrade's reason, wait for jobs, requeue, resume."""

    client: SlurmClient
    poll_s: float = POLL_S
    sleep: Callable[[float], None] = time.sleep

    def drain(self, hosts: Sequence[str], *, reason: str) -> None:
        for node in self._nodes(hosts).values():
            if node.drained and not node.reason.startswith(DRAIN_REASON):
                continue  # an operator's (or the health gate's) drain and reason stand
            self._update(node.name, "state=drain", f"reason={reason}")

    def wait_for_jobs(self, hosts: Sequence[str], *, timeout_s: float) -> list[str]:
        nodes = sorted(self._nodes(hosts))
        if not nodes:
            return []
        deadline = time.monotonic() + timeout_s
        while True:
            argv = [
                "squeue",
                "--noheader",
                "--format=%A",
                f"--nodelist={','.join(nodes)}",
                f"--states={_HOLDING}",
            ]
            running = checked(self.client.run(argv), "squeue", self.client.where).split()
            if not running or time.monotonic() >= deadline:
                return sorted(set(running))
            self.sleep(self.poll_s)

    def requeue(self, job_ids: Sequence[str]) -> None:
        """Requeue the jobs (they resume from their last checkpoint when Slurm starts them again).
        `aifactory train` submits with --no-requeue, so that a node's failure ends a job instead of
        restarting it unseen; a drain is deliberate, so each job is first made requeueable (Slurm
        refuses to requeue a job submitted with --no-requeue)."""
        if job_ids:
            for job_id in job_ids:
                argv = ["scontrol", "update", f"jobid={job_id}", "requeue=1"]
                checked(self.client.run(argv), "scontrol update requeue=1", self.client.where)
            argv = ["scontrol", "requeue", ",".join(job_ids)]
            checked(self.client.run(argv), "scontrol requeue", self.client.where)

    def resume(self, hosts: Sequence[str]) -> None:
        for node in self._nodes(hosts).values():
            if node.drained and node.reason.startswith(DRAIN_REASON):
                self._update(node.name, "state=resume")

    def _nodes(self, hosts: Sequence[str]) -> dict[str, NodeState]:
        """The hosts that are Slurm nodes, as Slurm sees them now (the controller's host is none)."""
        text = checked(
            self.client.run(["scontrol", "--oneliner", "show", "node"]),
            "scontrol show node",
            self.client.where,
        )
        return {name: node for name, node in parse_show_node(text).items() if name in hosts}

    def _update(self, name: str, *settings: str) -> None:
        argv = ["scontrol", "update", f"nodename={name}", *settings]
        checked(self.client.run(argv), " ".join(argv[:3]), self.client.where)


@dataclass(frozen=True)
class NoSlurm:
    """A site without Slurm: nothing to drain."""

    def drain(self, hosts: Sequence[str], *, reason: str) -> None:
        return None

    def wait_for_jobs(self, hosts: Sequence[str], *, timeout_s: float) -> list[str]:
        return []

    def requeue(self, job_ids: Sequence[str]) -> None:
        return None

    def resume(self, hosts: Sequence[str]) -> None:
        return None


@dataclass(frozen=True)
class ControlHostChannel:
    """HAProxy's admin socket on the control host, reached by running the relay there."""

    connection: Connection
    socket_path: Path = ADMIN_SOCKET
    timeout_s: float = 30.0

    def send(self, line: str) -> str:
        argv = [sys.executable, "-m", "aifactory.frontdoor.relay", str(self.socket_path), line]
        done = self.connection.run_on_control_host(argv, timeout=self.timeout_s)
        if done.returncode != 0:
            why = (done.stderr or done.stdout).strip().splitlines()
            raise FrontDoorError(
                f"HAProxy's runtime API on {self.connection.description}: {why[-1] if why else 'no answer'}",
                hint="is the front door running (the front_door role's haproxy service)?",
            )
        return done.stdout


@dataclass(frozen=True)
class HaproxyDoor:
    """The front door's backend: drain a server and wait for its connections to end; put it back
    and wait for HAProxy's health checks to find it up. Hosts not behind the door are left alone."""

    api: RuntimeApi
    servers: frozenset[str]
    backend: str = BACKEND
    drain_timeout_s: float = 30.0  # then the restart's last call (aifactory.runtime.http) ends them
    up_timeout_s: float = 120.0
    # Up this long before the next batch drains the others: a few of the front_door role's health
    # check intervals (front_door_check_interval_ms, 2 s).
    settle_s: float = 6.0
    poll_s: float = POLL_S
    sleep: Callable[[float], None] = time.sleep

    def drain(self, hosts: Sequence[str]) -> None:
        chosen = [h for h in hosts if h in self.servers]
        for host in chosen:
            self.api.drain(self.backend, host)
        # Connections a host holds end when their clients close them or the server's idle timeout
        # does; past the timeout the restart's graceful stop ends them, each after a last answer.
        self._until(
            lambda: all(self.api.sessions(self.backend).get(h, 0) == 0 for h in chosen), self.drain_timeout_s
        )

    def enable(self, hosts: Sequence[str]) -> None:
        chosen = [h for h in hosts if h in self.servers]
        for host in chosen:
            self.api.ready(self.backend, host)
        if chosen and not self._until(self._steadily_up(chosen), self.up_timeout_s):
            raise FrontDoorError(
                f"the front door's health checks did not find {', '.join(chosen)} up within "
                f"{self.up_timeout_s:.0f} s",
                hint="see `show servers state` on the front door; run the same command again once they are "
                "up",
            )

    def _steadily_up(self, hosts: Sequence[str]) -> Callable[[], bool]:
        """Up for `settle_s` on end: a server state read right after `ready` can be the verdict of a
        check made before a restart, and the next batch drains the others on the strength of it."""
        since: list[float] = []

        def up() -> bool:
            states = {s.name: s for s in self.api.servers(self.backend)}
            if not all(h in states and states[h].takes_new_connections for h in hosts):
                since.clear()
                return False
            since[:] = since or [time.monotonic()]
            return time.monotonic() - since[0] >= self.settle_s

        return up

    def _until(self, done: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() >= deadline:
                return False
            self.sleep(self.poll_s)
        return True


@dataclass(frozen=True)
class NoFrontDoor:
    """A site without a front door: clients reach the nodes themselves."""

    def drain(self, hosts: Sequence[str]) -> None:
        return None

    def enable(self, hosts: Sequence[str]) -> None:
        return None


@dataclass(frozen=True)
class DeployInstaller:
    """`aifactory deploy --limit` of the batch. The imported bundle's version is a full deploy; the
    previous version, still installed beside it, only has `current` switched back to it (the
    runtime role's run tasks, told the version and the digest its install record holds)."""

    planned: PlannedSite
    connection: Connection
    imported: VersionRef
    extra_vars: Mapping[str, Any] = field(default_factory=dict)
    # where the imported versions' manifests are read (the runtime_id a switch back looks for)
    state: SiteState | None = None

    def install(self, hosts: Sequence[str], version: VersionRef) -> StepOutcome:
        limit = ",".join(hosts)
        if version == self.imported:
            options = DeployOptions(limit=limit, extra_vars=dict(self.extra_vars))
        else:
            # A version that kept an installed runtime built from the same wheels has no folder of its
            # own: the role finds that runtime by the version's runtime_id.
            runtime_id = runtime_id_of(self.state, version) if self.state is not None else ""
            switch = {
                "runtime_version": version.version,
                "runtime_bundle_digest": version.digest,
                "runtime_id": runtime_id,
            }
            options = DeployOptions(
                limit=limit, tags=("runtime_run",), extra_vars={**self.extra_vars, **switch}
            )
        result = deploy_site(self.planned, connection=self.connection, options=options)
        return _deploy_outcome(result, limit)


def _deploy_outcome(result: DeployResult, what: str) -> StepOutcome:
    """A deploy's failed hosts, one line each, and where its event log is."""
    rows = {h["host"]: h for h in result.hosts}
    failures = tuple(
        f"{host}: deploy {rows[host]['status']}: {rows[host]['message'][:200]}"
        for host in result.failed_hosts
    )
    if not failures and result.status != "successful":
        failures = (f"{what}: deploy {result.status} (exit {result.rc})",)
    changed = {h["host"]: int(h["changed"]) for h in result.hosts}
    return StepOutcome(failures, {"event_log": str(result.event_log), "changed": changed})


@dataclass(frozen=True)
class PlanDeploy:
    """A resize's deploy: `aifactory deploy` of the new plan to every host of it (the added hosts get
    every role; on the others only what the host list changes is rewritten)."""

    planned: PlannedSite
    connection: Connection
    extra_vars: Mapping[str, Any] = field(default_factory=dict)

    def deploy(self) -> StepOutcome:
        options = DeployOptions(extra_vars=dict(self.extra_vars))
        result = deploy_site(self.planned, connection=self.connection, options=options)
        return _deploy_outcome(result, "the site")


@dataclass(frozen=True)
class ProvisionedHosts:
    """A real site's added hosts were provisioned before the resize (`aifactory provision`, or by
    hand): nothing to make here; the deploy says which it cannot reach."""

    def ready(self, hosts: Sequence[str]) -> None:
        return None


@dataclass(frozen=True)
class SiteHealthGate:
    """The health gate of `aifactory health --no-slurm` on the batch (the upgrade keeps Slurm's
    state of its hosts itself); its signed evidence goes to the state folder as ever."""

    planned: PlannedSite
    connection: Connection
    state: SiteState
    level: Level = "quick"
    # A resize's gate acts on Slurm as `aifactory health` does: it admits the added hosts that pass.
    admit: bool = False

    def check(self, hosts: Sequence[str]) -> StepOutcome:
        gate = health_gate(
            self.planned,
            connection=self.connection,
            state=self.state,
            level=self.level,
            host_names=list(hosts),
            slurm=self.admit,
        )
        return StepOutcome(tuple(gate.failures()), {"evidence": str(gate.evidence.report)})


@dataclass(frozen=True)
class ImportedBundles:
    """The bundles imported on the control host: an abort makes the version it went back to the one
    in use (aifactory.lifecycle.rollback.use_version)."""

    state: SiteState

    def use(self, version: VersionRef) -> None:
        use_version(self.state, version)


def parts_for_site(
    planned: PlannedSite,
    *,
    connection: Connection,
    state: SiteState,
    imported: VersionRef,
    progress: Progress = SILENT,
    extra_vars: Mapping[str, Any] | None = None,
    rebooter: Rebooter | None = None,
) -> UpgradeParts:
    """The real parts of this site, reached through `connection` (the edge's choice); `rebooter`:
    the BMCs' (aifactory.lifecycle.bmc_reboot), for a change that needs a reboot."""
    plan = planned.plan
    return UpgradeParts(
        slurm=ScontrolDrain(client_for(connection)) if slurm_topology(plan) is not None else NoSlurm(),
        door=front_door(plan, connection),
        installer=DeployInstaller(planned, connection, imported, dict(extra_vars or {}), state),
        gate=SiteHealthGate(planned, connection, state),
        log=OperatorLog(state),
        bundle=ImportedBundles(state),
        progress=progress,
        rebooter=rebooter,
    )


def resize_parts(
    planned: PlannedSite,
    *,
    old: SitePlan,
    connection: Connection,
    state: SiteState,
    new_hosts: NewHosts,
    progress: Progress = SILENT,
    extra_vars: Mapping[str, Any] | None = None,
) -> ResizeParts:
    """The real parts of a resize from `old`; `new_hosts`, the edge's choice (the lab makes its
    namespaces, a real site's were provisioned). The front door drains servers of either plan."""
    plan = planned.plan
    door = front_door(plan, connection)
    if isinstance(door, HaproxyDoor) and old.front_door is not None:
        door = replace(door, servers=door.servers | {b.name for b in old.front_door.backends})
    return ResizeParts(
        slurm=ScontrolDrain(client_for(connection)) if slurm_topology(old) is not None else NoSlurm(),
        door=door,
        hosts=new_hosts,
        deployer=PlanDeploy(planned, connection, dict(extra_vars or {})),
        gate=SiteHealthGate(planned, connection, state, admit=True),
        log=OperatorLog(state),
        progress=progress,
    )


def front_door(plan: SitePlan, connection: Connection) -> HaproxyDoor | NoFrontDoor:
    door = plan.front_door
    if door is None:
        return NoFrontDoor()
    if door.host != plan.control_host:
        raise PrerequisiteError(
            f"the front door runs on {door.host}, not on the control host: the upgrade reaches HAProxy's "
            "runtime API on the control host only",
            code="upgrade-front-door-elsewhere",
            hint="put the front door on the control host (front_door: {}) for upgrades",
        )
    api = RuntimeApi(ADMIN_SOCKET, channel=ControlHostChannel(connection))
    return HaproxyDoor(api, frozenset(b.name for b in door.backends))
