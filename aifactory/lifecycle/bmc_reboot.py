"""The restart of a batch through its BMCs (the Rebooter seam of aifactory.lifecycle.seams), for a
change that needs one (aifactory.lifecycle.reboot).

Each host's BMC is asked for ComputerSystem.Reset GracefulRestart through the project's Redfish
client (aifactory.provision.redfish: basic authentication, TLS checked against the site CA). The host
counts as restarted when it answers SSH with a boot id other than the one read before the reset, or
when its BMC was seen reporting the system Off since (a power cycle: what an emulated BMC shows).
A host not restarted within `graceful_timeout_s` (an OS that ignores the ACPI request, a reset that
never went out because the run was killed before it) gets one ForceRestart. SSH is the site's
(Connection.ssh_argv): the host key is checked against the known one, never learnt, so a host that
comes back with another key does not count as back.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aifactory.connection import Connection
from aifactory.errors import Location, Problem, ProvisionError, SecretError
from aifactory.lifecycle.seams import StepOutcome
from aifactory.netns import NetworkNamespace
from aifactory.plan.model import SitePlan
from aifactory.provision.redfish import BmcCredentials, RedfishClient, TlsSettings
from aifactory.secrets import SecretResolver

GRACEFUL = "GracefulRestart"
FORCED = "ForceRestart"
BOOT_ID = "/proc/sys/kernel/random/boot_id"


@dataclass(frozen=True)
class BmcAccess:
    """How the control host reaches the BMCs' Redfish services (as `aifactory provision` does), and
    from which network: `network` when this process is not on the control host's (the edge's
    choice, Connection.control_network), else this process's own."""

    scheme: str = "https"
    port: int | None = None
    tls: TlsSettings = field(default_factory=TlsSettings)
    network: NetworkNamespace | None = None

    def client(self, host: str, address: str, credentials: BmcCredentials, reference: str) -> RedfishClient:
        """The Redfish client of `host`'s BMC at `address`."""
        return RedfishClient(
            self.endpoint(address),
            credentials,
            host=host,
            credentials_reference=reference,
            tls=self.tls,
            network=self.network,
        )

    def endpoint(self, address: str) -> str:
        shown = f"[{address}]" if ":" in address else address
        return f"{self.scheme}://{shown}" + (f":{self.port}" if self.port else "")


class BootIds(Protocol):
    def read(self, host: str) -> str | None:
        """The host's boot id over SSH; None when it does not answer (or not with its known key)."""


@dataclass(frozen=True)
class SshBootIds:
    """The boot id read over the site's SSH, host key checked (Connection.ssh_argv)."""

    plan: SitePlan
    connection: Connection
    timeout_s: float = 20.0

    def read(self, host: str) -> str | None:
        address = next(h.management_address for h in self.plan.hosts if h.name == host)
        argv = self.connection.ssh_argv(address, ["cat", BOOT_ID])
        try:
            done = self.connection.run_on_control_host(argv, timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            return None
        text = done.stdout.strip()
        return text if done.returncode == 0 and text else None


@dataclass
class RedfishRebooter:
    """Restart hosts through their BMCs; `credentials`: each host's, resolved at the edge."""

    plan: SitePlan
    access: BmcAccess
    credentials: Mapping[str, BmcCredentials]
    probe: BootIds
    graceful_timeout_s: float = 600.0
    back_timeout_s: float = 1800.0
    poll_s: float = 5.0
    sleep: Callable[[float], None] = time.sleep
    _clients: dict[str, RedfishClient] = field(default_factory=dict, repr=False)

    def boot_ids(self, hosts: Sequence[str]) -> dict[str, str]:
        return {h: found for h in hosts if (found := self.probe.read(h)) is not None}

    def reset(self, hosts: Sequence[str]) -> None:
        for host in hosts:
            self._reset(host, GRACEFUL)

    def wait_back(self, boot_ids: Mapping[str, str | None]) -> StepOutcome:
        started = time.monotonic()
        waiting, went_off, forced = set(boot_ids), set[str](), set[str]()
        while True:
            for host in sorted(waiting):
                if self._power(host) == "Off":
                    went_off.add(host)
                now = self.probe.read(host)
                if now is not None and (now != boot_ids[host] or host in went_off):
                    waiting.discard(host)
            elapsed = time.monotonic() - started
            if not waiting or elapsed >= self.back_timeout_s:
                break
            if elapsed >= self.graceful_timeout_s:
                for host in sorted(waiting - forced):
                    self._reset(host, FORCED)
                    forced.add(host)
            self.sleep(self.poll_s)
        failures = tuple(
            f"{host}: not back after the restart within {self.back_timeout_s:.0f} s (SSH with its known "
            "host key)" + (f", {FORCED} sent" if host in forced else "")
            for host in sorted(waiting)
        )
        detail: dict[str, Any] = {"forced": sorted(forced)} if forced else {}
        return StepOutcome(failures, detail)

    def _client(self, host: str) -> RedfishClient:
        if host not in self._clients:
            planned = next((h for h in self.plan.hosts if h.name == host), None)
            if planned is None or planned.bmc is None or host not in self.credentials:
                raise ProvisionError(
                    f"{host} has no BMC in the plan (or no credential for it) to restart it through",
                    code="upgrade-no-bmc",
                    hint="give the pool a bmc: in the site spec, or upgrade with --no-reboot",
                )
            self._clients[host] = self.access.client(
                host, planned.bmc.address, self.credentials[host], planned.bmc.credentials
            )
        return self._clients[host]

    def _reset(self, host: str, reset_type: str) -> None:
        client = self._client(host)
        client.reset(client.find_system(), reset_type)

    def _power(self, host: str) -> str | None:
        return str(self._client(host).find_system().get("PowerState") or "") or None


def bmc_credentials(plan: SitePlan, resolver: SecretResolver) -> dict[str, BmcCredentials]:
    """Every planned BMC's credential, resolved from the site's secret store as provisioning does;
    fails closed naming each host whose credential does not resolve (never a value)."""
    found: dict[str, BmcCredentials] = {}
    missing: list[Problem] = []
    for host in plan.hosts:
        if host.bmc is None:
            continue
        try:
            value = resolver.resolve(host.bmc.credentials, host=host.name).value
        except SecretError as error:
            missing.append(Problem("secret-missing", error.message, Location(path=f"hosts.{host.name}.bmc")))
            continue
        found[host.name] = BmcCredentials.parse(value, reference=host.bmc.credentials)
    if missing:
        raise SecretError(
            f"{len(missing)} BMC credential(s) cannot be resolved to restart the hosts",
            hint="set them with `aifactory secret set SITE secret://...`, or give the store's passphrase "
            "file in AIFACTORY_PASSPHRASE_FILE",
            problems=missing,
        )
    return found
