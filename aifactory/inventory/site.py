"""One site's inventory from what the control host knows: the plan, the imported bundle, the
provisioning outputs and, when the site runs as the local lab, the lab's connection settings."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from aifactory.errors import AifactoryError
from aifactory.inventory.model import Inventory
from aifactory.inventory.render import build_inventory, read_provision_outputs, write_inventory
from aifactory.plan.model import SitePlan
from aifactory.state import SiteState

log = logging.getLogger(__name__)

PROVISION_OUTPUTS = ("provision", "outputs.json")
# The lab's inventory variables that describe how to reach and run things on its hosts.
LAB_VARS = (
    "ansible_user",
    "ansible_python_interpreter",
    "ansible_become_method",
    "aifactory_lab",
    "aifactory_service_manager",
    "aifactory_service_command",
)


@dataclass(frozen=True)
class SiteInventory:
    inventory: Inventory
    provisioned: bool
    lab: bool

    def write(self, directory: Path) -> list[Path]:
        return write_inventory(self.inventory, directory)


def lab_inventory_path(site: str) -> Path | None:
    """The running lab's generated inventory for this site, or None when no lab runs."""
    try:
        from aifactory.lab import lab_status
    except ImportError:
        return None
    try:
        status = lab_status(site).as_dict()
    except AifactoryError as error:
        log.debug("no lab for %s: %s", site, error)
        return None
    path = status.get("inventory")
    if not path or not Path(path).is_file():
        return None
    # degraded: some lab process died (e.g. a host's sshd); the others are still reached through it
    return Path(path) if status.get("state") in ("up", "degraded") else None


def lab_vars(site: str) -> dict[str, Any]:
    """The connection and service-manager variables of the site's running lab ({} when none)."""
    path = lab_inventory_path(site)
    if path is None:
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    found = (data.get("all") or {}).get("vars") or {}
    return {k: found[k] for k in LAB_VARS if k in found}


def site_inventory(
    plan: SitePlan,
    *,
    bundle: Mapping[str, Any] | None = None,
    state: SiteState | None = None,
    extra_vars: Mapping[str, Any] | None = None,
) -> SiteInventory:
    """The inventory of a plan with what the state folder holds about the site."""
    site = plan.name
    state = state or SiteState.for_site(site)
    outputs = read_provision_outputs(state.path(*PROVISION_OUTPUTS))
    found_lab = lab_vars(site)
    # Where the site's token trust files are on the control host (`aifactory token issue`); the runtime
    # role copies their public half and the signed revocation list to every host.
    trust = {
        "aifactory_runtime_trust_dir": str(state.path("runtime")),
        # Where deploy collects the nodes' signed log heads (aifactory.headcopies).
        "aifactory_log_heads_dir": str(state.path("heads")),
    }
    site_vars = {**trust, **found_lab, **(extra_vars or {})}
    inventory = build_inventory(plan, bundle=bundle, provisioned=outputs, site_vars=site_vars)
    return SiteInventory(inventory, provisioned=outputs is not None, lab=bool(found_lab))
