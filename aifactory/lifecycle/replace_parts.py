"""The site's real parts behind a replacement's seams (aifactory.lifecycle.replace): SSH and
ssh-keyscan from the control host (the site's Connection), the known_hosts file the deploy checks hosts
with, the BMC's Redfish service (aifactory.provision.redfish), `aifactory deploy --limit HOST`, and
Slurm, the front door and the health gate as the upgrade and the resize reach them
(aifactory.lifecycle.site_parts). How the blank machine comes up is the edge's choice: a real site's
installer (`InstallerBoot`: the BMC boots it from the network, the admin proves its key) or the lab's
(aifactory.lab.machines.LabBlankHost). Tested on the lab (tests/pipeline/test_replace_lab.py); the
orchestration's own tests use stand-ins.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aifactory.connection import Connection
from aifactory.errors import ProvisionError, ReplaceError
from aifactory.lifecycle.bmc_reboot import BmcAccess
from aifactory.lifecycle.journal import VersionRef
from aifactory.lifecycle.records import OperatorLog
from aifactory.lifecycle.replace import BlankMachine, Provisioned, ReplaceParts
from aifactory.lifecycle.seams import StepOutcome
from aifactory.lifecycle.site_parts import (
    DeployInstaller,
    NoSlurm,
    ScontrolDrain,
    SiteHealthGate,
    front_door,
)
from aifactory.plan import PlannedSite
from aifactory.plan.model import SitePlan
from aifactory.progress import SILENT, Progress
from aifactory.provision.identity import read_identity
from aifactory.provision.redfish import POWER_ON_STATES, BmcCredentials
from aifactory.scheduler.slurm import client_for
from aifactory.scheduler.topology import slurm_topology
from aifactory.spec.grammar import printable
from aifactory.state import SiteState
from aifactory.trust.issuing import known_hosts

BOOT_TARGET = "Pxe"  # the site's installer, booted once; the machine boots from its disk after


def _address(plan: SitePlan, host: str) -> str:
    return plan.host(host).management_address


@dataclass(frozen=True)
class SshProbe:
    """Whether a host answers the site's SSH with its known host key (Connection.ssh_argv: an unknown
    or changed key is refused, never learned)."""

    plan: SitePlan
    connection: Connection
    timeout_s: float = 30.0

    def answers(self, host: str) -> bool:
        argv = self.connection.ssh_argv(_address(self.plan, host), ["true"])
        # The host itself must answer, not a master connection an ssh config keeps (ControlPersist),
        # which can outlive a dead machine and hang on it: the first -o given wins.
        argv[1:1] = ["-o", "ControlPath=none"]
        try:
            return self.connection.run_on_control_host(argv, timeout=self.timeout_s).returncode == 0
        except subprocess.TimeoutExpired:
            return False


@dataclass(frozen=True)
class KnownHostsKeys:
    """The new machine's key as ssh-keyscan reads it from the control host (checked by the
    orchestration against the proven fingerprint before anything keeps it), and the known_hosts file
    the deploy checks hosts with, where it then becomes the host's one key."""

    plan: SitePlan
    connection: Connection
    path: Path
    timeout_s: float = 1800.0  # an installer takes its time: the key is read once sshd answers
    poll_s: float = 10.0
    sleep: Callable[[float], None] = time.sleep

    def names(self, host: str) -> list[str]:
        return list(dict.fromkeys([host, _address(self.plan, host)]))

    def offered(self, host: str) -> str:
        address = _address(self.plan, host)
        deadline = time.monotonic() + self.timeout_s
        while True:
            keys = self._scan(address)
            if len(keys) > 1:
                raise ReplaceError(
                    f"{host} ({address}) showed {len(keys)} different ed25519 host keys",
                    code="replace-host-key-ambiguous",
                    hint="more than one machine answers on the host's address: find the other one",
                )
            if keys:
                return keys[0]
            if time.monotonic() >= deadline:
                raise ReplaceError(
                    f"{host} ({address}) showed no SSH host key within {self.timeout_s:.0f} s",
                    code="replace-host-silent",
                    hint="watch the installer on the machine's console through its BMC; run the same "
                    "`aifactory replace` again once sshd answers",
                )
            self.sleep(self.poll_s)

    def _scan(self, address: str) -> list[str]:
        argv = ["ssh-keyscan", "-T", "10", "-t", "ed25519", address]
        try:
            done = self.connection.run_on_control_host(argv, timeout=30.0)
        except subprocess.TimeoutExpired:
            return []
        found = []
        for line in done.stdout.splitlines():
            fields = line.split()
            if len(fields) >= 3 and not line.startswith("#") and fields[1] == "ssh-ed25519":
                found.append(known_hosts.check_key(f"{fields[1]} {fields[2]}", host=address))
        return sorted(set(found))

    def trusted(self, host: str) -> list[str]:
        entries = known_hosts.read(self.path) if self.path.exists() else []
        return known_hosts.host_keys(entries, self.names(host))

    def trust_only(self, host: str, key: str, *, note: str) -> None:
        known_hosts.trust_only(self.path, host=host, names=self.names(host), key=key, note=note)
        self._close_master(_address(self.plan, host))

    def _close_master(self, address: str) -> None:
        """A master connection the ssh config keeps open (ControlPersist) to the address went to the
        dead machine: closed, so the deploy's next connection checks the new key."""
        ssh = self.connection.ansible_cfg.get("ssh_connection", {})
        user = str(self.connection.ansible_cfg.get("defaults", {}).get("remote_user", "root"))
        argv = ["ssh", *shlex.split(ssh.get("ssh_common_args", "")), "-O", "exit", "-l", user, address]
        try:
            self.connection.run_on_control_host(argv, timeout=30.0)
        except subprocess.TimeoutExpired:
            pass  # no master (the usual case) answers at once; one that hangs is left to its timeout


