"""Plan (+ provisioning outputs, + bundle location) -> Ansible inventory -> a folder of YAML files.

The folder `ansible-inventory -i DIR` reads:

    DIR/hosts.yml            groups: pool_*, role_*, dc_*, fabric_*, tenant_* (tenants hold their pools)
    DIR/group_vars/all.yml   the site: jurisdiction, air gap, plan digest, bundle location, storage
    DIR/host_vars/<h>.yml    one host: address per fabric rail, mounts, GPUs, NCCL environment, ...

Everything is rendered from a `SitePlan` (the bundle's signed plan.json read back, or a fresh plan),
so the same plan gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from aifactory.errors import Location, StateError, UsageError
from aifactory.inventory.model import Group, Inventory, group_name
from aifactory.plan.model import Host, SitePlan, section_dict
from aifactory.scheduler.topology import slurm_topology

MARKER = ".aifactory-inventory"
HEADER = "# Rendered by `aifactory inventory` from the site's plan; do not edit (re-render instead).\n"


def plan_digest(plan: Mapping[str, Any]) -> str:
    """The digest SitePlan.digest() gives, for a plan in its JSON form."""
    text = json.dumps(plan, indent=1, ensure_ascii=False) + "\n"
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def build_inventory(
    plan: SitePlan,
    *,
    bundle: Mapping[str, Any] | None = None,
    provisioned: Mapping[str, Any] | None = None,
    site_vars: Mapping[str, Any] | None = None,
) -> Inventory:
    """The inventory of a plan. `provisioned`: per-host outputs of provisioning (BMC state, identity);
    `site_vars`: extra group vars for every host (the site's Connection: its service manager...)."""
    by_host = _provisioned_by_host(provisioned)
    host_vars = {h.name: _host_vars(h, plan, by_host.get(h.name)) for h in plan.hosts}
    return Inventory(
        site=plan.name,
        groups=_groups(plan),
        host_vars=host_vars,
        group_vars=_site_vars(plan, bundle, site_vars),
    )


def _groups(plan: SitePlan) -> dict[str, Group]:
    groups: dict[str, Group] = {}

    def add(kind: str, name: str, host: str | None = None, child: str | None = None) -> None:
        group = groups.setdefault(group_name(kind, name), Group(group_name(kind, name)))
        if host and host not in group.hosts:
            group.hosts.append(host)
        if child and child not in group.children:
            group.children.append(child)

    for host in plan.hosts:
        add("pool", host.pool, host=host.name)
        add("role", host.role, host=host.name)
        add("dc", host.datacenter, host=host.name)
        for interface in host.interfaces:
            add("fabric", interface.fabric, host=host.name)
    for tenant in plan.tenants:
        groups.setdefault(group_name("tenant", tenant.name), Group(group_name("tenant", tenant.name)))
        for pool in tenant.pools:
            add("tenant", tenant.name, child=group_name("pool", pool))
    return groups


def _host_vars(host: Host, plan: SitePlan, provisioned: Mapping[str, Any] | None) -> dict[str, Any]:
    fabrics = {f.name: f for f in plan.fabrics}
    addresses: dict[str, list[dict[str, Any]]] = {}
    for interface in host.interfaces:
        fabric = fabrics[interface.fabric]
        addresses.setdefault(interface.fabric, []).append(
            {
                "rail": interface.rail,
                "interface": interface.name,
                "address": interface.address,
                "prefixlen": interface.prefixlen,
                "kind": fabric.kind,
                "purpose": fabric.purpose,
                "mtu": fabric.mtu,
                "vlan": fabric.vlan,
            }
        )
    gpus = host.gpus
    tenants = [t.name for t in plan.tenants if host.pool in t.pools]
    bmc = host.bmc
    values: dict[str, Any] = {
        "ansible_host": (provisioned or {}).get("management_address") or host.management_address,
        "aifactory_host": host.name,
        "aifactory_pool": host.pool,
        "aifactory_role": host.role,
        "aifactory_datacenter": host.datacenter,
        "aifactory_country": host.country,
        "aifactory_region": host.region,
        "aifactory_management_address": host.management_address,
        "aifactory_compute_address": host.compute_address,
        "aifactory_fabric_addresses": addresses,
        "aifactory_mounts": [m.to_dict() for m in host.mounts],
        "aifactory_gpus": section_dict(gpus) if gpus else None,
        "aifactory_gpu_count": gpus.count if gpus else 0,
        "aifactory_nccl_env": dict(host.nccl),
        "aifactory_cpus": host.cpus,
        "aifactory_memory_gib": host.memory_gib,
        "aifactory_platform": section_dict(host.platform),
        "aifactory_tenants": tenants,
        # Where the BMC is; its credentials stay a secret:// reference resolved only by provisioning.
        "aifactory_bmc": {"address": bmc.address, "fabric": bmc.fabric, "protocol": bmc.protocol}
        if bmc
        else None,
    }
    if provisioned is not None:
        values["aifactory_provisioned"] = dict(provisioned)
    return values


def _site_vars(
    plan: SitePlan, bundle: Mapping[str, Any] | None, site_vars: Mapping[str, Any] | None
) -> dict[str, Any]:
    values: dict[str, Any] = {
        "aifactory_site": plan.name,
        "aifactory_jurisdiction": plan.site.jurisdiction,
        "aifactory_jurisdiction_countries": list(plan.site.jurisdiction_countries),
        "aifactory_air_gapped": plan.site.air_gapped,
        "aifactory_plan_digest": plan.digest(),
        "aifactory_spec_digest": plan.spec_digest,
        "aifactory_control_host": plan.control_host,
        "aifactory_storage": [section_dict(s) for s in plan.storage],
        "aifactory_egress_allow": [section_dict(e) for e in plan.egress.allow],
        "aifactory_bundle": dict(bundle) if bundle else None,
        # The plan's Slurm cluster (controller, nodes, partitions, accounts), or None: the scheduler play.
        "aifactory_slurm": slurm_topology(plan),
        # Defaults of a site whose Connection says nothing else: hosts run systemd (site_vars, from the
        # site's Connection, replace these; docs/architecture.md).
        "aifactory_lab": False,
        "aifactory_service_manager": "systemd",
    }
    values.update(site_vars or {})
    return values


def _provisioned_by_host(outputs: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    """Provisioning outputs hold `hosts` as a mapping by name or a list of objects with `name`."""
    if not outputs:
        return {}
    hosts = outputs.get("hosts", {})
    if isinstance(hosts, Mapping):
        return {str(name): value for name, value in hosts.items() if isinstance(value, Mapping)}
    if isinstance(hosts, list):
        return {str(h["name"]): h for h in hosts if isinstance(h, Mapping) and "name" in h}
    return {}


def read_provision_outputs(path: Path) -> dict[str, Any] | None:
    """The provisioning stage's outputs file, or None where provisioning has not run."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StateError(
            f"cannot read the provisioning outputs: {exc}",
            location=Location(file=str(path)),
            hint="re-run `aifactory provision`, or remove the file to render from the plan alone",
        ) from None
    if not isinstance(data, dict):
        raise StateError("the provisioning outputs are not a JSON object", location=Location(file=str(path)))
    return data


def _dump(data: Any) -> str:
    return HEADER + yaml.safe_dump(data, sort_keys=True, default_flow_style=False, allow_unicode=True)


def render_files(inventory: Inventory) -> dict[str, str]:
    """Relative path -> text of every file of the inventory folder."""
    files = {
        MARKER: f"site: {inventory.site}\n",
        "hosts.yml": _dump(inventory.as_dict()),
        "group_vars/all.yml": _dump(inventory.group_vars),
    }
    for host, values in inventory.host_vars.items():
        files[f"host_vars/{host}.yml"] = _dump(values)
    return files


def write_inventory(inventory: Inventory, directory: Path) -> list[Path]:
    """Write (or replace) an inventory folder. Refuses a non-empty folder aifactory did not write."""
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()) and not (directory / MARKER).is_file():
        raise UsageError(
            f"{directory} is not empty and holds no inventory aifactory rendered",
            hint="pick an empty or new folder",
        )
    files = render_files(inventory)
    for stale in sorted(directory.glob("host_vars/*.yml")) if directory.exists() else []:
        if f"host_vars/{stale.name}" not in files:
            stale.unlink()
    written = []
    for relative, text in files.items():
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_file() and target.read_text() == text:
            written.append(target)
            continue
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, target)
        written.append(target)
    return written
