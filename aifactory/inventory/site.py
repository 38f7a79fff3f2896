"""One site's inventory from what the control host knows: the plan, the imported bundle, the
provisioning outputs and the site's `Connection` (how its hosts are reached and run services)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aifactory.connection import Connection
from aifactory.inventory.model import Inventory
from aifactory.inventory.render import build_inventory, read_provision_outputs, write_inventory
from aifactory.plan.model import SitePlan
from aifactory.resources import resource_dir
from aifactory.state import SiteState

PROVISION_OUTPUTS = ("provision", "outputs.json")


@dataclass(frozen=True)
class SiteInventory:
    inventory: Inventory
    provisioned: bool
    connection: str  # where the hosts are reached from (the Connection's description)

    def write(self, directory: Path) -> list[Path]:
        return write_inventory(self.inventory, directory)


def site_inventory(
    plan: SitePlan,
    *,
    connection: Connection,
    bundle: Mapping[str, Any] | None = None,
    state: SiteState | None = None,
    extra_vars: Mapping[str, Any] | None = None,
) -> SiteInventory:
    """The inventory of a plan with what the state folder holds about the site, reached through
    `connection` (its inventory variables and service manager go to every host)."""
    site = plan.name
    state = state or SiteState.for_site(site)
    outputs = read_provision_outputs(state.path(*PROVISION_OUTPUTS))
    # Where the site's token trust files are on the control host (`aifactory token issue`); the runtime
    # role copies their public half and the signed revocation list to every host.
    trust = {
        "aifactory_runtime_trust_dir": str(state.path("runtime")),
        # Where deploy collects the nodes' signed log heads (aifactory.headcopies).
        "aifactory_log_heads_dir": str(state.path("heads")),
        # The monitoring role: the alert rules it installs (the verified bundle's policies when
        # AIFACTORY_RESOURCES points at the import), and the state home the alert receiver writes to.
        "aifactory_alert_rules_dir": str(resource_dir("policies") / "alerts"),
        "aifactory_state_home": str(state.root.parent),
    }
    site_vars = {**trust, **connection.host_vars(), **(extra_vars or {})}
    inventory = build_inventory(plan, bundle=bundle, provisioned=outputs, site_vars=site_vars)
    return SiteInventory(inventory, provisioned=outputs is not None, connection=connection.description)
