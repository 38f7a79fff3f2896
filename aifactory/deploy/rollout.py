"""A rollout one host at a time through the deploy path (`aifactory deploy --limit HOST` per host), for
the key and certificate rotations (aifactory.trust.issuing.rotation): never every host at once, so a
serving pool keeps answering while each host takes its new trust files.

`HostKeysOnHosts` is the hosts' side of an ssh-host-keys rotation: each host generates its new host
key itself, so the private half never leaves it; the public half comes back over the SSH connection
the deploy uses, whose host key is checked against the known_hosts it already trusts."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aifactory.connection import Connection
from aifactory.deploy.runner import DeployOptions, DeployResult, deploy_site
from aifactory.errors import DeployError
from aifactory.health.remote import run_on_host
from aifactory.plan.build import PlannedSite

# Where the base role keeps sshd's Ed25519 host key; the staged one is beside it with `.next`.
HOST_KEY = "/etc/ssh/ssh_host_ed25519_key"


@dataclass(frozen=True)
class HostByHost:
    """Deploys the planned site to one host per call; a host that fails stops the rollout. `trust`
    (the bundle trust file hosts are given), `extra_vars` and `full` are passed to every deploy."""

    planned: PlannedSite
    connection: Connection
    on_result: Callable[[DeployResult], None] = lambda result: None
    trust: Path | None = None
    extra_vars: Mapping[str, Any] = field(default_factory=dict)
    full: bool = False

    def hosts(self) -> Sequence[str]:
        return [host.name for host in self.planned.plan.hosts]

    def deploy(self, host: str) -> None:
        options = DeployOptions(
            limit=host, trust=self.trust, extra_vars=dict(self.extra_vars), full=self.full
        )
        result = deploy_site(self.planned, connection=self.connection, options=options)
        self.on_result(result)
        if result.exit_code != 0 or result.failed_hosts:
            raise DeployError(
                f"the deploy of {host} failed ({result.event_log})",
                code="rollout-host-failed",
                hint="fix the host, then run the same `aifactory rotate` command again: it resumes "
                "with this host",
            )


# Run on the host (fixed words, no input from the plan): make the staged key once, print its public half.
_STAGE_SCRIPT = (
    'set -eu; key="$1"; umask 077; '
    'if [ ! -s "$key.next" ]; then rm -f "$key.next" "$key.next.pub"; '
    'ssh-keygen -q -t ed25519 -N "" -C "" -f "$key.next" >/dev/null; fi; '
    'cut -d" " -f1,2 "$key.next.pub"'
)


@dataclass(frozen=True)
class HostKeysOnHosts:
    """Each host's new SSH host key, generated on the host (`<key>.next`, 0600) over the site's
    connection. `addresses` maps each host to its management address (what the deploy connects to);
    known_hosts names a host by its name or that address."""

    connection: Connection
    addresses: Mapping[str, str]
    key_path: str = HOST_KEY
    timeout: float = 60.0

    @classmethod
    def of(cls, planned: PlannedSite, connection: Connection) -> HostKeysOnHosts:
        return cls(connection, {h.name: h.management_address for h in planned.plan.hosts})

    def names(self, host: str) -> Sequence[str]:
        return list(dict.fromkeys([host, self._address(host)]))

    def stage(self, host: str) -> str:
        argv = ["sh", "-c", _STAGE_SCRIPT, "aifactory-stage-host-key", self.key_path]
        result = run_on_host(
            self.connection, self._address(host), argv, input_text=None, timeout=self.timeout
        )
        if result.returncode != 0:
            raise DeployError(
                f"{host} did not stage a new host key: {result.stderr.strip()[-300:] or result.returncode}",
                code="rollout-host-failed",
                hint="check that the host is reachable with its current key (aifactory deploy --limit HOST "
                "--check), then run the same `aifactory rotate` command again",
            )
        return result.stdout.strip()

    def _address(self, host: str) -> str:
        try:
            return self.addresses[host]
        except KeyError:
            raise DeployError(f"{host} is not a host of the plan", code="rollout-host-failed") from None