@dataclass
class RedfishReinstall:
    """The new machine behind the host's BMC: its identity read (UUID, serial: recorded, the old one
    retired with the journal), booted once from the network into the site's installer."""

    plan: SitePlan
    access: BmcAccess
    credentials: Mapping[str, BmcCredentials]

    def reinstall(self, host: str) -> dict[str, Any]:
        planned = self.plan.host(host)
        if planned.bmc is None or host not in self.credentials:
            raise ProvisionError(
                f"{host} has no BMC in the plan (or no credential for it) to provision it through",
                code="replace-no-bmc",
                hint="give the pool a bmc: in the site spec, or install the machine by hand and replace "
                "it on a site whose provisioning brings it up",
            )
        client = self.access.client(
            host, planned.bmc.address, self.credentials[host], planned.bmc.credentials
        )
        system = client.find_system()
        identity = read_identity(client, system)
        client.set_boot_override(system, target=BOOT_TARGET, enabled="Once")
        reset = "ForceRestart" if system.get("PowerState") in POWER_ON_STATES else "On"
        client.reset(system, reset)
        # What the BMC reports is its text, not ours: escaped and bounded before logs and terminals.
        return {
            "uuid": printable(identity.uuid[:64]),
            "serial": printable(identity.serial[:64]) if identity.serial else None,
            "boot": f"{BOOT_TARGET} once",
            "reset": reset,
        }


@dataclass(frozen=True)
class InstallerBoot:
    """A real site's blank machine: the BMC booted it into the site's installer, which brings it up
    by itself; its key is not known here (the admin reads the fingerprint on its console)."""

    proves_host_key: bool = False

    def bring_up(self, host: str) -> str | None:
        return None


@dataclass(frozen=True)
class Reprovision:
    """Through the BMC where the plan gives the host one, then the blank machine's bring-up."""

    bmc: RedfishReinstall | None
    machine: BlankMachine
    proven_by: str = "the site's provisioning record"  # where `machine`'s key comes from, for the log

    @property
    def proves_host_key(self) -> bool:
        return self.machine.proves_host_key

    def provision(self, host: str) -> Provisioned:
        has_bmc = self.bmc is not None and self.bmc.plan.host(host).bmc is not None
        system = self.bmc.reinstall(host) if self.bmc is not None and has_bmc else {}
        key = self.machine.bring_up(host)
        if key is not None:
            key = known_hosts.check_key(key, host=host)
        return Provisioned(key, f"{self.proven_by} of {host}" if key else None, system)


@dataclass(frozen=True)
class DeployHost:
    """`aifactory deploy --limit HOST` of the version in use (every role: the machine is blank).
    The deploy's fact cache (`<state>/deploy/facts/HOST`, Ansible's jsonfile cache, kept a day)
    describes the dead machine: it is dropped first, so the roles read the new machine's facts."""

    installer: DeployInstaller
    facts: Path

    def deploy(self, host: str, version: VersionRef) -> StepOutcome:
        (self.facts / host).unlink(missing_ok=True)
        return self.installer.install([host], version)


def replace_parts(
    planned: PlannedSite,
    *,
    connection: Connection,
    state: SiteState,
    imported: VersionRef,
    provisioner: Reprovision,
    known: Path,
    progress: Progress = SILENT,
) -> ReplaceParts:
    """The real parts of this site, reached through `connection`; `provisioner` and `known` (the
    known_hosts file the deploy checks hosts with) are the edge's choice."""
    plan = planned.plan
    return ReplaceParts(
        probe=SshProbe(plan, connection),
        slurm=ScontrolDrain(client_for(connection)) if slurm_topology(plan) is not None else NoSlurm(),
        door=front_door(plan, connection),
        provisioner=provisioner,
        keys=KnownHostsKeys(plan, connection, known),
        deployer=DeployHost(DeployInstaller(planned, connection, imported), state.path("deploy", "facts")),
        gate=SiteHealthGate(planned, connection, state, admit=True),
        log=OperatorLog(state),
        progress=progress,
    )
