"""A rollout one host at a time through the deploy path (`aifactory deploy --limit HOST` per host), for
the key and certificate rotations (aifactory.trust.issuing.rotation): never every host at once, so a
serving pool keeps answering while each host takes its new trust files."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aifactory.connection import Connection
from aifactory.deploy.runner import DeployOptions, DeployResult, deploy_site
from aifactory.errors import DeployError
from aifactory.plan.build import PlannedSite


@dataclass(frozen=True)
class HostByHost:
    """Deploys the planned site to one host per call; a host that fails stops the rollout."""

    planned: PlannedSite
    connection: Connection
    on_result: Callable[[DeployResult], None] = lambda result: None

    def hosts(self) -> Sequence[str]:
        return [host.name for host in self.planned.plan.hosts]

    def deploy(self, host: str) -> None:
        result = deploy_site(self.planned, connection=self.connection, options=DeployOptions(limit=host))
        self.on_result(result)
        if result.exit_code != 0 or result.failed_hosts:
            raise DeployError(
                f"the deploy of {host} failed ({result.event_log})",
                code="rollout-host-failed",
                hint="fix the host, then run the same `aifactory rotate` command again: it resumes "
                "with this host",
            )
